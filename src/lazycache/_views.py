"""The `keys()`, `values()` and `items()` views of a cache.

They are the `collections.abc` views (length, membership and set operations go through
the cache's mapping methods), but iterate over a list of the live entries that the core
builds under its lock: iterating while other threads write never fails half way.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._contracts import CoreMapping


class _KeysView(KeysView[Any]):
    _mapping: CoreMapping  # set by MappingView: the cache, which makes its views of itself

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._keys())


class _ValuesView(ValuesView[Any]):
    _mapping: CoreMapping

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._values())


class _ItemsView(ItemsView[Any, Any]):
    _mapping: CoreMapping

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._mapping._items())
