"""Fixtures: every behavioural test runs once per core (pure Python and compiled Cython).

The compiled core is required: if `lazycache._core` cannot be imported, its tests FAIL
(they do not skip), unless LAZYCACHE_NO_EXTENSIONS is set, in which case they skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest
from helpers import LONG, SHORT, close_caches, quiet_class, require_implementation

from lazycache import MemoryStore
from lazycache.cache import implementation_class

IMPLEMENTATIONS = [
    pytest.param("python", id="pure-python"),
    pytest.param("cython", id="cython-compiled", marks=pytest.mark.compiled),
]


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """Which core the test runs on: "python" or "cython"."""
    require_implementation(request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def cache_cls(impl: str) -> type:
    """The LazyWriterCache class built on the core under test."""
    return implementation_class(impl)


@pytest.fixture
def make_cache(cache_cls: type) -> Iterator[Callable[..., Any]]:
    """Factory: make_cache(store=None, *, quiet=False, close_may_fail=False, **options).

    Caches get short write/prune intervals unless given; `quiet=True` gives long intervals
    and a writer and pruner that never run on their own (helpers.quiet_class), for exact,
    repeatable sequences: only the test's flush() and prune() write and evict. Every cache
    is closed at teardown; a FlushError there fails the test unless `close_may_fail`.
    """
    made: list[tuple[Any, bool]] = []

    def make(
        store: Any = None, *, quiet: bool = False, close_may_fail: bool = False, **options: Any
    ) -> Any:
        interval = LONG if quiet else SHORT
        options.setdefault("write_interval", interval)
        options.setdefault("prune_interval", interval)
        cls = quiet_class(cache_cls) if quiet else cache_cls
        cache = cls(MemoryStore() if store is None else store, **options)
        made.append((cache, close_may_fail))
        return cache

    yield make
    close_caches(made)
