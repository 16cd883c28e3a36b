"""`AsyncLazyWriterCache.aget_or_load`: `get_or_load` awaited, with a loader that may be async.

The loader stands in for the store, so these run over a MemoryStore (no database, nor the
asyncio engines' greenlet: they run on free-threaded builds too), on both cores. Loaders
are held on events, never on timing. Each runs once on asyncio's event loop and once on uvloop's.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from helpers import FailingStore, run_async

from lazycache import MISSING, MemoryStore
from lazycache.aio import AsyncLazyWriterCache, async_implementation_class

pytestmark = pytest.mark.usefixtures("loop_kind")


@pytest.fixture
def make_async_cache(impl: str):
    caches: list[AsyncLazyWriterCache[Any, Any]] = []

    def make(store: Any = None, **options: Any) -> AsyncLazyWriterCache[Any, Any]:
        options.setdefault("write_interval", 3600.0)
        cls = async_implementation_class(impl)
        cache = cls(MemoryStore() if store is None else store, **options)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close(flush=False)


class HeldLoader:
    """An async loader that waits for `release`, then returns `value` or raises `error`."""

    def __init__(self, value: Any = "loaded", error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.calls: list[Any] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, key: Any) -> Any:
        self.calls.append(key)
        self.entered.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


def test_a_miss_awaits_the_loader_once_and_caches_its_value_clean(make_async_cache) -> None:
    store = FailingStore({"k": "stored"})
    cache = make_async_cache(store)

    async def loader(key: str) -> str:
        return f"made {key}"

    async def never(key: str) -> str:
        raise AssertionError("called on a hit")

    async def scenario() -> None:
        assert await cache.aget_or_load("k", loader) == "made k"
        assert await cache.aget_or_load("k", never) == "made k"

    run_async(scenario)
    assert store.load_calls == []  # the loader stands in for the store
    assert cache.pending == 0 and cache.copy() == {"k": "made k"}
    assert cache.stats.hits == 1 and cache.stats.misses == 1
    cache.flush()
    assert store.write_calls == [] and store.data == {"k": "stored"}


def test_a_plain_loader_runs_off_the_loop_and_an_awaitable_it_returns_is_awaited(
    make_async_cache,
) -> None:
    cache = make_async_cache()
    threads: list[int] = []

    def blocking(key: str) -> str:
        threads.append(threading.get_ident())
        return key.upper()

    async def fetch(key: str) -> str:
        return f"fetched {key}"

    async def scenario() -> int:
        assert await cache.aget_or_load("a", blocking) == "A"
        assert await cache.aget_or_load("b", lambda key: fetch(key)) == "fetched b"
        return threading.get_ident()

    loop_thread = run_async(scenario)
    assert threads and threads[0] != loop_thread
    assert cache.copy() == {"a": "A", "b": "fetched b"}


def test_concurrent_tasks_share_one_call_of_the_loader(make_async_cache) -> None:
    cache = make_async_cache()

    async def scenario() -> None:
        loader = HeldLoader()
        tasks = [asyncio.create_task(cache.aget_or_load("k", loader)) for _ in range(20)]
        await loader.entered.wait()
        await asyncio.sleep(0)  # every task has reached its await
        loader.release.set()
        assert await asyncio.gather(*tasks) == ["loaded"] * 20
        assert loader.calls == ["k"]
        assert cache._aloads == {}

    run_async(scenario)
    assert cache.copy() == {"k": "loaded"}


def test_a_loader_error_reaches_every_task_and_nothing_is_cached(make_async_cache) -> None:
    cache = make_async_cache()

    async def scenario() -> None:
        loader = HeldLoader(error=LookupError("backend down"))
        tasks = [asyncio.create_task(cache.aget_or_load("k", loader)) for _ in range(5)]
        await loader.entered.wait()
        loader.release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert outcomes == [loader.error] * 5
        assert loader.calls == ["k"]
        assert "k" not in cache.copy()

        async def second(key: str) -> str:
            return "second try"

        assert await cache.aget_or_load("k", second) == "second try"  # not remembered

    run_async(scenario)


def test_a_cancelled_caller_leaves_the_load_whole_and_cached(make_async_cache) -> None:
    cache = make_async_cache()

    async def scenario() -> None:
        loader = HeldLoader(value=7)
        caller = asyncio.create_task(cache.aget_or_load("k", loader))
        await loader.entered.wait()
        (load,) = cache._aloads.values()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        loader.release.set()
        assert await load == 7  # the load went on, and completed
        assert cache._aloads == {}

    run_async(scenario)
    assert cache.copy() == {"k": 7} and cache.pending == 0


def test_a_set_during_the_load_wins_and_is_what_the_caller_gets(make_async_cache) -> None:
    cache = make_async_cache()

    async def scenario() -> None:
        loader = HeldLoader(value="stale")
        caller = asyncio.create_task(cache.aget_or_load("k", loader))
        await loader.entered.wait()
        cache["k"] = "set"
        loader.release.set()
        assert await caller == "set"

    run_async(scenario)
    assert cache.copy() == {"k": "set"} and cache.pending == 1


def test_a_plain_read_never_waits_on_a_loader(make_async_cache) -> None:
    cache = make_async_cache(FailingStore({"k": "stored"}))

    async def scenario() -> None:
        loader = HeldLoader(error=LookupError("not for the reader"))
        caller = asyncio.create_task(cache.aget_or_load("k", loader))
        await loader.entered.wait()
        assert await cache.aget("k") == "stored"  # read through while the loader is held
        loader.release.set()
        with pytest.raises(LookupError):
            await caller

    run_async(scenario)
    assert cache.copy() == {"k": "stored"}


def test_a_key_deleted_in_memory_gets_the_loaded_value_uncached(make_async_cache) -> None:
    cache = make_async_cache(FailingStore({"k": "stored"}))
    del cache["k"]

    async def fresh(key: str) -> str:
        return "fresh"

    assert run_async(lambda: cache.aget_or_load("k", fresh)) == "fresh"
    assert "k" not in cache.copy()
    assert cache.pending == 1  # the delete is still to be written


def test_bad_loaders_are_refused_and_nothing_is_cached(make_async_cache) -> None:
    cache = make_async_cache()

    async def missing(key: str) -> Any:
        return MISSING

    async def scenario() -> None:
        with pytest.raises(TypeError, match="loader must be callable"):
            await cache.aget_or_load("k", None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="MISSING"):
            await cache.aget_or_load("k", missing)
        with pytest.raises(ValueError, match="MISSING"):
            await cache.aget_or_load("k", lambda key: MISSING)

    run_async(scenario)
    assert len(cache) == 0


def test_a_closed_cache_awaits_the_loader_and_caches_nothing(make_async_cache) -> None:
    cache = make_async_cache()
    cache["held"] = 1
    cache.close()

    async def two(key: str) -> int:
        return 2

    async def scenario() -> None:
        assert await cache.aget_or_load("held", two) == 1
        assert await cache.aget_or_load("new", two) == 2

    run_async(scenario)
    assert "new" not in cache.copy()
