"""The mappings ``lazycache bench`` compares, and how to build, settle and dispose of each.

To add a contender, add a loader to ``CONTENDERS``: a function returning a ``Contender``,
or raising ``Unavailable`` with the reason when it cannot run here.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from ... import MemoryStore, _compat, implementation_class
from ...stores.base import Store

IDLE_INTERVAL = 3600.0
"""write_interval and prune_interval of the lazycache contenders: no timer fires during a run."""

NO_WRITE_TRIGGER = 1 << 30
"""batch_size of the lazycache contenders: more writes than any run makes, so the writer is never woken."""

_LRU_UNBOUNDED = 2**31 - 1
"""lru.LRU needs a size (a C int); this stands for "no limit"."""

CORES = ("cython", "python")
"""lazycache's cores, the compiled one first."""

BASELINE = "dict"
"""The contender every ratio is taken against."""


class Unavailable(Exception):
    """A contender cannot run here; the message says why."""


def _nothing(structure: Any) -> None:
    """The default settle/close: nothing to do."""


@dataclass(frozen=True)
class Contender:
    """How to build, settle and dispose of one mapping implementation."""

    make: Callable[[int | None], Any]
    """Returns an empty structure; maxsize None means unbounded."""
    settle: Callable[[Any], None] = _nothing
    """Makes every entry clean (lazycache: flushes to the store); nothing elsewhere."""
    close: Callable[[Any], None] = _nothing
    """Releases the structure once its trial is over."""
    core: str | None = None
    """For lazycache: the core ("cython" or "python"); None for the others."""

    def filled(self, keys: Sequence[Any], maxsize: int | None = None, clean: bool = False) -> Any:
        """A new structure holding key -> int for every key, settled if `clean`."""
        structure = self.make(maxsize)
        for i, key in enumerate(keys):
            structure[key] = i
        if clean:
            self.settle(structure)
        return structure


def _import(module: str, distribution: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise Unavailable(
            f"{distribution} not installed (pip install 'lazywritercache[bench]')"
        ) from None


def lazycache_name(core: str) -> str:
    """The contender name of lazycache on `core`, as the tables show it."""
    return f"lazycache ({core})"


def lazycache_class(core: str) -> type:
    """LazyWriterCache on the given core, or Unavailable saying why not."""
    try:
        return implementation_class(core)
    except ValueError:
        why = _compat.why_pure() if core == "cython" else None
        raise Unavailable(why or f"no {core} core") from None


def lazycache_classes() -> tuple[dict[str, type], dict[str, str]]:
    """(LazyWriterCache class by contender name, reason by name of the cores not here), compiled first."""
    classes: dict[str, type] = {}
    skipped: dict[str, str] = {}
    for core in CORES:
        try:
            classes[lazycache_name(core)] = lazycache_class(core)
        except Unavailable as exc:
            skipped[lazycache_name(core)] = str(exc)
    return classes, skipped


def idle_cache(cls: type, store: Store[Any, Any], **options: Any) -> Any:
    """A cache of class `cls` on `store` whose writer and pruner never wake by themselves.

    No timer fires and no batch fills up during a run, and a miss does not read
    through; `options` override any of these (or add others).
    """
    settings: dict[str, Any] = {
        "write_interval": IDLE_INTERVAL,
        "prune_interval": IDLE_INTERVAL,
        "batch_size": NO_WRITE_TRIGGER,
        "read_through": False,
    }
    return cls(store, **{**settings, **options})


def _dict() -> Contender:
    return Contender(make=lambda maxsize: {})


def _lazycache(core: str) -> Callable[[], Contender]:
    """Loader for LazyWriterCache on the given core: an idle cache on a MemoryStore."""

    def load() -> Contender:
        cls = lazycache_class(core)
        return Contender(
            make=lambda maxsize: idle_cache(cls, MemoryStore(), maxsize=maxsize),
            settle=lambda cache: cache.flush(),
            close=lambda cache: cache.close(flush=False),
            core=core,
        )

    return load


def _cachetools() -> Contender:
    cachetools = _import("cachetools", "cachetools")
    return Contender(make=lambda maxsize: cachetools.LRUCache(maxsize or math.inf))


def _cachetools_locked() -> Contender:
    """cachetools.LRUCache as its documentation asks threads to share it: every call under a lock.

    The comparison for lazycache's pure-Python core, which is thread-safe by itself.
    """
    base: Any = _import("cachetools", "cachetools").LRUCache

    class LockedLRUCache(base):  # type: ignore[misc]
        def __init__(self, maxsize: float) -> None:
            super().__init__(maxsize)
            # Re-entrant: an eviction inside __setitem__ calls pop(), hence __getitem__.
            self.lock = threading.RLock()

        def __getitem__(self, key: Any) -> Any:
            with self.lock:
                return super().__getitem__(key)

        def __setitem__(self, key: Any, value: Any) -> None:
            with self.lock:
                super().__setitem__(key, value)

        def __delitem__(self, key: Any) -> None:
            with self.lock:
                super().__delitem__(key)

        def get(self, key: Any, default: Any = None) -> Any:
            with self.lock:
                return super().get(key, default)

    return Contender(make=lambda maxsize: LockedLRUCache(maxsize or math.inf))


def _cachebox() -> Contender:
    cachebox = _import("cachebox", "cachebox")
    return Contender(make=lambda maxsize: cachebox.LRUCache(maxsize or 0))  # 0: unbounded


def _lru_dict() -> Contender:
    lru = _import("lru", "lru-dict")
    return Contender(make=lambda maxsize: lru.LRU(maxsize or _LRU_UNBOUNDED))


CONTENDERS: dict[str, Callable[[], Contender]] = {
    BASELINE: _dict,
    **{lazycache_name(core): _lazycache(core) for core in CORES},
    "cachetools.LRUCache": _cachetools,
    "cachetools + Lock": _cachetools_locked,
    "cachebox.LRUCache": _cachebox,
    "lru.LRU": _lru_dict,
}
"""Column order of the tables; each loader raises Unavailable when it cannot run here."""


def load_contenders() -> tuple[dict[str, Contender], dict[str, str]]:
    """(available contenders by name, reason by name of those skipped)."""
    available: dict[str, Contender] = {}
    skipped: dict[str, str] = {}
    for name, load in CONTENDERS.items():
        try:
            available[name] = load()
        except Unavailable as exc:
            skipped[name] = str(exc)
    return available, skipped
