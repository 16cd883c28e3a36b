"""The journaled variant of a cache class: its hot writes append to the journal.

`LazyWriterCache(store, journal=path)` makes an instance of the class's journaled variant
(`_CacheLayer.__new__` picks it, from the class's `_journaled`), built by `add_journaled_variant`
next to every cache class: the same class, with `__setitem__`, `__delitem__` and `set(ttl=)`
replaced by methods that hold the journal's lock around the change and the append of its
record. The compound writes journal through `cache._journaling()` (`lazycache._journaling`),
the same in both variants.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ._cache_layer import _CacheLayer, _Wait
from ._core_common import Full
from ._sentinels import MISSING
from .journal import Journal

Layer = TypeVar("Layer", bound=_CacheLayer)


class _JournaledLayer(_CacheLayer):
    """A journaled cache's hot writes: Python methods that append to the journal before returning.

    They replace the core's compiled `__setitem__`/`__delitem__`: journaling costs a pickle
    and a write(2) per change anyway, and the journal's lock must span change and append.
    """

    _journal: Journal  # never None: this class is made only with a journal

    def __setitem__(self, key: Any, value: Any) -> None:
        self._put_with_ttl(key, value, -1)

    def _put_with_ttl(self, key: Any, value: Any, ttl: int) -> None:
        journal = self._journal
        # A key or value it cannot record is refused here. The record's deadline (the TTL's,
        # else expire_after_write's) counts from the call, backpressure's waits included.
        record = journal.encode(key, value, ttl)
        wait = _Wait()
        while True:
            with journal.lock:
                # The record first: if the append fails (disk full), the cache is not changed.
                mark = journal.append(record)
                try:
                    self._put(key, value, ttl)
                    return
                except Full:
                    journal.undo(mark)  # backpressure below, without the journal's lock
                except BaseException:
                    journal.undo(mark)
                    raise
            if self._make_room(key, value, ttl, wait):
                return  # written through to the store

    def __delitem__(self, key: Any) -> None:
        journal = self._journal
        record = journal.encode(key, MISSING)
        wait = _Wait()
        while True:
            with journal.lock:
                mark = journal.append(record)
                try:
                    self._delete(key)
                    return
                except Full:
                    journal.undo(mark)  # backpressure below, without the journal's lock
                except BaseException:  # KeyError included: nothing was deleted
                    journal.undo(mark)
                    raise
            if self._backpressure(key, MISSING, wait):
                return  # written through to the store


def add_journaled_variant(cls: type[Layer]) -> type[Layer]:
    """Builds the journaled variant of `cls`, which `cls(..., journal=path)` makes; returns `cls`."""
    journaled = type(cls.__name__, (_JournaledLayer, cls), {"__module__": cls.__module__})
    assert issubclass(journaled, cls)
    cls._journaled = journaled
    return cls
