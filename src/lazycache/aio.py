"""lazycache for asyncio: awaitable forms of everything that may touch the store.

`AsyncLazyWriterCache` is a `LazyWriterCache` (same core, same writer thread, same store)
with awaitable methods for the operations that may wait on I/O:

* `aget`, `aget_many`: read-through; a miss loads in a worker thread, concurrent
  misses of one key share one load (across tasks, and with threads reading the same key),
  and the keys missed in one pass of the loop load together, in one store call;
* `aget_or_load`: `get_or_load` with a loader that may be a coroutine function;
* `aset`: a write that, under `max_pending` with `on_full="block"`, waits for room
  without blocking the loop;
* `aupdate_entry`: `update_entry` with an awaited read-through;
* `aflush`, `aclose`, and `async with`.

The in-memory operations (`cache[key] = value` below `max_pending`, `len`, iteration,
`discard`, `copy`, ...) stay synchronous: they do no I/O. The synchronous read-through
ones (`cache[key]`, `get`, `in` on a miss) still work, but block the calling thread for
the load: in a coroutine, use `aget`.

Where the I/O runs: the writer is the cache's usual thread, with the store's own
synchronous connections. Given an async URL or an `AsyncEngine`, `open()` makes the
store on the synchronous twin of its driver (`postgresql+asyncpg` -> `postgresql+psycopg`,
`sqlite+aiosqlite` -> `sqlite`, `mysql+aiomysql`/`+asyncmy` -> `mysql+pymysql`), so
the store's SQL, fast paths, serializers, error classification, merge-back and coherence
are the ones the synchronous API uses, not a second copy. The loop shares only the GIL
with the writer, which pauses between the chunks of a batch once it has worked a
millisecond (lazycache._pacing), so the loop waits about that long for it, not the 5 ms
switch interval. See docs/guides/asyncio.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Callable, TypeVar, overload

from ._cache_layer import _CacheLayer
from ._compat import IMPLEMENTATION
from ._journaled_layer import add_journaled_variant
from ._read_through import _LOADER, _loaded_value, _present
from ._sentinels import ABSENT, MISSING
from .cache import LazyWriterCache, _classes, implementation_class
from .writer import BackpressureError, FlushResult

if TYPE_CHECKING:
    from typing_extensions import Self

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

__all__ = [
    "AsyncLazyWriterCache",
    "async_implementation_class",
    "open",
    "sync_url",
]

_UNSET: Any = object()

# Set while an awaitable method runs the synchronous, in-memory part of an operation on the
# loop: the hooks the core calls for anything that would wait (a read-through load, a full
# backlog under on_full="block" or "write-through") raise _WouldBlock instead of waiting,
# and the awaitable method does that part off the loop. Threads never see it set.
_on_loop: contextvars.ContextVar[bool] = contextvars.ContextVar("lazycache_on_loop", default=False)
# Values loaded by an awaited read-through, handed to the next `_fetch` of the same key.
_prefetched: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar(
    "lazycache_prefetched", default=None
)

_LOAD = "load"
_FULL = "full"


class _WouldBlock(Exception):
    """Raised by a hook, on the loop, where the synchronous API would wait on I/O."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _MemoryOnly:
    """Sets `_on_loop` (and `_prefetched`) for a block: the in-memory part of an awaitable method.

    A class rather than a generator-based context manager: this is on every awaitable call's
    path, and it costs half as much.
    """

    __slots__ = ("_given", "_prefetched", "_token")

    def __init__(self, prefetched: dict[Any, Any] | None = None) -> None:
        self._prefetched = prefetched

    def __enter__(self) -> None:
        self._token = _on_loop.set(True)
        self._given = _prefetched.set(self._prefetched)

    def __exit__(self, *exc_info: object) -> None:
        _prefetched.reset(self._given)
        _on_loop.reset(self._token)


def _consume(future: asyncio.Future[Any]) -> None:
    # A load every awaiting task gave up on (cancelled) must not log "exception never retrieved".
    if not future.cancelled():
        future.exception()


def _outcomes(
    job: asyncio.Future[tuple[dict[Any, Any], dict[Any, BaseException]]], keys: list[Any]
) -> tuple[dict[Any, Any], dict[Any, BaseException]]:
    """What a finished `_load_missing_many` job gave: its result, or its error for every key."""
    if job.cancelled():  # (the loop's executor cancels what it never started, at shutdown)
        return {}, dict.fromkeys(keys, asyncio.CancelledError())
    error = job.exception()
    if error is not None:
        return {}, dict.fromkeys(keys, error)
    return job.result()


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Runs fn(*args) in a thread of its own; the future settles on the calling loop.

    For the long operations (flush, close), so that they never hold up the loop's
    default executor, where read-through loads run. Cancelling the future stops the
    waiting, not fn: a flush or close runs to its end (each batch is one transaction).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile: nobody is waiting any more
            pass

    threading.Thread(target=run, name="lazycache-aio", daemon=True).start()
    return future


class _AsyncLayer(_CacheLayer):
    """The awaitable methods, and the hooks that keep the loop from waiting. See AsyncLazyWriterCache."""

    # ----------------------------------------------------------- hooks called by the core
    def _load_missing(self, key: Any) -> Any:
        if _on_loop.get():
            raise _WouldBlock(_LOAD)
        return super()._load_missing(key)

    def _fetch(self, key: Any) -> Any:
        if _on_loop.get():
            prefetched = _prefetched.get()
            if prefetched is not None and key in prefetched:
                return prefetched.pop(key)  # used once: a retry of update_entry reloads
            raise _WouldBlock(_LOAD)
        return super()._fetch(key)

    def _delete_missing(self, key: Any) -> None:
        if _on_loop.get():
            raise _WouldBlock(_LOAD)
        super()._delete_missing(key)

    def _backpressure(self, key: Any, value: Any, wait: Any = None) -> bool:
        # "raise" refuses at once, and a key already pending adds nothing: neither waits.
        if _on_loop.get() and self.on_full != "raise" and not self._is_pending(key):
            raise _WouldBlock(_FULL)
        return super()._backpressure(key, value, wait)

    # ----------------------------------------------------------- reads
    async def aget(self, key: Any, default: Any = None) -> Any:
        """The value of key, or default; a miss reads through without blocking the loop."""
        with _MemoryOnly():
            try:
                return self.get(key, default)
            except _WouldBlock:
                pass
        value = await self._aload(key)
        return default if value is MISSING else value

    async def aget_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """{key: value} for the keys of `keys` that have a value; the misses load in one store call."""
        keys = list(keys)
        found, misses = self._memory_pass(keys)
        if misses:
            values = await asyncio.gather(*(self._aload(key) for key in misses))
            found.update(_present(dict(zip(misses, values))))
        return {key: found[key] for key in keys if key in found}

    def _loop_state(self, name: str) -> dict[Any, Any]:
        # The class only adds methods to the cache's own (see _upgrade): its state is made here.
        try:
            state: dict[Any, Any] = self.__dict__[name]
        except KeyError:
            state = self.__dict__.setdefault(name, {})
        return state

    @property
    def _aloads(self) -> dict[tuple[asyncio.AbstractEventLoop, Any], asyncio.Future[Any]]:
        """Per (loop, key): the load in progress that tasks of that loop wait for."""
        return self._loop_state("_aloads_")

    @property
    def _abatches(self) -> dict[asyncio.AbstractEventLoop, list[Any]]:
        """Per loop: the keys missed since its last batch of loads was sent."""
        return self._loop_state("_abatches_")

    def _aload(self, key: Any) -> asyncio.Future[Any]:
        """The value of one missed key (or MISSING), loaded in the default executor.

        Tasks missing the same key share one future. The keys missed during one pass of the
        loop load together, in one `_load_missing_many` call: one store call, which threads
        missing those keys share too. The load is shielded: a cancelled reader stops
        waiting, the load completes and is cached (or not) whole.
        """
        loop = asyncio.get_running_loop()
        loads = self._aloads
        load = loads.get((loop, key))
        if load is None:
            load = loads[(loop, key)] = loop.create_future()
            load.add_done_callback(_consume)
            batch = self._abatches.get(loop)
            if batch is None:
                batch = self._abatches[loop] = []
                loop.call_soon(self._send_loads, loop)
            batch.append(key)
        return asyncio.shield(load)

    def _send_loads(self, loop: asyncio.AbstractEventLoop) -> None:
        """Loads the keys `_aload` gathered on `loop` in a worker thread; settles their futures."""
        keys = self._abatches.pop(loop)
        try:
            job = loop.run_in_executor(None, self._load_missing_many, keys)
        except Exception as exc:  # the executor is shut down: every reader gets the error
            self._settle_loads(loop, keys, ({}, dict.fromkeys(keys, exc)))
            return
        job.add_done_callback(lambda done: self._settle_loads(loop, keys, _outcomes(done, keys)))

    def _settle_loads(
        self,
        loop: asyncio.AbstractEventLoop,
        keys: list[Any],
        outcomes: tuple[dict[Any, Any], dict[Any, BaseException]],
    ) -> None:
        values, errors = outcomes
        loads = self._aloads
        for key in keys:
            load = loads.pop((loop, key))
            if load.done():  # cancelled by hand: readers only ever get it shielded
                continue
            if key in errors:
                load.set_exception(errors[key])
            else:
                load.set_result(values[key])

    async def aget_or_load(self, key: Any, loader: Callable[[Any], Any]) -> Any:
        """`get_or_load` awaited: the value memory holds for key, else the loader's, cached clean.

        `loader(key)` may be a coroutine function (awaited on the loop) or a plain function
        (run in the loop's default executor; if it returns an awaitable, that is awaited).
        Tasks of one loop share one call per key; its exception reaches each of them and
        nothing is cached. A cancelled caller stops waiting: the load goes on and is cached.
        """
        if not callable(loader):
            raise TypeError(f"loader must be callable, not {type(loader).__name__}")
        value = self._peek(key)
        if value is not ABSENT and value is not MISSING:
            return value
        loop = asyncio.get_running_loop()
        loads = self._aloads
        token = (loop, (_LOADER, key))  # never a reader's (loop, key): _LOADER is private
        load = loads.get(token)
        if load is None:
            load = loop.create_task(self._load_with(key, loader))
            loads[token] = load
            load.add_done_callback(lambda done: loads.pop(token, None))
            load.add_done_callback(_consume)
        return await asyncio.shield(load)

    async def _load_with(self, key: Any, loader: Callable[[Any], Any]) -> Any:
        epoch, current = self._load_start(key, over_delete=True)
        if current is not ABSENT:
            return current
        if inspect.iscoroutinefunction(loader):
            value = await loader(key)
        else:
            value = await asyncio.get_running_loop().run_in_executor(None, loader, key)
            if inspect.isawaitable(value):
                value = await value
        return self._load_end(key, _loaded_value(value), epoch, over_delete=True)

    # ----------------------------------------------------------- writes
    async def aset(self, key: Any, value: Any) -> None:
        """`cache[key] = value`; when the backlog is full, waits for room without blocking the loop.

        `on_full="block"`: waits up to `block_timeout`, then raises BackpressureError.
        `on_full="write-through"`: the write goes to the store from a worker thread (a
        cancelled await does not recall it). `on_full="raise"`: raises at once.
        """
        deadline: float | None = None
        while True:
            with _MemoryOnly():
                try:
                    self[key] = value
                    return
                except _WouldBlock:
                    pass
            if self.on_full == "write-through":
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.__setitem__, key, value)
                return
            deadline = await self._wait_for_room(key, deadline)

    async def aupdate_entry(self, key: Any, fn: Callable[[Any], Any], default: Any = _UNSET) -> Any:
        """`update_entry` (fn runs on the loop), with an awaited read-through on a miss."""
        deadline: float | None = None
        prefetched: dict[Any, Any] | None = None

        def apply(value: Any) -> Any:
            # fn is the caller's code: a read of its own that misses blocks as it would
            # outside (it cannot be awaited from here), rather than pass for this key's load.
            token = _on_loop.set(False)
            try:
                return fn(value)
            finally:
                _on_loop.reset(token)

        while True:
            with _MemoryOnly(prefetched):
                try:
                    if default is _UNSET:
                        return self.update_entry(key, apply)
                    return self.update_entry(key, apply, default)
                except _WouldBlock as blocked:
                    reason = blocked.reason
            if reason == _LOAD:
                prefetched = {key: await self._aload(key)}
            else:
                prefetched = None
                deadline = await self._wait_for_room(key, deadline)

    async def _wait_for_room(self, key: Any, deadline: float | None) -> float:
        """Waits (on the loop) until the backlog is below max_pending; returns the deadline kept."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.block_timeout
        while self._backlog_full():
            if self._is_closed:
                raise RuntimeError("the cache is closed: it accepts no more writes")
            if loop.time() >= deadline:
                raise BackpressureError(
                    f"waited {self.block_timeout}s for the writer to catch up ({self.pending} pending, "
                    f"max_pending={self.max_pending}); refused the write of {key!r}"
                )
            self._writer.wake()
            await asyncio.sleep(0.002)
        return deadline

    # ----------------------------------------------------------- flushing and closing
    async def aflush(self, timeout: float | None = None) -> FlushResult:
        """`flush(timeout)` in a thread of its own: the loop keeps running meanwhile.

        Cancelling the await does not stop the flush: its batches are transactions, each
        written whole or left pending, and the writer thread keeps retrying what is left.
        """
        return await _in_thread(self.flush, timeout)

    async def aclose(
        self, flush: bool | None = None, timeout: float | None = None
    ) -> FlushResult | None:
        """`close(flush, timeout)` in a thread of its own (cancelling the await does not stop it)."""
        return await _in_thread(self.close, flush, timeout)

    async def __aenter__(self) -> Self:
        return self.__enter__()  # which refuses a closed cache

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _async_class(sync_cls: type[LazyWriterCache[Any, Any]]) -> type[AsyncLazyWriterCache[Any, Any]]:
    namespace = {"__doc__": _DOC, "__module__": __name__, "implementation": sync_cls.implementation}
    cls = type("AsyncLazyWriterCache", (_AsyncLayer, sync_cls), namespace)
    return add_journaled_variant(cls)


_DOC = """A `LazyWriterCache` with awaitable forms of the operations that may touch the store.

    `aget`, `aget_many`, `aget_or_load`, `aset`, `aupdate_entry`, `aflush`, `aclose` and
    `async with` never block the event loop. Every synchronous method is the `LazyWriterCache`'s.
    """

_async_classes: dict[str, type[AsyncLazyWriterCache[Any, Any]]] = {
    name: _async_class(cls) for name, cls in _classes.items()
}
# Both classes of a core (plain and journaled) map to their asynchronous twins.
_upgrades: dict[type[LazyWriterCache[Any, Any]], type[AsyncLazyWriterCache[Any, Any]]] = {}
for _name, _cls in _classes.items():
    _upgrades[_cls] = _async_classes[_name]
    _upgrades[_cls._journaled] = _async_classes[_name]._journaled

if TYPE_CHECKING:

    class AsyncLazyWriterCache(LazyWriterCache[K, V]):
        @overload
        async def aget(self, key: K, default: None = None) -> V | None: ...
        @overload
        async def aget(self, key: K, default: V | T) -> V | T: ...
        async def aget(self, key: K, default: Any = None) -> Any: ...
        async def aget_many(self, keys: Iterable[K]) -> dict[K, V]: ...
        async def aget_or_load(
            self, key: K, loader: Callable[[K], V] | Callable[[K], Awaitable[V]]
        ) -> V: ...
        async def aset(self, key: K, value: V) -> None: ...
        async def aupdate_entry(self, key: K, fn: Callable[[V], V], default: V = ...) -> V: ...
        async def aflush(self, timeout: float | None = None) -> FlushResult: ...
        async def aclose(
            self, flush: bool | None = None, timeout: float | None = None
        ) -> FlushResult | None: ...
        async def __aenter__(self) -> Self: ...
        async def __aexit__(self, *exc_info: object) -> None: ...

else:
    AsyncLazyWriterCache = _async_classes[IMPLEMENTATION]


def async_implementation_class(implementation: str) -> type[AsyncLazyWriterCache[Any, Any]]:
    """The AsyncLazyWriterCache class built on the given core: "cython" or "python"."""
    return _async_classes[implementation_class(implementation).implementation]


def _upgrade(cache: LazyWriterCache[Any, Any]) -> AsyncLazyWriterCache[Any, Any]:
    # The asynchronous class only adds methods to the cache's own class (no state, same
    # layout), so a cache the synchronous opener made becomes its asynchronous twin.
    upgraded = _upgrades[type(cache)]
    cache.__class__ = upgraded
    assert isinstance(cache, upgraded)
    return cache


# ----------------------------------------------------------------------------- opening

_SYNC_DRIVERS = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "psycopg": "psycopg",
    "aiosqlite": "pysqlite",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
}


def sync_url(url: Any) -> Any:
    """The SQLAlchemy URL of the synchronous twin of an async URL's driver (others unchanged).

    `postgresql+asyncpg` and `postgresql+psycopg_async` -> `postgresql+psycopg`,
    `sqlite+aiosqlite` -> `sqlite+pysqlite`, `mysql+aiomysql` and `mysql+asyncmy` ->
    `mysql+pymysql` (also for `mariadb+`). Returns a `sqlalchemy.engine.URL`, password kept.
    """
    import sqlalchemy as sa

    url = sa.engine.make_url(url)
    backend, _, driver = url.drivername.partition("+")
    if driver in _SYNC_DRIVERS:
        url = url.set(drivername=f"{backend}+{_SYNC_DRIVERS[driver]}")
    return url


def _is_redis_client(target: Any) -> bool:
    """Whether `target` is a redis-py client (sync or `redis.asyncio`), told apart without importing redis."""
    return type(target).__module__.startswith("redis.")


def _sync_redis_client(client: Any) -> Any:
    """A redis-py client on the same server, database and credentials as a `redis.asyncio` client."""
    import inspect

    import redis

    if isinstance(client, redis.asyncio.RedisCluster):
        raise TypeError("pass a Redis Cluster's URL to lazycache.aio.open, not its asyncio client")
    kwargs = dict(client.connection_pool.connection_kwargs)
    if "path" in kwargs:  # a unix socket
        kwargs["unix_socket_path"] = kwargs.pop("path")
    if issubclass(client.connection_pool.connection_class, redis.asyncio.SSLConnection):
        kwargs["ssl"] = True
    # The asyncio pool carries options of its own (handlers, registries) that the
    # synchronous client does not take: only the ones it does are passed on.
    accepted = inspect.signature(redis.Redis.__init__).parameters
    return redis.Redis(**{name: value for name, value in kwargs.items() if name in accepted})


async def open(
    url: Any = "sqlite+aiosqlite:///lazycache.db",
    table: str = "lazycache",
    **options: Any,
) -> AsyncLazyWriterCache[Any, Any]:
    """`lazycache.open()` for asyncio: awaitable, and taking async URLs and engines.

    `url` is a SQLAlchemy URL, sync or async (`postgresql+asyncpg://`, `sqlite+aiosqlite://`,
    `mysql+aiomysql://`, ...), an `AsyncEngine` (its URL is used; the engine itself is
    left to its owner), an `Engine`, a `redis://` URL, or a redis-py client (sync or
    `redis.asyncio`). The store runs on the synchronous twin of the URL's driver (see
    `sync_url`), in the cache's threads. Every other keyword is `lazycache.open()`'s.
    Opening (connecting, creating or checking the table) runs in a worker thread.

    >>> async with await lazycache.aio.open("postgresql+asyncpg://app@db/app", "users") as users:
    ...     users["alice"] = {"age": 30}
    ...     await users.aget("bob")
    """
    from ._open import is_redis_url, open_redis
    from ._open import open as open_sync

    sync_engine = getattr(url, "sync_engine", None)
    if sync_engine is not None:  # an AsyncEngine: its URL, for an engine of our own
        url = sync_engine.url
    if _is_redis_client(url):
        import redis

        from .stores.redis import RedisStore

        made_client = isinstance(url, redis.asyncio.Redis)
        client = _sync_redis_client(url) if made_client else url
        prefix = options.pop("prefix", f"{table}:")
        made = await asyncio.get_running_loop().run_in_executor(
            None, lambda: open_redis(client, prefix=prefix, **options)
        )
        # A client made here from the caller's is the store's: closed with the cache.
        store = made.store
        assert isinstance(store, RedisStore)  # what open_redis makes
        store.owns_client = store.owns_client or made_client
        return _upgrade(made)
    if not (is_redis_url(url) or (hasattr(url, "dialect") and hasattr(url, "connect"))):
        url = sync_url(url)  # a SQLAlchemy URL, not an Engine
    target = url
    made = await asyncio.get_running_loop().run_in_executor(
        None, lambda: open_sync(target, table, **options)
    )
    return _upgrade(made)
