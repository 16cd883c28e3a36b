"""RedisStore: lazycache in front of Redis or a Redis Cluster.

Hot reads never leave the process (they are served by the cache's memory); writes
reach Redis in batches, one pipelined `MULTI/EXEC` per batch; a miss reads through
with `MGET`. `lazycache.open_redis(url)` makes the whole thing in one line, with the
cross-process coherence channel (`lazycache.coherence.redis.RedisCoherence`) switched on:

    >>> users = lazycache.open_redis("redis://127.0.0.1:6379/0", prefix="users:")
    >>> users["alice"] = {"age": 30}      # in memory now; SET users:alice by the writer thread

Needs redis-py 5 or later: `pip install 'lazywritercache[redis]'`.

Keys
----
A cache key becomes the Redis key `prefix + encoded key`:

* `str`: its UTF-8 bytes, as is (`"alice"` -> `lazycache:alice`);
* `bytes`: as is, so `b"alice"` names the same Redis key as `"alice"`;
* `int` (not `bool`): its decimal digits, as redis-py writes ints, so `7` and `"7"` name
  the same Redis key;
* anything else is refused with `TypeError` (a read raises it; a write reports the
  entry to `on_write_error` as poison), unless you pass `key_encoder=`, a function
  `key -> str | bytes` used for *every* key instead of the rules above (for example
  `key_encoder=lambda k: ":".join(map(str, k))` for tuple keys). The encoding must be
  injective over the keys you use; repr() is deliberately not a default (it is not
  stable across types, versions or processes).

Keep to one key type per prefix: `"7"` and `7` are one Redis key but two cache keys,
so a cache holding both would hold two copies of one value. `load_many` returns its
results under the very key objects it was given, whatever their type.

Values are serialised by the same serializers as the SQL store (`"json"` by default,
`"pickle"`, `"msgpack"`, a `Serializer` or a `(dumps, loads)` pair; see
`lazycache.serializers`). A value the serializer refuses is poison for its key only.

TTL
---
`ttl=None` (default: no expiry), a number of seconds (fractions are sent as
milliseconds, `PX`), or `ttl(key, value) -> seconds | None` per key. The TTL is set
by every write of the key (`SET key value PX ms`), so it restarts at each write.
The store's `ttl` applies in Redis only: a value read or written by this process
stays readable in its memory until it is evicted, invalidated, dropped or expired
by the cache's own expiry. Expiry is not announced on the coherence channel.

A cache that expires entries (`set(key, value, ttl=...)`, `expire_after_write=`)
passes each entry's time left to the store (`accepts_ttls`): the key is written with
that `PX` instead of the store's `ttl`, so Redis forgets it when the cache's memory
does. A write that reaches Redis after its entry's deadline (the store was down)
is written with `PX 1`: it still replaces the older value there.

Atomicity
---------
* **Single Redis**: each batch is one `MULTI ... EXEC` sent in one round trip
  (`MSET` for entries without a TTL, `SET ... PX` for those with one, `DEL` for
  deletes; a batch that is a single command, say one `MSET`, is sent without
  `MULTI`: one command is atomic by itself). No other client's command runs in the
  middle of it, and a command Redis
  refuses while queueing (out of memory, read-only replica) aborts the whole batch.
  Redis does not roll back a command that fails while `EXEC` runs, but the commands
  sent here cannot fail that way: every key, value and TTL is encoded and checked
  before anything is sent. Durable once Redis acknowledged `EXEC`, to the extent of
  the server's persistence settings (`appendonly`, `appendfsync`).
* **Redis Cluster** (`redis.cluster.RedisCluster`): a batch is split by hash slot;
  each slot's entries are one `MULTI ... EXEC` (or one command), and those of all slots
  served by one node go in one pipelined round trip per node. **Atomic per slot
  only**: entries whose keys share a slot (put a hash tag in them, `{user:42}:profile`
  and `{user:42}:settings`, or in the prefix, `prefix="{app}:"`, which puts every key
  on one node) are written all-or-nothing and seen together. A batch that spans slots
  is **not** atomic: other clients may see one slot's part before another's, and if a
  node fails, the slots on the other nodes stay written while `write` raises; the
  writer then retries the whole batch (SET and DEL are idempotent, so the retry
  converges on the batch's values, unless another writer wrote the same keys in
  between: last writer wins). A slot that moved (`MOVED`/`ASK`, resharding or
  failover) makes the store refresh its map of the cluster and resend that slot's
  transaction, up to three times, before raising a recoverable error.

Errors
------
`is_recoverable` says retry (the batch goes back to the queue) for: lost or refused
connections and timeouts (`ConnectionError`, `TimeoutError`, including `LOADING`,
authentication failures and pool exhaustion), `OOM`, `READONLY`, `BUSY`, `MISCONF`,
`NOREPLICAS`, `MASTERDOWN`, and the cluster's `CLUSTERDOWN`, `TRYAGAIN`, `MOVED`,
`ASK`, uncovered slots. Not recoverable, the data's fault: any other server reply
error (`WRONGTYPE`, a value larger than `proto-max-bulk-len`, a key an ACL forbids:
`NOPERM`), and `SerializationError` (a value, key or TTL that cannot be encoded),
which names its key so the writer isolates it without bisecting.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

try:
    import redis
    from redis import exceptions as _rexc
    from redis.cluster import RedisCluster
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "lazycache.stores.redis needs redis-py (5 or later), which is not installed: pip install 'lazywritercache[redis]'"
    ) from exc

from .._checks import MAX_SECONDS, check_int, check_seconds
from ..serializers import SerializationError, Serializer, SerializerSpec, get_serializer
from .base import GeneratedFields, Store

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "RedisKeyError",
    "RedisStore",
    "TTLError",
    "is_recoverable_error",
    "make_client",
    "reset_after_fork",
]

log = logging.getLogger("lazycache.store.redis")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "lazycache:"

CLIENT_DEFAULTS: Mapping[str, Any] = {
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "health_check_interval": 30,
}
"""Options of a client made from a URL (overridable with client_options=): no call hangs forever."""

_MSET_CHUNK = 512
"""Key/value pairs per MSET (and keys per DEL) inside a batch's transaction."""

_CLUSTER_ATTEMPTS = 3
"""How often a cluster batch's slot transactions are sent before a redirection is reported as recoverable."""

TTLSpec = Union[None, int, float, Callable[[Any, Any], Optional[float]]]
KeyEncoder = Callable[[Any], Union[str, bytes]]


class RedisKeyError(SerializationError):
    """A cache key that cannot be turned into a Redis key (see the module's Keys section)."""

    def __init__(self, key: Any, cause: BaseException) -> None:
        super().__init__(key, cause)
        self.args = (f"cannot make a Redis key of {key!r}: {cause}",)


class TTLError(SerializationError):
    """The TTL of an entry is not a positive number of seconds (or ttl() raised)."""

    def __init__(self, key: Any, cause: BaseException) -> None:
        super().__init__(key, cause)
        self.args = (f"no valid TTL for {key!r}: {cause}",)


# ----------------------------------------------------------------------------- errors

_RECOVERABLE_TYPES: tuple[type, ...] = (
    _rexc.ConnectionError,  # includes BusyLoadingError (LOADING), AuthenticationError, MaxConnectionsError
    _rexc.TimeoutError,
    _rexc.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    _rexc.TryAgainError,
    _rexc.AskError,  # and MovedError
    _rexc.ReadOnlyError,
    _rexc.OutOfMemoryError,
    _rexc.ClusterError,
    _rexc.RedisClusterException,  # slot not covered, no reachable node
    ConnectionError,
    TimeoutError,
)
_RECOVERABLE_REPLIES = (
    "LOADING",
    "BUSY",
    "MISCONF",
    "NOREPLICAS",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "OOM",
    "READONLY",
    "MOVED",
    "ASK",
)


def is_recoverable_error(exc: BaseException) -> bool:
    """Whether retrying the Redis batch that raised `exc` later may succeed (see the module's Errors)."""
    if isinstance(exc, SerializationError):
        return False
    if isinstance(exc, _RECOVERABLE_TYPES):
        return True
    if isinstance(exc, _rexc.ResponseError):
        reply = str(exc)
        # redis-py prefixes pipeline errors with "Command # n (...) of pipeline caused error: "
        reply = reply.rsplit("caused error: ", 1)[-1]
        return reply.split(" ", 1)[0] in _RECOVERABLE_REPLIES
    return False


# ----------------------------------------------------------------------------- clients


def _is_cluster_client(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def make_client(url: str = DEFAULT_URL, *, cluster: bool | None = None, **options: Any) -> Any:
    """A redis-py client for `url`: `redis.Redis`, or `RedisCluster` for a cluster.

    `cluster=None` asks the server (`INFO cluster`) whether it is a cluster node, so one
    URL of any node is enough; this needs the server to be up. Options default to
    `CLIENT_DEFAULTS` (timeouts, so that no call waits forever) and go to `from_url`.
    Responses are bytes (`decode_responses=False`), whatever the serializer.
    """
    options = {**CLIENT_DEFAULTS, **options}
    if options.get("decode_responses"):
        raise ValueError("RedisStore reads raw bytes: do not pass decode_responses=True")
    if cluster is None:
        probe = redis.Redis.from_url(url, **options)
        try:
            info = probe.info("cluster")
        except _rexc.ConnectionError as exc:
            raise _rexc.ConnectionError(
                f"cannot reach Redis at {_safe_url(url)} to tell whether it is a cluster ({exc}); "
                "pass cluster=False or cluster=True to connect lazily"
            ) from exc
        finally:
            probe.close()
        cluster = bool(info.get("cluster_enabled"))
    if cluster:
        options.pop("db", None)
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def reset_after_fork(client: Any) -> None:
    """In a forked child: `client` (a `redis.Redis` or a `RedisCluster`) forgets the parent's connections.

    Each connection pool is emptied (`ConnectionPool.reset()`) without closing anything:
    the parent's sockets stay open for the parent (redis-py closes a dropped connection's
    socket in the child without shutting it down, so the parent's session goes on), and
    the child connects afresh on its next command. redis-py's pools do this by themselves
    on their first use in a child (they compare pids); doing it here also covers a
    `single_connection_client=True` client, whose dedicated connection bypasses the pool
    (in the child it takes its connections from the pool instead), and a pool whose lock
    a parent thread held at the fork (the child would wait for it forever). Call it while
    the child runs one thread only, as the cache's at-fork hook does. Idempotent.
    """
    if _is_cluster_client(client):
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        clients = list(
            {id(node.redis_connection): node.redis_connection for node in nodes}.values()
        )
    else:
        clients = [client]
    pid = os.getpid()
    for each in clients:
        if each is None:
            continue
        conn = each.connection  # single_connection_client: a dedicated connection
        if conn is not None and getattr(conn, "pid", None) != pid:
            each.connection = None  # the parent's session: commands take pooled ones instead
            each.single_connection_lock = threading.RLock()
        pool = each.connection_pool
        if getattr(pool, "pid", None) == pid:
            continue  # reset already (by another cache over this client, or by redis-py)
        # The child runs one thread now: a lock that a parent thread held at the fork would
        # stay held forever, and reset() takes the pool's lock, so the pool gets new ones.
        for name in ("_lock", "_fork_lock"):
            old = getattr(pool, name, None)
            if old is not None:
                setattr(pool, name, threading.RLock() if _is_rlock(old) else threading.Lock())
        pool.reset()


def _is_rlock(lock: Any) -> bool:
    return isinstance(lock, type(threading.RLock()))


def _safe_url(url: str) -> str:
    """url without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _describe_client(client: Any) -> str:
    if _is_cluster_client(client):
        nodes = ",".join(sorted(node.name for node in client.get_primaries()))
        return f"cluster {nodes}"
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{where}/{kwargs.get('db', 0)}"


# ----------------------------------------------------------------------------- the store


class RedisStore(Store[Any, Any]):
    """A `Store` over Redis (`redis.Redis`) or Redis Cluster (`redis.cluster.RedisCluster`).

    It takes an expiring cache's per-entry TTLs (`accepts_ttls`), sent as `SET ... PX`.

    Parameters
    ----------
    client_or_url
        A redis-py client (left open by `close()`: it is yours; it must return bytes,
        `decode_responses=False`) or a URL (`redis://host:port/db`, `rediss://`,
        `unix://`; the store makes and owns the client, see `make_client`).
    prefix
        Put before every key (default `"lazycache:"`). Caches sharing a prefix share data.
    serializer
        `"json"` (default), `"pickle"`, `"msgpack"`, a `Serializer` or a `(dumps, loads)` pair.
    ttl
        None (no expiry), seconds, or `ttl(key, value) -> seconds | None` (see the module doc).
    key_encoder
        `key -> str | bytes`, replacing the default encoding of keys (str, bytes, int).
    cluster
        For a URL: True/False, or None (default) to ask the server.
    chunk_size
        Keys per `MGET` on a read (all chunks go in one pipelined round trip).
    client_options
        For a URL: options for the redis-py client (`socket_timeout=`, `password=`, ...).

    Notes
    -----
    See the module documentation for the key encoding, what is atomic (per batch on a
    single Redis, per hash slot on a cluster) and how errors are classified.
    """

    def __init__(
        self,
        client_or_url: Any = DEFAULT_URL,
        prefix: str | bytes = DEFAULT_PREFIX,
        serializer: SerializerSpec = "json",
        ttl: TTLSpec = None,
        *,
        key_encoder: KeyEncoder | None = None,
        cluster: bool | None = None,
        chunk_size: int = 1000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        check_int("chunk_size", chunk_size)
        if key_encoder is not None and not callable(key_encoder):
            raise TypeError("key_encoder must be callable: key -> str | bytes")
        self.prefix: bytes = prefix.encode("utf-8") if isinstance(prefix, str) else bytes(prefix)
        self.serializer: Serializer = get_serializer(serializer)
        self.ttl = _check_ttl_spec(ttl)
        self.key_encoder = key_encoder
        self.chunk_size = chunk_size
        if isinstance(client_or_url, str):
            self.client = make_client(client_or_url, cluster=cluster, **dict(client_options or {}))
            self.owns_client = True
        else:
            if client_options:
                raise ValueError("client_options are for a URL; the client given is already made")
            if not isinstance(client_or_url, (redis.Redis, RedisCluster)):
                raise TypeError(
                    f"client_or_url must be a redis.Redis, a RedisCluster or a URL, not {type(client_or_url).__name__}"
                )
            if cluster is not None and cluster != _is_cluster_client(client_or_url):
                raise ValueError(
                    f"cluster={cluster!r} but the client given is a {type(client_or_url).__name__}"
                )
            if client_or_url.get_encoder().decode_responses:
                raise ValueError(
                    "the client decodes responses (decode_responses=True); RedisStore needs the raw bytes: "
                    "make it with decode_responses=False"
                )
            self.client = client_or_url
            self.owns_client = False
        self.cluster = _is_cluster_client(self.client)
        self.redirects = 0
        """Cluster: slot transactions resent after MOVED/ASK/TRYAGAIN (a resharding or failover)."""
        self._closed = False

    # ------------------------------------------------------------------ keys and values
    def redis_key(self, key: Any) -> bytes:
        """The Redis key (bytes, prefix included) of a cache key; TypeError if it has none."""
        encoder = self.key_encoder
        if encoder is not None:
            raw = encoder(key)
            if isinstance(raw, str):
                return self.prefix + raw.encode("utf-8")
            if isinstance(raw, (bytes, bytearray)):
                return self.prefix + bytes(raw)
            raise TypeError(
                f"key_encoder returned {type(raw).__name__} for {key!r}; it must return str or bytes"
            )
        if isinstance(key, str):
            return self.prefix + key.encode("utf-8")
        if isinstance(key, bytes):
            return self.prefix + key
        if isinstance(key, int) and not isinstance(key, bool):
            return self.prefix + str(int(key)).encode("ascii")
        raise TypeError(
            f"RedisStore keys are str, bytes or int; got {type(key).__name__} ({key!r}). "
            "Pass key_encoder=... to map such keys to str or bytes"
        )

    def _ttl_ms(self, key: Any, value: Any) -> int | None:
        ttl = self.ttl
        if ttl is None:
            return None
        if callable(ttl):
            try:
                seconds = ttl(key, value)
                if seconds is None:
                    return None
                return _ttl_to_ms(seconds)
            except Exception as exc:
                raise TTLError(key, exc) from exc
        return ttl  # checked and converted at construction

    def _encode_value(self, key: Any, value: Any) -> bytes:
        data = self.serializer.encode(key, value)  # SerializationError naming key
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        raise SerializationError(
            key, TypeError(f"the serializer returned {type(data).__name__}, not str or bytes")
        )

    def _decode_value(self, key: Any, data: bytes) -> Any:
        try:
            return self.serializer.loads(data if self.serializer.binary else data.decode("utf-8"))
        except Exception as exc:
            raise SerializationError(key, exc) from exc

    def _encode_batch(
        self,
        upserts: Sequence[tuple[Any, Any]],
        deletes: Sequence[Any],
        ttls: Mapping[Any, float] | None = None,
    ) -> tuple[list[tuple[bytes, bytes, int | None]], list[bytes]]:
        """(rkey, data, ttl ms or None) per upsert and rkey per delete; raises before anything is sent.

        A key in `ttls` (the cache's time left for it) gets that TTL instead of the store's.
        """
        sets = []
        for key, value in upserts:
            try:
                rkey = self.redis_key(key)
            except Exception as exc:
                raise RedisKeyError(key, exc) from exc
            left = ttls.get(key) if ttls else None
            ttl_ms = self._ttl_ms(key, value) if left is None else max(1, math.ceil(left * 1000))
            sets.append((rkey, self._encode_value(key, value), ttl_ms))
        dels = []
        for key in deletes:
            try:
                dels.append(self.redis_key(key))
            except Exception as exc:
                raise RedisKeyError(key, exc) from exc
        return sets, dels

    # ------------------------------------------------------------------ Store
    def load_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        keys = list(keys)
        if not keys:
            return {}
        rkeys = [self.redis_key(key) for key in keys]
        found: dict[Any, Any] = {}
        for key, data in zip(keys, self._mget(rkeys)):
            if data is not None:
                found[key] = self._decode_value(key, data)
        return found

    reports_ttls = True

    def load_many_with_ttls(self, keys: Sequence[Any]) -> tuple[dict[Any, Any], dict[Any, float]]:
        """`load_many`, with the seconds left to each found key that has a TTL (`PTTL`, same round trip)."""
        keys = list(keys)
        if not keys:
            return {}, {}
        rkeys = [self.redis_key(key) for key in keys]
        pipe = self.client.pipeline(transaction=False)
        for rkey in rkeys:
            pipe.pttl(rkey)
        if self.cluster:
            values, left = self._mget(rkeys), pipe.execute()
        else:
            self._queue_mget(pipe, rkeys)
            replies = pipe.execute()
            left = replies[: len(rkeys)]
            values = [value for chunk in replies[len(rkeys) :] for value in chunk]
        found: dict[Any, Any] = {}
        ttls: dict[Any, float] = {}
        for key, data, ms in zip(keys, values, left):
            if data is None or ms == -2:
                continue  # absent, or expired between the two reads
            found[key] = self._decode_value(key, data)
            if ms >= 0:
                ttls[key] = max(ms, 1) / 1000
        return found, ttls

    def _mget(self, rkeys: list[bytes]) -> list[bytes | None]:
        size = self.chunk_size
        if self.cluster:
            # mget_nonatomic: one MGET per slot, pipelined, one round trip per node.
            values: list[bytes | None] = []
            for start in range(0, len(rkeys), size):
                values.extend(self.client.mget_nonatomic(rkeys[start : start + size]))
            return values
        if len(rkeys) <= size:
            found: list[bytes | None] = self.client.mget(rkeys)
            return found
        pipe = self.client.pipeline(transaction=False)
        self._queue_mget(pipe, rkeys)
        return [value for chunk in pipe.execute() for value in chunk]

    def _queue_mget(self, pipe: Any, rkeys: list[bytes]) -> None:
        """Queues on `pipe` the MGETs of rkeys, `chunk_size` keys each (not on a cluster)."""
        size = self.chunk_size
        for start in range(0, len(rkeys), size):
            pipe.mget(rkeys[start : start + size])

    accepts_ttls = True

    def write(
        self,
        upserts: Sequence[tuple[Any, Any]],
        deletes: Sequence[Any],
        ttls: Mapping[Any, float] | None = None,
    ) -> GeneratedFields | None:
        sets, dels = self._encode_batch(upserts, deletes, ttls)
        if not sets and not dels:
            return None
        if self.cluster:
            self._write_cluster(sets, dels)
            return None
        commands = _commands(sets, dels)
        if len(commands) == 1:
            self.client.execute_command(*commands[0])  # one command is atomic by itself
        else:
            pipe = self.client.pipeline(transaction=True)  # MULTI ... EXEC, one round trip
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute()
        return None

    def _write_cluster(
        self, sets: list[tuple[bytes, bytes, int | None]], dels: list[bytes]
    ) -> None:
        client = self.client
        by_slot: dict[int, tuple[list[tuple[bytes, bytes, int | None]], list[bytes]]] = defaultdict(
            lambda: ([], [])
        )
        for item in sets:
            by_slot[client.keyslot(item[0])][0].append(item)
        for rkey in dels:
            by_slot[client.keyslot(rkey)][1].append(rkey)
        todo = {
            slot: _commands(slot_sets, slot_dels)
            for slot, (slot_sets, slot_dels) in by_slot.items()
        }
        last_error: BaseException | None = None
        for attempt in range(_CLUSTER_ATTEMPTS):
            if attempt:
                self._refresh_topology()  # the slots moved: learn where they are now
            by_node: dict[str, list[int]] = defaultdict(list)
            for slot in todo:
                node = client.nodes_manager.get_node_from_slot(slot)
                by_node[node.name].append(slot)
            redirected: dict[int, list[tuple[Any, ...]]] = {}
            failure: BaseException | None = None
            for name, slots in by_node.items():
                try:
                    outcome = self._send_slot_transactions(
                        client.get_node(node_name=name), slots, todo
                    )
                except (
                    Exception
                ) as exc:  # this node is down or unreachable: try the others, then raise
                    failure = failure or exc
                    continue
                for slot, error in outcome.items():
                    if isinstance(
                        error, (_rexc.AskError, _rexc.TryAgainError, _rexc.ClusterDownError)
                    ):
                        redirected[slot] = todo[slot]
                        self.redirects += 1
                        last_error = error
                    else:
                        failure = failure or error
            if failure is not None:
                if is_recoverable_error(failure):
                    self._refresh_topology()  # a failover may have moved the slots of the failed node
                raise failure
            if not redirected:
                return
            todo = redirected
        raise (
            last_error
            if last_error is not None
            else _rexc.TryAgainError("cluster slots kept moving")
        )

    def _send_slot_transactions(
        self, node: Any, slots: list[int], todo: Mapping[int, list[tuple[Any, ...]]]
    ) -> dict[int, BaseException]:
        """One pipelined round trip to `node`: per slot, its one command or MULTI ... EXEC around its
        commands; returns the slots that failed, with why."""
        connection = self.client.get_redis_connection(node)
        pipe = connection.pipeline(transaction=False)
        spans = []
        for slot in slots:
            commands = todo[slot]
            first = len(pipe.command_stack)
            if len(commands) == 1:
                pipe.execute_command(*commands[0])
            else:
                pipe.execute_command("MULTI")
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute_command("EXEC")
            spans.append((slot, first, len(pipe.command_stack), len(commands) == 1))
        replies = pipe.execute(raise_on_error=False)
        failed: dict[int, BaseException] = {}
        for slot, first, end, single in spans:
            last = replies[end - 1]
            if single:
                if isinstance(last, Exception):
                    failed[slot] = last
                continue
            if isinstance(last, list):
                errors = [reply for reply in last if isinstance(reply, Exception)]
                if errors:  # cannot happen with validated SET/MSET/DEL, but never pass it silently
                    failed[slot] = errors[0]
                continue
            # EXECABORT: the reason is the first error among the queued commands' replies
            queued = [reply for reply in replies[first : end - 1] if isinstance(reply, Exception)]
            failed[slot] = (
                queued[0]
                if queued
                else (last if isinstance(last, Exception) else _rexc.ResponseError(repr(last)))
            )
        return failed

    def _refresh_topology(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except Exception as exc:  # no node answers: the next attempt tries again
            log.debug("refreshing the Redis Cluster's slot map failed: %r", exc)

    def is_recoverable(self, exc: BaseException) -> bool:
        return is_recoverable_error(exc)

    def close(self) -> None:
        """Closes the client if the store made it (a client it was given is left alone). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.owns_client:
            self.client.close()

    def after_fork_in_child(self) -> None:
        """In a forked child: the client forgets the parent's connections (see `reset_after_fork`),
        whether the store made it or was given it."""
        reset_after_fork(self.client)

    def __repr__(self) -> str:
        try:
            where = _describe_client(self.client)
        except Exception:
            where = type(self.client).__name__
        ttl = (
            ""
            if self.ttl is None
            else f", ttl={'callable' if callable(self.ttl) else f'{self.ttl}ms'}"
        )
        return f"RedisStore({where}, prefix={self.prefix.decode('utf-8', 'backslashreplace')!r}, {self.serializer.name}{ttl})"


def _commands(
    sets: list[tuple[bytes, bytes, int | None]], dels: list[bytes]
) -> list[tuple[Any, ...]]:
    """One batch's commands: MSETs for entries without TTL, SET PX for the others, DELs."""
    commands: list[tuple[Any, ...]] = []
    plain: list[bytes] = []
    for rkey, data, ttl_ms in sets:
        if ttl_ms is None:
            plain.append(rkey)
            plain.append(data)
            if len(plain) >= 2 * _MSET_CHUNK:
                commands.append(("MSET", *plain))
                plain = []
        else:
            commands.append(("SET", rkey, data, "PX", ttl_ms))
    if plain:
        commands.append(("MSET", *plain))
    for start in range(0, len(dels), _MSET_CHUNK):
        commands.append(("DEL", *dels[start : start + _MSET_CHUNK]))
    return commands


def _ttl_to_ms(seconds: Any) -> int:
    return max(1, math.ceil(check_seconds("ttl", seconds, most=MAX_SECONDS) * 1000))


def _check_ttl_spec(ttl: TTLSpec) -> int | Callable[[Any, Any], float | None] | None:
    if ttl is None or callable(ttl):
        return ttl
    return _ttl_to_ms(ttl)


# ----------------------------------------------------------------------------- moved away


def __getattr__(name: str) -> Any:
    # Building a cache and naming its channel are not the store's business: open_redis moved to
    # lazycache._open (lazycache.open_redis), default_channel to lazycache.coherence.redis. The
    # old import paths still work; importing them here lazily keeps this module below both.
    if name == "open_redis":
        from .._open import open_redis

        return open_redis
    if name == "default_channel":
        from ..coherence.redis import default_channel

        return default_channel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
