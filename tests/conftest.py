"""Fixtures: every behavioural test runs once per core (pure Python and compiled Cython).

The compiled core is required: if `lazycache._core` cannot be imported, its tests FAIL
(they do not skip), unless LAZYCACHE_NO_EXTENSIONS is set, in which case they skip.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from helpers import (
    EVENT_LOOPS,
    LONG,
    SHORT,
    close_caches,
    event_loop_kind,
    quiet_class,
    require_implementation,
)
from hypothesis import settings

from lazycache import MemoryStore
from lazycache.cache import implementation_class

# Hypothesis: `make test` (and CI) replays the same examples every run, so a red build means a
# change broke something, not that this run was unlucky; `make test-explore` draws new ones
# (HYPOTHESIS_PROFILE=explore) each run. A failure prints the blob that replays it.
settings.register_profile("replay", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "replay"))

IMPLEMENTATIONS = [
    pytest.param("python", id="pure-python"),
    pytest.param("cython", id="cython-compiled", marks=pytest.mark.compiled),
]


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """Which core the test runs on: "python" or "cython"."""
    require_implementation(request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=EVENT_LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which event loop `helpers.run_async` runs the test's scenarios on: "asyncio" or "uvloop"
    (a module opts in with `pytestmark = pytest.mark.usefixtures("loop_kind")`)."""
    with event_loop_kind(request.param):
        yield request.param


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


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On a free-threaded build, the suite fails if the GIL got enabled along the way.

    Importing an extension module not declared free-threading compatible (the compiled core,
    or a dependency) re-enables the GIL for the rest of the process, with only a warning:
    the suite would then pass without testing anything free-threaded.
    """
    if FREE_THREADED and sys._is_gil_enabled() and os.environ.get("PYTHON_GIL") != "1":
        files = {
            name: getattr(module, "__file__", None) or "" for name, module in sys.modules.items()
        }
        loaded = sorted(
            name
            for name, path in files.items()
            if path.endswith((".so", ".pyd"))
            and name.partition(".")[0] not in sys.stdlib_module_names
        )
        print(
            "\nfree-threaded build, but the GIL was enabled during the session (by importing one "
            f"of these extension modules, outside the standard library: {', '.join(loaded)})",
            file=sys.stderr,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
