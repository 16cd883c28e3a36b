"""Coherence channels: how caches in different processes tell each other which keys they wrote.

`RedisCoherence` (Redis pub/sub, single Redis or Redis Cluster) lives here, with what
every channel shares (`ChannelCoherence`: the subscriber thread, loss detection,
reconnection, the message format). `PostgresNotifyCoherence` (PostgreSQL
LISTEN/NOTIFY) is in `lazycache.stores.postgres_coherence`.

    >>> store = RedisStore("redis://127.0.0.1:6379/0", prefix="users:")
    >>> cache = LazyWriterCache(store, coherence=RedisCoherence(store.client, "users:invalidate"))

One channel object per cache (a second `start()` raises). Caches that share a store
must share the channel name; each publishes the keys of every batch it commits, and
drops the keys the others publish unless it has a pending write of its own for them.

Consistency model
-----------------
Process A runs `cache[k] = v`; process B has a cache over the same store and channel.

* **A itself** reads `v` at once (read-your-writes within one process; every read in
  A sees A's latest write of k, pending or not).
* **The store** has `v` once A's writer commits the batch holding k: within A's
  `write_interval` (default 0.5 s) of the write, or at A's `flush()`/`close()`, or
  later while the store is failing (the batch is retried).
* **B**, if it holds k clean (read earlier), keeps serving its old value until A's
  invalidation reaches it: the commit, plus A's publish (one round trip), plus the
  delivery to B's subscriber thread (sub-millisecond on a LAN). After that, B's
  next read of k reads through and returns `v` (or a newer value). So B may serve a
  value up to `write_interval + publish latency` older than A's write; there is no
  upper bound while A cannot write to the store (A's write is not in the store, so B
  reads the old value from the store too).
* If B holds a **pending write of its own** for k, the invalidation does not touch
  it: B keeps reading its own value, and its write reaches the store after A's (B
  commits later), so both caches end with B's value. Concurrent writers of one key
  in different processes resolve as last committed batch wins, per key.
* If B's subscription breaks (`CLIENT KILL`, the server restarts, a network
  partition detected by a PING unanswered for `ping_timeout` seconds), B drops every
  clean entry, stops caching what it reads (every read goes to the store) and says
  so: `cache.coherent` is False and a WARNING is logged. Once it has subscribed
  again, it drops clean entries once more and caches again. Invalidations published
  while B was away are lost, but B held nothing they could have made stale. Between
  the moment the connection dies and the moment B notices (at once for a closed
  connection; up to `ping_timeout` for a silent partition), B may serve stale values.
* If B's own write of k is being committed at the moment A's invalidation of k
  arrives, B cannot tell whose commit reached the store last: it marks k stale and
  drops it once its own write is acknowledged, so its next read goes to the store
  (tests/test_coherence_redis.py, an invalidation during our own commit).
* If B is in the middle of reading k through from the store when A's invalidation
  arrives, that read may return the value it fetched before A's write, but does not
  cache it: B's next read goes to the store again.
* There is no cross-process linearizability and no ordering between keys: B may see
  A's write of k1 before its write of k2 even if A wrote k2 first. Keys written in
  one batch are invalidated together (one message), but B may read one of them
  between A's commit and the invalidation's arrival.
* If A's publish fails (the channel's connection is down), A keeps the keys and
  publishes them when it can (or, past `max_backlog` keys, tells every cache to drop
  everything clean), so an invalidation is late rather than lost while A lives.

Message format
--------------
One message per published batch (PostgreSQL: several NOTIFYs in one transaction when
the payload would exceed 8000 bytes): a JSON object
`{"v": 1, "from": "<publisher id>", "keys": [...]}`. The publisher's id is random per
channel object, and a subscriber skips the messages carrying its own. With
`keys="json"` (default) keys travel as JSON: str, int, float, bool and None as
themselves, bytes as `{"b": "<base64>"}`, tuples as `{"t": [...]}` (recursively), so
they come back as the same Python objects. A key of another type cannot be named in
JSON: the batch is then published as `{"all": true}` (every other cache drops all
its clean entries) and an ERROR is logged once; pass `keys="pickle"` for such keys
(`{"p": ["<base64 pickle>", ...]}`; only for a channel nobody untrusted can publish
on: unpickling runs code). A subscriber that cannot decode a message (malformed, or
pickled while it expects JSON) treats it as `{"all": true}` and logs a WARNING.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import random
import socket
import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Callable

from ..coherence import Coherence

__all__ = ["ChannelCoherence", "RedisCoherence", "decode_message", "encode_keys", "encode_message"]

log = logging.getLogger("lazycache.coherence")

KEY_FORMATS = ("json", "pickle")

_ALL = object()
"""What decode_message returns for a message that invalidates everything."""


# ----------------------------------------------------------------------------- message format


def _key_to_json(key: Any) -> Any:
    if key is None or isinstance(key, (str, bool, int)):
        return key
    if isinstance(key, float):
        if key != key or key in (float("inf"), float("-inf")):
            raise TypeError(f"{key!r} has no JSON form")
        return key
    if isinstance(key, bytes):
        return {"b": base64.b64encode(key).decode("ascii")}
    if type(key) is tuple:
        return {"t": [_key_to_json(item) for item in key]}
    raise TypeError(f"a {type(key).__name__} key has no JSON form")


def _key_from_json(item: Any) -> Any:
    if isinstance(item, dict):
        if "b" in item:
            return base64.b64decode(item["b"])
        if "t" in item:
            return tuple(_key_from_json(part) for part in item["t"])
        raise ValueError(f"unknown key form {item!r}")
    if isinstance(item, list):
        raise ValueError("a list is not a key")
    return item


def encode_keys(keys: Sequence[Any], key_format: str) -> list[str]:
    """Each key as a JSON text (for key_format "json") or a base64 pickle ("pickle"); TypeError if impossible."""
    if key_format == "pickle":
        return [
            json.dumps(
                base64.b64encode(pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)).decode(
                    "ascii"
                )
            )
            for key in keys
        ]
    return [
        json.dumps(_key_to_json(key), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        for key in keys
    ]


def encode_message(sender: str, keys: Sequence[Any], key_format: str) -> str:
    """One message naming every key (the same text as envelope(sender, encode_keys(keys)), made faster)."""
    if key_format == "pickle":
        field, items = (
            "p",
            [
                base64.b64encode(pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)).decode(
                    "ascii"
                )
                for key in keys
            ],
        )
    else:
        field, items = "keys", [_key_to_json(key) for key in keys]
    return json.dumps(
        {"v": 1, "from": sender, field: items},
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    )


def envelope(sender: str, encoded: Sequence[str], key_format: str) -> str:
    """A message naming the encoded keys (from encode_keys)."""
    field = "p" if key_format == "pickle" else "keys"
    return f'{{"v":1,"from":"{sender}","{field}":[{",".join(encoded)}]}}'


def all_message(sender: str) -> str:
    """A message telling every other cache to drop all its clean entries."""
    return f'{{"v":1,"from":"{sender}","all":true}}'


def decode_message(data: Any, key_format: str) -> tuple[str | None, Any]:
    """(sender, keys) of a message, keys being a list or _ALL; raises ValueError if it cannot be read."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    message = json.loads(data)
    if not isinstance(message, dict) or message.get("v") != 1:
        raise ValueError("not a lazycache coherence message")
    sender = message.get("from")
    if message.get("all"):
        return sender, _ALL
    if "keys" in message:
        return sender, [_key_from_json(item) for item in message["keys"]]
    if "p" in message:
        if key_format != "pickle":
            raise ValueError(
                "pickled keys, but this channel reads keys='json' (it never unpickles)"
            )
        return sender, [pickle.loads(base64.b64decode(item)) for item in message["p"]]
    raise ValueError("a message with neither keys nor all")


# ----------------------------------------------------------------------------- the shared machinery


class ChannelCoherence(Coherence):
    """A `Coherence` over a publish/subscribe channel, with one subscriber thread.

    Subclasses implement `_connect()` (open the subscription and return once the
    server confirmed it), `_receive(timeout)` (messages that arrived, as raw payloads;
    raise on a broken connection), `_ping()` / `_pong_pending()` for liveness,
    `_disconnect()`, `_send(payloads)` to publish, and `_forget_connections()` (in a
    forked child: drop every connection without closing it, they are the parent's).

    The thread calls `on_lost()` once when the subscription breaks (or cannot be made
    at start), reconnects with exponential backoff (`reconnect_initial` doubling to
    `reconnect_max` seconds, with jitter), and calls `on_restored()` once the
    subscription is confirmed again. A connection is declared dead when it raises, or
    when a PING sent every `ping_interval` seconds is unanswered for `ping_timeout`.
    """

    kind = "channel"

    def __init__(
        self,
        *,
        keys: str = "json",
        ping_interval: float = 1.0,
        ping_timeout: float | None = None,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
        max_backlog: int = 100_000,
    ) -> None:
        if keys not in KEY_FORMATS:
            raise ValueError(f"keys must be one of {KEY_FORMATS}, got {keys!r}")
        for name, value in (
            ("ping_interval", ping_interval),
            ("reconnect_initial", reconnect_initial),
            ("reconnect_max", reconnect_max),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.key_format = keys
        self.id = uuid.uuid4().hex
        """This channel's publisher id: messages carrying it are not delivered back to it."""
        self.ping_interval = float(ping_interval)
        self.ping_timeout = (
            float(ping_timeout) if ping_timeout is not None else 3.0 * self.ping_interval
        )
        self.reconnect_initial = float(reconnect_initial)
        self.reconnect_max = float(reconnect_max)
        self.max_backlog = max_backlog
        self._on_keys: Callable[[Sequence[Any]], None] = lambda keys: None
        self._on_lost: Callable[[], None] = lambda: None
        self._on_restored: Callable[[], None] = lambda: None
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()  # the backlog and the failing flag; held briefly
        self._send_lock = threading.Lock()  # one send at a time on the publishing connection
        self._backlog: list[Any] = []
        self._backlog_all = False
        self._publish_failing = False
        self._warned_json = False
        self._warned_decode = False
        self.connected = False
        """Whether the subscription is up now."""
        self.losses = 0
        """How many times the subscription was lost (or could not be made at start), counted
        once the cache has handled the loss."""
        self.received = 0
        """Messages from other publishers handled."""
        self.published = 0
        """Messages this channel sent."""

    # ------------------------------------------------------------------ Coherence
    def start(
        self,
        on_keys: Callable[[Sequence[Any]], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None],
    ) -> None:
        if self._started:
            raise RuntimeError(
                f"{type(self).__name__} is already started: make one channel object per cache"
            )
        self._started = True
        self._on_keys, self._on_lost, self._on_restored = on_keys, on_lost, on_restored
        # Subscribe before returning, so that a cache is coherent from its first read.
        try:
            self._connect()
        except Exception as exc:
            self._lose(exc)
        else:
            self.connected = True
        self._thread = threading.Thread(
            target=self._run, name=f"lazycache-coherence-{self.kind}", daemon=True
        )
        self._thread.start()

    def publish(self, keys: Sequence[Any]) -> None:
        """Sends the keys now; if the channel is failing, keeps them for the subscriber thread
        to send once it works again (so the writer thread waits for at most one failed attempt
        per outage)."""
        if not keys:
            return
        payloads = self._payloads(list(keys))
        with self._state_lock:
            if self._publish_failing:
                self._hold_locked(keys, payloads)
                return
        try:
            with self._send_lock:
                self._send(payloads)
        except Exception as exc:
            with self._state_lock:
                self._hold_locked(keys, payloads)
                first = not self._publish_failing
                self._publish_failing = True
            with self._send_lock:
                self._close_publisher()
            if first:
                log.warning(
                    "publishing on the %s coherence channel failed (%r); the keys are kept and "
                    "published once it works again",
                    self.kind,
                    exc,
                )
        else:
            self.published += len(payloads)

    def close(self) -> None:
        """Stops the subscriber thread and closes the channel's connections. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._interrupt()  # wakes the thread if it is waiting for a message
            thread.join(5.0)
        self._disconnect()
        with self._send_lock:
            self._close_publisher()
        with self._state_lock:
            held = len(self._backlog) if not self._backlog_all else "all"
            failing = self._publish_failing
        if failing:
            log.warning(
                "the %s coherence channel closed with invalidations never published (%s keys)",
                self.kind,
                held,
            )

    def after_fork_in_child(self) -> None:
        """In a forked child: stopped, holding none of the parent's connections (closing none).

        The subscriber thread does not exist in the child; its connections, and the
        publishing one, are the parent's sessions. They are forgotten, not closed, so that
        a later `close()` in the child ends nothing of the parent's. The locks are new: a
        parent thread may have held one at the fork.
        """
        self._stop = threading.Event()
        self._stop.set()
        self._thread = None
        self._state_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.connected = False
        self._forget_connections()

    # ------------------------------------------------------------------ publishing
    def _payloads(self, keys: list[Any]) -> list[str]:
        try:
            message = encode_message(self.id, keys, self.key_format)
        except (TypeError, ValueError, pickle.PicklingError) as exc:
            if not self._warned_json:
                self._warned_json = True
                log.error(
                    "%s coherence cannot name these keys (%r); telling the other caches to drop "
                    "everything clean instead. Use keys='pickle' for such keys",
                    self.kind,
                    exc,
                )
            return [all_message(self.id)]
        return self._split(keys, message)

    def _split(self, keys: list[Any], message: str) -> list[str]:
        """The messages carrying the keys, given them all in one (a transport with a payload limit splits it)."""
        return [message]

    def _hold_locked(self, keys: Sequence[Any], payloads: list[str]) -> None:
        if self._backlog_all:
            return
        if (
            any('"all":true' in p for p in payloads)
            or len(self._backlog) + len(keys) > self.max_backlog
        ):
            self._backlog = []
            self._backlog_all = (
                True  # too much to name: the other caches will drop everything clean
            )
        else:
            self._backlog.extend(keys)

    def _retry_publishing(self) -> None:
        """Sends what failed to publish (run by the subscriber thread while its connection is up)."""
        with self._state_lock:
            if not self._publish_failing:
                return
            keys, everything = self._backlog, self._backlog_all
            self._backlog, self._backlog_all = [], False
        payloads = [all_message(self.id)] if everything else (self._payloads(keys) if keys else [])
        try:
            with self._send_lock:
                if payloads:
                    self._send(payloads)
        except Exception:
            with self._send_lock:
                self._close_publisher()
            with self._state_lock:
                if everything:
                    self._backlog_all = True
                    self._backlog = []
                else:
                    self._hold_locked(keys, payloads)
            return
        self.published += len(payloads)
        with self._state_lock:
            if not self._backlog and not self._backlog_all:
                self._publish_failing = False
                done = True
            else:
                done = False  # more arrived meanwhile: sent at the next tick
        if done:
            log.warning(
                "the %s coherence channel publishes again (held invalidations sent)",
                self.kind,
            )

    # ------------------------------------------------------------------ the subscriber thread
    def _lose(self, exc: BaseException) -> None:
        self.connected = False
        log.warning("the %s coherence subscription is down: %r", self.kind, exc)
        try:
            self._on_lost()
        except Exception:
            log.exception("handling the loss of the coherence channel failed")
        # Counted once handled (as `received`), so whoever waits for the count sees its effect:
        # the cache has dropped its clean entries.
        self.losses += 1

    def _run(self) -> None:
        delay = self.reconnect_initial
        while not self._stop.is_set():
            if not self.connected:
                try:
                    self._connect()
                except Exception as exc:
                    log.debug(
                        "reconnecting the %s coherence channel failed: %r",
                        self.kind,
                        exc,
                    )
                    self._disconnect()
                    self._stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(self.reconnect_max, delay * 2)
                    continue
                delay = self.reconnect_initial
                self.connected = True
                log.warning("the %s coherence subscription is back", self.kind)
                try:
                    self._on_restored()
                except Exception:
                    log.exception("handling the return of the coherence channel failed")
            try:
                self._listen()
            except Exception as exc:
                self._disconnect()
                if self._stop.is_set():
                    break
                self._lose(exc)
        self.connected = False

    def _listen(self) -> None:
        """Handles messages until the connection breaks (raises) or the channel is closed (returns)."""
        next_ping = time.monotonic() + self.ping_interval
        ping_sent: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            wait = max(0.0, min(next_ping - now, 0.25))
            for payload in self._receive(wait):
                self._handle(payload)
            now = time.monotonic()
            if ping_sent is not None and not self._pong_pending():
                ping_sent = None
            if ping_sent is not None and now - ping_sent > self.ping_timeout:
                raise TimeoutError(f"no reply to PING within {self.ping_timeout}s")
            if now >= next_ping:
                if ping_sent is None:
                    self._ping()
                    ping_sent = now
                next_ping = now + self.ping_interval
                if self._publish_failing:
                    self._retry_publishing()

    def _handle(self, payload: Any) -> None:
        try:
            sender, keys = decode_message(payload, self.key_format)
        except Exception as exc:
            if not self._warned_decode:
                self._warned_decode = True
                log.warning(
                    "an unreadable message on the %s coherence channel (%r): dropping every clean entry",
                    self.kind,
                    exc,
                )
            sender, keys = None, _ALL
        if sender == self.id:
            return
        try:
            if keys is _ALL:
                self._on_lost()
                self._on_restored()
            elif keys:
                self._on_keys(keys)
        except Exception:
            log.exception("applying an invalidation from the coherence channel failed")
        # Counted once applied, so whoever waits for the count sees its effect.
        self.received += 1

    # ------------------------------------------------------------------ what a transport implements
    @abstractmethod
    def _connect(self) -> None:
        """Opens the subscriber connection and subscribes; returns once the server confirmed."""

    @abstractmethod
    def _receive(self, timeout: float) -> list[Any]:
        """The payloads that arrive within timeout seconds (maybe none); raises if the connection broke."""

    @abstractmethod
    def _ping(self) -> None:
        """Sends a liveness probe on the subscriber connection."""

    @abstractmethod
    def _pong_pending(self) -> bool:
        """Whether the last probe is still unanswered."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Closes the subscriber connection (safe to call at any time, from any thread)."""

    @abstractmethod
    def _send(self, payloads: list[str]) -> None:
        """Publishes the payloads (one transaction if the transport has them); raises on failure."""

    def _close_publisher(self) -> None:
        """Closes the publishing connection, if the transport has its own."""

    @abstractmethod
    def _forget_connections(self) -> None:
        """In a forked child: drops every connection reference, closing nothing (they are the parent's)."""

    def _interrupt(self) -> None:
        """Wakes the subscriber thread from its wait (called by close(), from another thread)."""
        _shutdown_socket(self._subscriber_fileno())

    def _subscriber_fileno(self) -> int | None:
        """The subscriber connection's socket descriptor, if connected."""
        return None


def _shutdown_socket(fileno: int | None) -> None:
    """shutdown(2) on a connected socket, by descriptor: its reader wakes up to an end of file."""
    if fileno is None or fileno < 0:
        return
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


# ----------------------------------------------------------------------------- Redis


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

    Pub/sub is fire-and-forget: a subscriber that is disconnected when a message is
    published never gets it, which is why a lost subscription makes the cache drop
    every clean entry and read through until it is back (see the consistency model
    in this module's documentation).
    """

    kind = "redis"

    def __init__(
        self,
        client_or_url: Any = "redis://127.0.0.1:6379/0",
        channel: str = "lazycache:invalidate",
        *,
        keys: str = "json",
        ping_interval: float = 1.0,
        ping_timeout: float | None = None,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
        connect_timeout: float = 5.0,
        max_backlog: int = 100_000,
        cluster: bool = False,
    ) -> None:
        try:
            import redis
            from redis.cluster import RedisCluster
        except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
            raise ImportError(
                "RedisCoherence needs redis-py (5 or later): pip install 'lazywritercache[redis]'"
            ) from exc
        super().__init__(
            keys=keys,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            reconnect_initial=reconnect_initial,
            reconnect_max=reconnect_max,
            max_backlog=max_backlog,
        )
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty str, got {channel!r}")
        self.channel = channel
        self._channel_bytes = channel.encode("utf-8")
        self.connect_timeout = connect_timeout
        from .redis import RedisStore, make_client

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
        from redis.backoff import NoBackoff
        from redis.retry import Retry

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
        from .redis import reset_after_fork

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
