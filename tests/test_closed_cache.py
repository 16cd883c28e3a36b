"""A closed cache: reads from memory only, refuses writes, and cannot be entered again.

After `close()` the cache no longer owns (or may have closed) its store: a read that would
go to the store raises RuntimeError instead of reconnecting or reporting the key absent.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import FailingStore, run_async
from services import database  # noqa: F401  (the fixture)

import lazycache
from lazycache.aio import async_implementation_class

CLOSED = "the cache is closed"


def closed_cache(make_cache: Any, **options: Any) -> tuple[Any, FailingStore]:
    """A closed cache holding "mem" (written and flushed by close) over a store that also holds "only"."""
    store = FailingStore({"only": 1})
    cache = make_cache(store, quiet=True, **options)
    cache["mem"] = 2
    assert cache.close() is not None
    return cache, store


def test_closed_cache_answers_reads_from_memory(make_cache: Any) -> None:
    cache, _ = closed_cache(make_cache)
    assert cache["mem"] == 2 and cache.get("mem") == 2 and "mem" in cache
    assert len(cache) == 1 and list(cache) == ["mem"] and cache.copy() == {"mem": 2}
    assert cache.stats.size == 1


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda cache: cache["only"], id="getitem"),
        pytest.param(lambda cache: cache.get("only"), id="get"),
        pytest.param(lambda cache: "only" in cache, id="contains"),
        pytest.param(lambda cache: cache.get("nowhere"), id="get-absent"),
    ],
)
def test_closed_cache_read_that_needs_the_store_raises(make_cache: Any, read: Any) -> None:
    cache, store = closed_cache(make_cache)
    loads = len(store.load_calls)
    with pytest.raises(RuntimeError, match=CLOSED):
        read(cache)
    assert len(store.load_calls) == loads  # the store was not asked
    assert "only" not in cache.copy()


def test_closed_cache_without_read_through_reports_misses_as_absent(make_cache: Any) -> None:
    cache, _ = closed_cache(make_cache, read_through=False)
    assert cache.get("only") is None and "only" not in cache


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda cache: cache.__setitem__("mem", 3), id="setitem"),
        pytest.param(lambda cache: cache.__delitem__("mem"), id="delitem"),
        pytest.param(lambda cache: cache.__delitem__("only"), id="delitem-store-key"),
        pytest.param(lambda cache: cache.pop("mem"), id="pop"),
        pytest.param(lambda cache: cache.popitem(), id="popitem"),
        pytest.param(lambda cache: cache.setdefault("new", 1), id="setdefault"),
        pytest.param(lambda cache: cache.discard("mem"), id="discard"),
        pytest.param(lambda cache: cache.clear(), id="clear"),
        pytest.param(lambda cache: cache.update({"new": 1}), id="update"),
        pytest.param(lambda cache: cache.update_entry("mem", lambda v: v + 1), id="update_entry"),
    ],
)
def test_closed_cache_write_raises_and_changes_nothing(make_cache: Any, write: Any) -> None:
    cache, store = closed_cache(make_cache)
    with pytest.raises(RuntimeError, match=CLOSED):
        write(cache)
    assert cache.copy() == {"mem": 2} and cache.pending == 0
    assert store.data == {"only": 1, "mem": 2}


def test_entering_a_closed_cache_raises(make_cache: Any) -> None:
    cache, _ = closed_cache(make_cache)
    with pytest.raises(RuntimeError, match=CLOSED):
        with cache:
            pass


def test_closed_cache_still_flushes_and_closes_again(make_cache: Any) -> None:
    cache, _ = closed_cache(make_cache)
    assert cache.flush().ok and cache.close() is None


@pytest.mark.usefixtures("loop_kind")
def test_closed_async_cache_behaves_as_the_sync_one(impl: str) -> None:
    store = FailingStore({"only": 1})
    cache = async_implementation_class(impl)(store, write_interval=3600)

    async def scenario() -> None:
        async with cache:
            await cache.aset("mem", 2)
        assert cache.closed and store.data == {"only": 1, "mem": 2}
        assert await cache.aget("mem") == 2
        assert await cache.aget_many(["mem"]) == {"mem": 2}
        loads = len(store.load_calls)
        with pytest.raises(RuntimeError, match=CLOSED):
            await cache.aget("only")
        with pytest.raises(RuntimeError, match=CLOSED):
            await cache.aget_many(["mem", "only"])
        assert len(store.load_calls) == loads
        with pytest.raises(RuntimeError, match=CLOSED):
            await cache.aset("mem", 3)
        with pytest.raises(RuntimeError, match=CLOSED):
            await cache.aupdate_entry("mem", lambda v: v + 1)
        with pytest.raises(RuntimeError, match=CLOSED):
            async with cache:
                pass
        assert cache.copy() == {"mem": 2}

    run_async(scenario)


def test_opened_cache_after_close_does_not_reconnect_to_its_disposed_engine(
    database: Any,  # noqa: F811
    impl: str,
) -> None:
    table = database.table_name()
    cache = lazycache.open(database.url, table, implementation=impl, write_interval=3600)
    cache["mem"] = 1
    engine = cache.store.engine
    cache.close()
    with lazycache.open(database.url, table, implementation=impl) as writer:
        writer["other"] = 2  # a row the closed cache's memory does not hold
    assert cache["mem"] == 1
    with pytest.raises(RuntimeError, match=CLOSED):
        cache["other"]
    # Nothing connected again: the engine the cache disposed of has no connection.
    assert engine.pool.checkedin() == 0 and engine.pool.checkedout() == 0
