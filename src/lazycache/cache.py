"""LazyWriterCache: the dict-like cache, its writer and pruner threads, and its lifecycle.

The hot dict methods (`__getitem__`, `__setitem__`, `__delitem__`, `__contains__`,
`__len__`, `get`) are inherited straight from the core (compiled when available),
so no Python frame sits between the caller and the map. This module adds what
needs Python: the store, the threads, read-through, flushing and closing.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import ItemsView, KeysView, MutableMapping, ValuesView
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple, Type, TypeVar, Union

from . import _core_py
from ._sentinels import ABSENT, MISSING
from ._worker import Worker
from .stats import CacheStats
from .stores.base import Store
from .writer import FlushError, FlushResult, MergeGenerated, describe_keys, flush_pending, merge_fields

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

log = logging.getLogger("lazycache")

NO_EXTENSIONS = bool(os.environ.get("LAZYCACHE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

_cores: Dict[str, type] = {"python": _core_py.Core}
if not NO_EXTENSIONS:
    try:
        from . import _core as _core_c  # type: ignore[attr-defined]
    except ImportError:  # no compiled wheel for this platform: the twin behaves the same
        pass
    else:
        _cores["cython"] = _core_c.Core

IMPLEMENTATION = "cython" if "cython" in _cores else "python"

_UNSET: Any = object()


def _check_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class _CacheLayer:
    """Everything of LazyWriterCache that is not the core. See LazyWriterCache."""

    implementation: str
    """Which core this class is built on: "cython" or "python"."""

    def __init__(
        self,
        store: Store[Any, Any],
        *,
        maxsize: Optional[int] = None,
        write_interval: float = 0.5,
        prune_interval: float = 10.0,
        read_through: bool = True,
        batch_size: int = 1000,
        flush_on_close: bool = True,
        merge_generated: MergeGenerated = merge_fields,
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"store must be a lazycache.Store, not {type(store).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not callable(merge_generated):
            raise TypeError("merge_generated must be callable")
        write_interval = _check_interval("write_interval", write_interval)
        prune_interval = _check_interval("prune_interval", prune_interval)
        super().__init__(maxsize=maxsize, write_threshold=batch_size, read_through=read_through)  # type: ignore[call-arg]
        self.store = store
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.flush_on_close = bool(flush_on_close)
        self.merge_generated = merge_generated
        self._loads = self._writes = self._failed_writes = self._flushes = 0
        self._flush_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._is_closed = False
        self._writer = Worker(self, "_background_flush", write_interval, "lazycache-writer")
        self._pruner = Worker(self, "prune", prune_interval, "lazycache-pruner")
        _open_caches[id(self)] = self
        self._writer.start()
        self._pruner.start()

    # ----------------------------------------------------------- hooks called by the core
    def _fetch(self, key: Any) -> Any:
        """Reads key from the store without caching it; MISSING if absent or read-through is off."""
        if not self.read_through:  # type: ignore[attr-defined]
            return MISSING
        found = self.store.load_many([key])
        if key not in found:
            return MISSING
        self._loads += 1
        return found[key]

    def _load_missing(self, key: Any) -> Any:
        epoch = self._memory_epoch  # type: ignore[attr-defined]
        value = self._fetch(key)
        if value is MISSING:
            return MISSING
        return self._insert_loaded(key, value, epoch)  # type: ignore[attr-defined]

    def _delete_missing(self, key: Any) -> None:
        if self._fetch(key) is MISSING:
            raise KeyError(key)
        self._discard(key)  # type: ignore[attr-defined]

    def _wake(self, signal: int) -> None:
        if signal & _core_py.SIGNAL_PRUNE:
            self._pruner.wake()
        if signal & _core_py.SIGNAL_WRITE:
            self._writer.wake()

    # ----------------------------------------------------------- the rest of the mapping API
    def pop(self, key: Any, default: Any = _UNSET) -> Any:
        """Deletes key (the delete reaches the store in a later flush) and returns its value.

        Reads through to the store when memory does not know the key.
        """
        value = self._remove(key)  # type: ignore[attr-defined]
        if value is ABSENT:
            value = self._fetch(key)
            if value is not MISSING:
                newer = self._discard(key)  # type: ignore[attr-defined]
                if newer is not MISSING:  # set by another thread while we read: that is what we deleted
                    value = newer
        if value is MISSING:
            if default is _UNSET:
                raise KeyError(key)
            return default
        return value

    def popitem(self) -> Tuple[Any, Any]:
        """Deletes and returns the most recently inserted item in memory (the store is not consulted)."""
        return self._popitem()  # type: ignore[attr-defined,no-any-return]

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Returns the value of key (reading through on a miss); sets it to default if there is none."""
        value = self.get(key, MISSING)  # type: ignore[attr-defined]
        if value is not MISSING:
            return value
        return self._insert_if_absent(key, default)[1]  # type: ignore[attr-defined]

    def discard(self, key: Any) -> None:
        """Deletes key from the cache and, in a later flush, from the store, whether or not memory holds it."""
        self._discard(key)  # type: ignore[attr-defined]

    def clear(self) -> None:
        """Deletes every key held in memory; each delete reaches the store in a later flush.

        Keys that only the store holds are not touched. To drop memory without deleting
        anything, use `invalidate()`.
        """
        self._delete_all()  # type: ignore[attr-defined]

    def copy(self) -> Dict[Any, Any]:
        """A plain dict snapshot of the live entries in memory (not a second cache: one store, one writer)."""
        return dict(self._items())  # type: ignore[attr-defined]

    def keys(self) -> KeysView[Any]:
        return _KeysView(self)  # type: ignore[arg-type]

    def values(self) -> ValuesView[Any]:
        return _ValuesView(self)  # type: ignore[arg-type]

    def items(self) -> ItemsView[Any, Any]:
        return _ItemsView(self)  # type: ignore[arg-type]

    def update_entry(self, key: Any, fn: Callable[[Any], Any], default: Any = _UNSET) -> Any:
        """Atomically replaces the value of key with `fn(value)` and returns the new value.

        Optimistic: `fn` runs without any lock and is called again if another thread
        changed the key meanwhile, so it must not mutate its argument or have side
        effects. A missing key (after read-through) uses `default`, or raises KeyError.
        """
        while True:
            current, version = self._read_versioned(key)  # type: ignore[attr-defined]
            expected = current
            if current is ABSENT:
                current = self._fetch(key)
            base = default if current is MISSING else current
            if base is _UNSET:
                raise KeyError(key)
            new = fn(base)
            if self._compare_and_set(key, new, expected, version):  # type: ignore[attr-defined]
                return new

    # ----------------------------------------------------------- writing and pruning
    def flush(self) -> FlushResult:
        """Writes everything pending now to the store, in batches, and says what was written.

        Raises FlushError (carrying the FlushResult) if the store failed; the entries it
        could not write stay pending and are retried by the writer thread.
        """
        result = self._flush()
        if result.errors:
            raise FlushError(result)
        return result

    def _flush(self) -> FlushResult:
        with self._flush_lock:
            return flush_pending(self)  # type: ignore[arg-type]

    def _background_flush(self) -> None:
        self._flush()  # failures are logged with their keys and retried next interval
        if self.maxsize and len(self) > self.maxsize:  # type: ignore[arg-type]
            self._pruner.wake()  # what was just written can be evicted now

    def prune(self) -> int:
        """Evicts clean entries until the cache is back at maxsize; returns how many. Run by the pruner."""
        if not self.maxsize:
            return 0
        evicted = 0
        while True:
            excess = len(self) - self.maxsize  # type: ignore[arg-type]
            if excess <= 0:
                break
            victims = self._evict(min(excess, 1024))  # type: ignore[attr-defined]
            if not victims:
                break  # the rest is pending: the writer must catch up first
            evicted += len(victims)
            del victims  # evicted values are released here, outside the core's lock
        return evicted

    def invalidate(self) -> FlushResult:
        """Flushes, then drops every entry from memory (the store keeps everything).

        If the flush fails, FlushError is raised and the entries that could not be written
        stay in memory, still pending: nothing unwritten is dropped.
        """
        result = self._flush()
        self._drop_clean()  # type: ignore[attr-defined]
        if result.errors:
            raise FlushError(result)
        return result

    def clear_dirty(self) -> int:
        """Forgets every pending write not yet handed to the store; returns how many.

        Dangerous: those changes never reach the store, and the cache keeps values the
        store does not have. Writes already being saved are not recalled.
        """
        return self._clear_dirty()  # type: ignore[attr-defined,no-any-return]

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        hits, misses, sets, deletes, evictions = self._counters()  # type: ignore[attr-defined]
        return CacheStats(
            hits=hits,
            misses=misses,
            loads=self._loads,
            stores=sets,
            deletes=deletes,
            evictions=evictions,
            writes=self._writes,
            failed_writes=self._failed_writes,
            flushes=self._flushes,
            size=len(self),  # type: ignore[arg-type]
            pending=self.pending,  # type: ignore[attr-defined]
        )

    # ----------------------------------------------------------- lifecycle
    @property
    def closed(self) -> bool:
        return self._is_closed

    def close(self, flush: Optional[bool] = None) -> Optional[FlushResult]:
        """Stops the threads and, unless told otherwise, flushes what is pending. Idempotent.

        After close the cache still answers reads but refuses writes. Raises FlushError
        naming the unwritten keys if the final flush fails; they stay in memory, and
        `flush()` may be called again.
        """
        with self._close_lock:
            if self._is_closed:
                return None
            self._is_closed = True
        self._mark_closed()  # type: ignore[attr-defined]
        self._writer.stop()
        self._pruner.stop()
        _open_caches.pop(id(self), None)
        if self.flush_on_close if flush is None else flush:
            return self.flush()
        return None

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_is_closed", True):
            return
        try:
            self.close()
        except FlushError as exc:
            log.error(
                "lazycache: a cache was garbage-collected and its last flush failed; lost: %s",
                describe_keys(list(exc.result.failed_keys)),
            )
        except Exception:
            log.exception("lazycache: closing a garbage-collected cache failed")

    def __repr__(self) -> str:
        return (
            f"<LazyWriterCache ({self.implementation} core) size={len(self)} "  # type: ignore[arg-type]
            f"pending={self.pending} store={self.store!r}>"  # type: ignore[attr-defined]
        )


class _KeysView(KeysView):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._keys())  # type: ignore[attr-defined]


class _ValuesView(ValuesView):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._values())  # type: ignore[attr-defined]


class _ItemsView(ItemsView):  # type: ignore[type-arg]
    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        return iter(self._mapping._items())  # type: ignore[attr-defined]


_DOC = """A dict-like write-behind cache in front of a `Store`.

    ``cache[key] = value`` never waits on I/O: the entry is marked pending and a writer
    thread saves pending entries in batches (one `Store.write` per batch, at most
    `batch_size` entries) every `write_interval` seconds, or sooner once a full batch is
    pending. Reads are served from memory; on a miss, with `read_through`, the value is
    loaded from the store and cached as clean. A pruner thread evicts clean entries
    (CLOCK, an LRU approximation) to keep the cache near `maxsize`; entries with a
    pending write are never evicted.

    Touch the store: a read miss (`[]`, `get`, `in`, `setdefault`, `pop`, `del`,
    `update_entry` of a key memory does not hold) when `read_through` is on.
    Memory only: `len`, iteration, the views, `copy`, `popitem`, `clear`, and every write.
    """


def _cache_class(implementation: str, core: type) -> type:
    # The core comes before MutableMapping in the MRO so that its compiled slots, not
    # the ABC's Python mixin methods, serve the hot dict operations.
    namespace = {"__doc__": _DOC, "__module__": __name__, "implementation": implementation}
    return type("LazyWriterCache", (_CacheLayer, core, MutableMapping), namespace)


_classes: Dict[str, type] = {name: _cache_class(name, core) for name, core in _cores.items()}

if TYPE_CHECKING:

    class LazyWriterCache(_CacheLayer, _core_py.Core, MutableMapping[K, V]):  # type: ignore[misc]
        def __getitem__(self, key: K) -> V: ...
        def __setitem__(self, key: K, value: V) -> None: ...
        def __delitem__(self, key: K) -> None: ...
        def __iter__(self) -> Iterator[K]: ...
        def __len__(self) -> int: ...

else:
    LazyWriterCache = _classes[IMPLEMENTATION]


def implementation_class(implementation: str) -> Type["LazyWriterCache[Any, Any]"]:
    """The LazyWriterCache class built on the given core: "cython" or "python"."""
    try:
        return _classes[implementation]  # type: ignore[return-value]
    except KeyError:
        raise ValueError(
            f"no {implementation!r} core here (available: {', '.join(sorted(_classes))})"
        ) from None


# Caches left open at interpreter exit are closed (and flushed) by this hook. Their
# threads are daemons, so the interpreter does not wait for them before running it.
# Keyed by id(): a Mapping is unhashable.
_open_caches: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()


@atexit.register
def _close_open_caches() -> None:
    for cache in list(_open_caches.values()):
        try:
            cache.close()
        except FlushError as exc:
            log.error("lazycache: flush at exit failed; not written: %s", describe_keys(list(exc.result.failed_keys)))
        except Exception:
            log.exception("lazycache: closing a cache at exit failed")
