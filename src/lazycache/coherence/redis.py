"""`RedisCoherence`: invalidations over Redis pub/sub, on a single Redis or a Redis Cluster.

    >>> store = RedisStore("redis://127.0.0.1:6379/0", prefix="users:")
    >>> cache = LazyWriterCache(store, coherence=RedisCoherence(store, "users:invalidate"))

`lazycache.open_redis()` (and `lazycache.open()` with a Redis URL) makes one by itself,
on `default_channel(store)`. Needs redis-py 5 or later: `pip install 'lazywritercache[redis]'`.
What every channel shares (the subscriber thread, loss detection, reconnection, the
consistency model) is in `lazycache.coherence.channel`; the message format in
`lazycache.coherence.message`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "RedisCoherence needs redis-py (5 or later), which is not installed: "
        "pip install 'lazywritercache[redis]'"
    ) from exc

from ..stores.redis import DEFAULT_URL, RedisStore, make_client, reset_after_fork
from .channel import ChannelCoherence, ChannelOptions, ChannelSettings

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from 3.11 on; only the type checker needs it

__all__ = ["RedisCoherence", "default_channel"]


def default_channel(store: RedisStore) -> str:
    """The channel `open_redis` uses for a store: its prefix + "invalidate" (+ "@db" if db != 0).

    Caches over the same Redis database and prefix share data, and so this channel.
    """
    name = store.prefix.decode("utf-8", "backslashreplace") + "invalidate"
    if not store.cluster:
        db = store.client.connection_pool.connection_kwargs.get("db", 0) or 0
        if int(db):
            name += f"@{int(db)}"
    return name


class RedisCoherence(ChannelCoherence):
    """Invalidations over Redis pub/sub (`PUBLISH`/`SUBSCRIBE` on `channel`).

    `client_or_url`: a `redis.Redis`, a `redis.cluster.RedisCluster`, a `RedisStore`
    (its client is used) or a URL (a client is made, and closed by `close()`: a plain
    `redis.Redis` on that server, which needs not be up yet; `cluster=True` makes a
    `RedisCluster`, which must be). Messages
    are published through that client; the subscription is a connection of its own
    (named `lazycache-coherence-<id>` in `CLIENT LIST`), made with the client's
    connection settings and no automatic retries, so that a broken connection is
    noticed and reported rather than silently re-established. On a cluster, classic
    pub/sub reaches every node: with a `RedisCluster` client the subscriber connects to
    one node and moves to another when that one fails (a plain client on one node works
    too, without that failover).

    `settings` (a `ChannelSettings`), or its fields as keywords (`keys`, `ping_interval`,
    `ping_timeout`, `reconnect_initial`, `reconnect_max`, `max_backlog`), tune the
    channel; `connect_timeout` bounds each attempt to subscribe, in seconds.

    Pub/sub is fire-and-forget: a subscriber that is disconnected when a message is
    published never gets it, which is why a lost subscription makes the cache drop
    every clean entry and read through until it is back (see the consistency model
    in `lazycache.coherence.channel`).
    """

    kind = "redis"

    def __init__(
        self,
        client_or_url: Any = DEFAULT_URL,
        channel: str = "lazycache:invalidate",
        *,
        settings: ChannelSettings | None = None,
        connect_timeout: float = 5.0,
        cluster: bool = False,
        **options: Unpack[ChannelOptions],
    ) -> None:
        super().__init__(settings=settings, **options)
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty str, got {channel!r}")
        self.channel = channel
        self._channel_bytes = channel.encode("utf-8")
        self.connect_timeout = connect_timeout
        client = client_or_url.client if isinstance(client_or_url, RedisStore) else client_or_url
        if isinstance(client, str):
            client = make_client(client, cluster=cluster)
            self.owns_client = True
        else:
            if not isinstance(client, (redis.Redis, RedisCluster)):
                raise TypeError(
                    f"client_or_url must be a redis client, a RedisStore or a URL, not {type(client).__name__}"
                )
            self.owns_client = False
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._node_turn = random.randrange(
            1 << 16
        )  # cluster: which node to subscribe on (spreads subscribers)
        self._conn: Any = None
        self._awaiting_pong = False
        self.client_name = f"lazycache-coherence-{self.id[:12]}"
        """The subscriber connection's name in `CLIENT LIST`."""

    # ------------------------------------------------------------------ the subscriber connection
    def _connection_settings(self) -> tuple[type, dict[str, Any]]:
        if self._cluster:
            nodes = sorted(self.client.get_nodes(), key=lambda node: node.name)
            if not nodes:
                raise ConnectionError("the cluster client knows no node")
            node = nodes[self._node_turn % len(nodes)]
            self._node_turn += 1
            pool = self.client.get_redis_connection(node).connection_pool
        else:
            pool = self.client.connection_pool
        return pool.connection_class, dict(pool.connection_kwargs)

    def _connect(self) -> None:
        connection_class, kwargs = self._connection_settings()
        for name in list(kwargs):
            if name.startswith("maint_notifications") or name in (
                "redis_connect_func",
                "cache",
                "cache_config",
            ):
                kwargs.pop(name)
        kwargs.update(
            retry=Retry(
                NoBackoff(), 0
            ),  # never reconnect behind our back: a lost subscription must be seen
            protocol=2,  # messages as plain arrays
            client_name=self.client_name,
            socket_timeout=self.connect_timeout,
            socket_connect_timeout=self.connect_timeout,
            health_check_interval=0,
        )
        conn = connection_class(**kwargs)
        try:
            conn.connect()
            conn.send_command("SUBSCRIBE", self._channel_bytes)
            reply = conn.read_response()
            if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        except BaseException:
            conn.disconnect()
            raise
        self._awaiting_pong = False
        self._conn = conn

    def _receive(self, timeout: float) -> list[Any]:
        conn = self._conn
        if conn is None:
            raise ConnectionError("the subscriber connection is closed")
        payloads = []
        if conn.can_read(timeout=timeout):
            while True:
                reply = conn.read_response()
                if isinstance(reply, list) and reply:
                    kind = reply[0]
                    if kind == b"message" and len(reply) >= 3:
                        payloads.append(reply[2])
                    elif kind == b"pong":
                        self._awaiting_pong = False
                if not conn.can_read(timeout=0):
                    break
        return payloads

    def _ping(self) -> None:
        if self._conn is None:
            raise ConnectionError("the subscriber connection is closed")
        self._awaiting_pong = True
        self._conn.send_command("PING")

    def _pong_pending(self) -> bool:
        return self._awaiting_pong

    def _subscriber_fileno(self) -> int | None:
        sock = getattr(self._conn, "_sock", None)
        try:
            return sock.fileno() if sock is not None else None
        except OSError:
            return None

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass

    def _forget_connections(self) -> None:
        # A dropped redis-py connection closes its socket in the child without shutting it
        # down (it compares pids), so the parent's subscription goes on.
        self._conn = None
        reset_after_fork(self.client)  # the publishing client, the store's or the channel's own

    # ------------------------------------------------------------------ publishing
    def _send(self, payloads: list[str]) -> None:
        for payload in payloads:
            self.client.publish(self._channel_bytes, payload.encode("utf-8"))

    def close(self) -> None:
        super().close()
        if self.owns_client:
            self.client.close()

    def __repr__(self) -> str:
        state = "up" if self.connected else "down"
        return f"RedisCoherence({self.channel!r}, {state}, id={self.id[:12]})"
