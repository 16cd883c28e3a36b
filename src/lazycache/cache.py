"""LazyWriterCache: the cache layer mixed over the active core, and its typed declaration.

The class is assembled here, at import, once per importable core (`_cache_class`): the
cache layer (`lazycache._cache_layer._CacheLayer`: the store, the threads, read-through,
backpressure, flushing, closing) over the core (`lazycache._compat` picks it), then
`MutableMapping`. The core comes before `MutableMapping` in the MRO, so the hot dict
methods (`__getitem__`, `__setitem__`, `__delitem__`, `__contains__`, `__len__`, `get`)
are the core's own (compiled when available): no Python frame sits between the caller and
the map. Each class also gets its journaled variant (`lazycache._journaled_layer`), which
`LazyWriterCache(store, journal=path)` makes.

Type checkers cannot follow `type()`: they see the `LazyWriterCache` declared under
`TYPE_CHECKING` below, generic in the key and value types.

Where the rest lives: the views (`_views`), the journaling scope (`_journaling`), closing at
exit, by the garbage collector and across forks (`_lifecycle`), the contract between the
core, the layer and the writer (`_contracts`).
"""

from __future__ import annotations

from collections.abc import (
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    MutableMapping,
    ValuesView,
)
from typing import TYPE_CHECKING, Any, Callable, TypedDict, TypeVar, overload

from ._cache_layer import _UNSET, ON_FULL_POLICIES, OnEvict, _CacheLayer, check_options
from ._compat import CORES, IMPLEMENTATION
from ._journaled_layer import add_journaled_variant
from ._sentinels import MISSING
from .serializers import SerializerSpec
from .writer import (
    BackpressureError,
    FlushError,
    FlushResult,
    MergeGenerated,
    OnFlush,
    OnWriteError,
    log_write_error,
    merge_fields,
)

# This module's names, and names defined elsewhere that `lazycache.cache` has always exported.
__all__ = [
    "IMPLEMENTATION",
    "MISSING",
    "ON_FULL_POLICIES",
    "BackpressureError",
    "CacheOptions",
    "FlushError",
    "FlushResult",
    "LazyWriterCache",
    "MergeGenerated",
    "OnEvict",
    "OnFlush",
    "OnWriteError",
    "check_options",
    "implementation_class",
    "log_write_error",
    "merge_fields",
]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class CacheOptions(TypedDict, total=False):
    """The options of `LazyWriterCache` that `lazycache.open()` passes on (typed, for `**options`).

    All of `LazyWriterCache.__init__`'s keywords but `owns_store` (open's cache owns its
    store) and `coherence` (typed by each opener: `open()` over Redis also takes a bool).
    """

    maxsize: int | None
    write_interval: float
    prune_interval: float
    read_through: bool
    batch_size: int
    flush_on_close: bool
    merge_generated: MergeGenerated
    on_write_error: OnWriteError
    retry_initial: float
    retry_max: float
    max_retries: int | None
    max_pending: int | None
    on_full: str
    block_timeout: float
    journal: str | None
    journal_fsync: str
    journal_serializer: SerializerSpec | None
    journal_errors: str
    exit_timeout: float
    name: str
    on_flush: OnFlush | None
    on_evict: OnEvict | None
    expire_after_write: float | None
    expire_after_access: float | None
    clock: Callable[[], float] | None


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


def _cache_class(implementation: str, core: type) -> type[LazyWriterCache[Any, Any]]:
    # The core comes before MutableMapping in the MRO so that its compiled slots, not
    # the ABC's Python mixin methods, serve the hot dict operations.
    namespace = {"__doc__": _DOC, "__module__": __name__, "implementation": implementation}
    cls = type("LazyWriterCache", (_CacheLayer, core, MutableMapping), namespace)
    # LazyWriterCache(..., journal=path) makes an instance of its journaled variant.
    return add_journaled_variant(cls)


_classes: dict[str, type[LazyWriterCache[Any, Any]]] = {
    name: _cache_class(name, core) for name, core in CORES.items()
}

if TYPE_CHECKING:
    # What type checkers see: the real class is built at import time on the active core.
    # The methods below are implemented by the core or _CacheLayer with Any; here they get
    # the key and value types of the cache.

    class LazyWriterCache(_CacheLayer, MutableMapping[K, V]):
        def __getitem__(self, key: K) -> V: ...
        def __setitem__(self, key: K, value: V) -> None: ...
        def __delitem__(self, key: K) -> None: ...
        def __iter__(self) -> Iterator[K]: ...
        def __len__(self) -> int: ...
        @overload
        def get(self, key: K, default: None = None) -> V | None: ...
        @overload
        def get(self, key: K, default: V | T) -> V | T: ...
        def get(self, key: K, default: Any = None) -> Any: ...
        @overload
        def pop(self, key: K) -> V: ...
        @overload
        def pop(self, key: K, default: V | T = ...) -> V | T: ...
        def pop(self, key: K, default: Any = _UNSET) -> Any: ...
        def popitem(self) -> tuple[K, V]: ...
        # As MutableMapping's: no default only where None is a value of the cache (hence the
        # override of _CacheLayer's, which takes any default).
        @overload  # type: ignore[override]
        def setdefault(
            self: LazyWriterCache[K, T | None], key: K, default: None = None
        ) -> T | None: ...
        @overload
        def setdefault(self, key: K, default: V) -> V: ...
        def setdefault(self, key: K, default: Any = None) -> Any: ...
        def update_entry(self, key: K, fn: Callable[[V], V], default: V = ...) -> V: ...
        def set(self, key: K, value: V, ttl: float | None = None) -> None: ...
        def get_or_load(self, key: K, loader: Callable[[K], V]) -> V: ...
        def get_many(self, keys: Iterable[K]) -> dict[K, V]: ...
        def copy(self) -> dict[K, V]: ...
        def keys(self) -> KeysView[K]: ...
        def values(self) -> ValuesView[V]: ...
        def items(self) -> ItemsView[K, V]: ...

else:
    LazyWriterCache = _classes[IMPLEMENTATION]


def implementation_class(implementation: str) -> type[LazyWriterCache[Any, Any]]:
    """The LazyWriterCache class built on the given core: "cython" or "python"."""
    try:
        return _classes[implementation]
    except KeyError:
        raise ValueError(
            f"no {implementation!r} core here (available: {', '.join(sorted(_classes))})"
        ) from None
