"""Read-through and loaders: how a read that misses memory reaches the store, once per key.

`_ReadThroughLayer` is the part of the cache layer (`lazycache._cache_layer`) that loads:
the core calls `_load_missing` (without its lock held) when a read misses; `get_or_load`
and `get_many` come here too, and `lazycache.aio` awaits the same steps. Misses load in
batches, one store call each (`_load_missing_many`: one key for the core's hook, a loop
pass's misses for `lazycache.aio`), and concurrent misses of one key share one load
(`_load_once` for loaders). What a load finds is cached clean by the core's
`_insert_loaded`, expiring when the store would drop it, unless a write or a delete of the
key came meanwhile (the memory epoch, `_load_start`/`_load_end`), or the coherence channel
is down (then it is returned, not cached).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from ._checks import MAX_SECONDS
from ._contracts import CoreMapping
from ._core_common import ttl_ns
from ._sentinels import ABSENT, MISSING
from .stores.base import Store


class _ReadThroughLayer(CoreMapping):
    """Loading for the cache layer: read-through, `get_or_load`, `get_many`. See the module."""

    # Set by the cache layer's __init__.
    store: Store[Any, Any]
    read_through: bool
    expire_after_write: float | None
    _is_closed: bool
    _coherent: bool  # False while the coherence channel is down: loads are not cached

    def _init_read_through(self) -> None:
        self._loading: dict[Any, _Load] = {}  # loads in progress, one per token (see _load_once)
        self._loading_lock = threading.Lock()
        self._loads = 0  # entries read from the store (the stats' `loads`)

    # ----------------------------------------------------------- hooks called by the core
    def _reads_through(self) -> bool:
        """Whether a miss goes to the store: False with read_through off; raises once closed.

        A closed cache answers from memory only: its store may be closed (`owns_store`), or
        belong to someone else by now. Raising, rather than reporting a miss as absent, never
        passes a key the store holds for a missing one.
        """
        if not self.read_through:
            return False
        if self._is_closed:
            raise RuntimeError(
                "the cache is closed: it answers from memory only, and this read needs the store"
            )
        return True

    def _fetch(self, key: Any) -> Any:
        """Reads key from the store without caching it; MISSING if absent or read-through is off."""
        if not self._reads_through():
            return MISSING
        found = self.store.load_many([key])
        if key not in found:
            return MISSING
        self._loads += 1
        return found[key]

    def _load_from_store(self, keys: list[Any]) -> tuple[Mapping[Any, Any], Mapping[Any, float]]:
        """(what the store holds of keys, the seconds left to those it will expire): a read-through's load."""
        store = self.store
        if store.reports_ttls:
            found, ttls = store.load_many_with_ttls(keys)
        else:
            found, ttls = store.load_many(keys), {}
        self._loads += len(found)
        return found, ttls

    def _loaded_ttl(self, seconds: float | None) -> int:
        """The TTL (ns, or -1 for the cache's) of an entry the store keeps `seconds` more (None: for good).

        The store's deadline, or the cache's own expire_after_write if that comes sooner.
        """
        if seconds is None:
            return -1
        cache_ttl = self.expire_after_write
        if cache_ttl is not None and cache_ttl < seconds:
            return -1
        # A store that says "no time left" gets an entry that expires at once, not an error.
        return ttl_ns("the store's TTL", min(max(seconds, 1e-9), MAX_SECONDS))

    def _load_missing(self, key: Any) -> Any:
        # Concurrent misses of one key share one store load (no stampede on a hot key).
        values, errors = self._load_missing_many([key])
        if errors:
            raise errors[key]
        return values[key]

    def _load_missing_many(
        self, keys: Iterable[Any]
    ) -> tuple[dict[Any, Any], dict[Any, BaseException]]:
        """`_load_missing` of each key, with one store call for those it loads.

        Returns ({key: value or MISSING}, {key: the exception its load raised}). A key that
        another caller is loading already is waited for, not loaded twice; the others are
        loaded here, and their callers wait for this call.
        """
        leading: dict[Any, _Load] = {}
        following: dict[Any, _Load] = {}
        with self._loading_lock:
            try:
                for key in keys:
                    pending = self._loading.get(key)
                    if pending is None:
                        leading[key] = self._loading[key] = _Load()
                    elif key not in leading:
                        following[key] = pending
            except BaseException:  # a key whose hash or eq raised: nothing is left registered
                for key in leading:
                    self._loading.pop(key, None)
                raise
        values: dict[Any, Any] = {}
        errors: dict[Any, BaseException] = {}
        try:
            if leading:
                values = self._load_through(list(leading))
        except BaseException as exc:
            for load in leading.values():
                load.fail(exc)
            if not isinstance(exc, Exception):
                raise
            errors = dict.fromkeys(leading, exc)
        else:
            for key, load in leading.items():
                load.done(values[key])
        finally:
            with self._loading_lock:
                for key in leading:
                    del self._loading[key]
        for key, load in following.items():
            try:
                values[key] = load.wait()
            except Exception as exc:
                errors[key] = exc
        return values, errors

    def _load_through(self, keys: list[Any]) -> dict[Any, Any]:
        """Reads keys from the store in one call and caches each found clean, expiring when
        the store would drop it; returns {key: what a reader sees (MISSING if none)}."""
        epoch = self._memory_epoch  # before: see _insert_loaded
        seen: dict[Any, Any] = {}
        absent: list[Any] = []
        for key in keys:
            # A load of key that ended between our caller's miss and our start has cached its value.
            current, _ = self._read_versioned(key)
            if current is ABSENT:
                absent.append(key)
            else:
                seen[key] = current
        if absent and self._reads_through():
            found, ttls = self._load_from_store(absent)
            for key in absent:
                if key in found:
                    ttl = self._loaded_ttl(ttls.get(key))
                    seen[key] = self._load_end(key, found[key], epoch, False, ttl)
        return {key: seen.get(key, MISSING) for key in keys}

    def _load_once(self, token: Any, load: Callable[[], Any]) -> Any:
        """Runs `load()` once for every caller that comes with `token` while it runs.

        The others wait and get its value, or its exception. `token` is the key for a
        read-through and `(_LOADER, key)` for `get_or_load`: a reader never waits on a
        loader it did not pass (nor gets its exception).
        """
        with self._loading_lock:
            pending = self._loading.get(token)
            leader = pending is None
            if pending is None:
                pending = self._loading[token] = _Load()
        if not leader:
            return pending.wait()
        try:
            value = load()
        except BaseException as exc:
            pending.fail(exc)
            raise
        else:
            pending.done(value)
            return value
        finally:
            with self._loading_lock:
                del self._loading[token]

    def _load_and_cache(
        self, key: Any, fetch: Callable[[Any], Any], over_delete: bool = False
    ) -> Any:
        """`fetch(key)`, cached clean (see the core's _insert_loaded); returns what a reader sees.

        MISSING passes through; a value is not cached while the coherence channel is down.
        A delete of key made meanwhile wins (MISSING), unless `over_delete`: then the
        fetched value is returned, uncached.
        """
        epoch, current = self._load_start(key, over_delete)
        if current is not ABSENT:
            return current
        return self._load_end(key, fetch(key), epoch, over_delete)

    def _load_start(self, key: Any, over_delete: bool) -> tuple[int, Any]:
        """(the memory epoch before the load, what memory answers already or ABSENT): a load's start."""
        epoch = self._memory_epoch  # before: see _insert_loaded
        # A load of key that ended between our caller's miss and our start has cached its value.
        current, _ = self._read_versioned(key)
        if current is not ABSENT and not (current is MISSING and over_delete):
            return epoch, current
        return epoch, ABSENT

    def _load_end(self, key: Any, value: Any, epoch: int, over_delete: bool, ttl: int = -1) -> Any:
        """Caches a loaded value clean (see `_load_and_cache`; `ttl` as `_insert_loaded`'s);
        returns what a reader sees."""
        if value is MISSING or not self._coherent:
            return value
        current = self._insert_loaded(key, value, epoch, ttl)
        return value if current is MISSING and over_delete else current

    # ----------------------------------------------------------- lookups
    def get_or_load(self, key: Any, loader: Callable[[Any], Any]) -> Any:
        """The value memory holds for key, else `loader(key)`'s, which is then cached clean.

        The loader stands in for the store: the store is not read, and the value is cached
        as a read-through's would be, clean (never written to the store: assign it to
        persist it). Concurrent callers for one key share one call of the loader, across
        threads; its exception reaches each of them and nothing is cached. A key deleted
        in memory (its delete not written yet) gets the loader's value, not cached.
        """
        if not callable(loader):
            raise TypeError(f"loader must be callable, not {type(loader).__name__}")
        value = self._peek(key)
        if value is not ABSENT and value is not MISSING:
            return value
        return self._load_once(
            (_LOADER, key), lambda: self._load_and_cache(key, _checked(loader), over_delete=True)
        )

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """{key: value} for the keys of `keys` that have a value, in their order.

        Memory answers what it holds; the other keys are read through in one
        `Store.load_many` call (when `read_through` is on), and what it finds is cached clean.
        Keys another caller is loading already are waited for, not loaded twice.
        """
        keys = list(keys)
        found, misses = self._memory_pass(keys)
        if misses:
            values, errors = self._load_missing_many(misses)
            for error in errors.values():
                raise error
            found.update(_present(values))
        return {key: found[key] for key in keys if key in found}

    def _memory_pass(self, keys: list[Any]) -> tuple[dict[Any, Any], list[Any]]:
        """({key: value} memory holds, the keys to read through, once each) for get_many and aget_many."""
        peek = self._peek
        reads_through = self.read_through
        found: dict[Any, Any] = {}
        misses: dict[Any, None] = {}
        for key in keys:
            value = peek(key)
            if value is ABSENT:
                if reads_through:
                    misses[key] = None
            elif value is not MISSING:
                found[key] = value
        return found, list(misses)


def _present(values: Mapping[Any, Any]) -> dict[Any, Any]:
    """The keys of a load's {key: value or MISSING} that have a value."""
    return {key: value for key, value in values.items() if value is not MISSING}


_LOADER: Any = object()  # tags get_or_load's loads apart from read-through loads of the same key


def _checked(loader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`loader`, refusing MISSING as its result (see `_loaded_value`)."""
    return lambda key: _loaded_value(loader(key))


def _loaded_value(value: Any) -> Any:
    """A loader's value; ValueError for MISSING (it cannot be cached, nor told from a miss)."""
    if value is MISSING:
        raise ValueError("the loader returned lazycache.MISSING, which cannot be cached")
    return value


class _Load:
    """One read-through load that other readers of the same key wait for."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = MISSING
        self._error: BaseException | None = None

    def done(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._event.set()

    def wait(self) -> Any:
        self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value
