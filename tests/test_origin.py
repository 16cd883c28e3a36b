"""The behaviours the origin (Go lazywritercache) tests, ported."""

from __future__ import annotations

import pytest
from helpers import FailingStore

from lazycache import FlushError, MemoryStore


def test_store_then_load_from_memory(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["test1"] = {"name": "test1"}
    cache["test2"] = {"name": "test2"}
    assert cache["test1"] == {"name": "test1"}
    assert cache["test2"] == {"name": "test2"}
    assert store.load_calls == []  # served from memory, the store was not asked
    assert cache.stats.hits == 2


def test_pending_grows_on_set_and_empties_on_flush(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    assert cache.pending == 0
    cache["a"] = 1
    cache["b"] = 2
    assert cache.pending == 2
    cache["a"] = 3  # coalesced with the earlier change of "a"
    assert cache.pending == 2
    assert store.data == {}
    result = cache.flush()
    assert cache.pending == 0
    assert result.written == 2 and result.ok
    assert store.data == {"a": 3, "b": 2}


def test_invalidate_flushes_then_empties_memory(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache["b"] = 2
    result = cache.invalidate()
    assert result.written == 2
    assert store.data == {"a": 1, "b": 2}
    assert len(cache) == 0
    assert list(cache) == []
    assert cache.pending == 0


def test_reads_after_invalidate_come_through_the_store(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache.invalidate()
    store.data["a"] = 100  # changed behind the cache's back
    assert cache["a"] == 100
    assert store.load_calls == [["a"]]
    assert cache.stats.loads == 1


def test_error_during_invalidate_keeps_data_in_memory_and_pending(make_cache) -> None:
    store = FailingStore({"loaded": 0})
    cache = make_cache(store, quiet=True)
    assert cache["loaded"] == 0  # a clean entry: invalidate may drop it
    cache["a"] = 1
    cache["b"] = 2
    store.fail = True
    with pytest.raises(FlushError) as info:
        cache.invalidate()
    assert set(info.value.result.failed_keys) == {"a", "b"}
    assert isinstance(info.value.result.errors[0], ConnectionError)
    assert cache.pending == 2
    assert sorted(cache.keys()) == ["a", "b"]
    store.load_calls.clear()
    assert cache["a"] == 1 and cache["b"] == 2
    assert store.load_calls == []  # still in memory, not read back
    store.fail = False
    cache.flush()
    assert store.data == {"loaded": 0, "a": 1, "b": 2}


def test_eviction_skips_dirty_entries_then_evicts_them_after_flush(make_cache) -> None:
    cache = make_cache(quiet=True, maxsize=2)
    for i in range(5):
        cache[f"k{i}"] = i
    assert cache.prune() == 0
    assert len(cache) == 5
    cache.flush()
    assert cache.prune() == 3
    assert len(cache) == 2
    assert cache.stats.evictions == 3
    for i in range(5):  # evicted entries are still readable: they come back from the store
        assert cache[f"k{i}"] == i


def test_flush_on_close_writes_everything(cache_cls) -> None:
    store = MemoryStore()
    cache = cache_cls(store, write_interval=60, prune_interval=60)
    for i in range(10):
        cache[i] = str(i)
    del cache[3]
    result = cache.close()
    assert result is not None and result.ok
    assert store.data == {i: str(i) for i in range(10) if i != 3}
