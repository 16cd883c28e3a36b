"""Deletes are queued like writes and reach the store; a pending delete hides the stored row."""

from __future__ import annotations

import pytest
from helpers import FailingStore

from lazycache import MemoryStore


def test_delete_propagates_to_store_at_next_flush(make_cache) -> None:
    store = MemoryStore({"a": 1, "b": 2})
    cache = make_cache(store, quiet=True)
    cache["a"] = 10
    cache.flush()
    del cache["a"]
    assert store.data == {"a": 10, "b": 2}
    assert cache.pending == 1
    result = cache.flush()
    assert result.deleted == 1 and result.written == 0
    assert store.data == {"b": 2}
    assert cache.pending == 0


def test_put_then_delete_ends_deleted(make_cache) -> None:
    store = MemoryStore({"a": "old"})
    cache = make_cache(store, quiet=True)
    cache["a"] = "new"
    del cache["a"]
    assert cache.pending == 1
    assert "a" not in cache
    cache.flush()
    assert store.data == {}
    assert "a" not in cache


def test_delete_then_put_ends_present(make_cache) -> None:
    store = MemoryStore({"a": "old"})
    cache = make_cache(store, quiet=True)
    del cache["a"]
    cache["a"] = "new"
    assert cache.pending == 1
    assert cache["a"] == "new"
    assert len(cache) == 1
    cache.flush()
    assert store.data == {"a": "new"}


def test_pending_delete_is_not_read_through(make_cache) -> None:
    store = FailingStore({"a": "old"})
    cache = make_cache(store, quiet=True)
    cache.discard("a")
    store.load_calls.clear()
    with pytest.raises(KeyError):
        cache["a"]
    assert cache.get("a", "gone") == "gone"
    assert "a" not in cache
    assert cache.pop("a", "gone") == "gone"
    with pytest.raises(KeyError):
        del cache["a"]
    assert store.load_calls == []
    assert store.data == {"a": "old"}  # the store still has it until the flush
    assert cache.setdefault("a", "fresh") == "fresh"  # and the stale row does not come back


def test_deleted_key_is_not_in_len_or_iteration(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    cache["b"] = 2
    del cache["a"]
    assert len(cache) == 1
    assert list(cache) == ["b"]
    assert cache.copy() == {"b": 2}


def test_discard_records_delete_for_key_not_in_memory(make_cache) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store, quiet=True)
    cache.discard("a")
    cache.discard("never-existed")
    assert store.load_calls == []  # discard does not need to look
    assert cache.pending == 2
    assert len(cache) == 0
    cache.flush()
    assert store.data == {}
    assert sorted(store.write_calls[0][1]) == ["a", "never-existed"]


def test_del_of_store_only_key_reads_through_then_deletes(make_cache) -> None:
    store = MemoryStore({"a": 1})
    cache = make_cache(store, quiet=True)
    del cache["a"]
    assert "a" not in cache
    cache.flush()
    assert store.data == {}


def test_del_of_key_nowhere_is_a_key_error(make_cache) -> None:
    cache = make_cache(quiet=True)
    with pytest.raises(KeyError):
        del cache["nowhere"]
    assert cache.pending == 0


def test_del_of_store_only_key_without_read_through_is_a_key_error(make_cache) -> None:
    store = MemoryStore({"a": 1})
    cache = make_cache(store, quiet=True, read_through=False)
    with pytest.raises(KeyError):
        del cache["a"]
    cache.discard("a")
    cache.flush()
    assert store.data == {}


def test_pop_of_store_only_key_returns_stored_value_and_deletes_it(make_cache) -> None:
    store = MemoryStore({"a": 1})
    cache = make_cache(store, quiet=True)
    assert cache.pop("a") == 1
    assert "a" not in cache
    assert cache.pending == 1
    cache.flush()
    assert store.data == {}


def test_pop_of_key_nowhere_raises_or_returns_default(make_cache) -> None:
    cache = make_cache(quiet=True)
    with pytest.raises(KeyError):
        cache.pop("nowhere")
    assert cache.pop("nowhere", None) is None
    assert cache.pending == 0


def test_delete_counts_in_stats(make_cache) -> None:
    cache = make_cache(MemoryStore({"s": 0}), quiet=True)
    cache["a"] = 1
    del cache["a"]
    cache.pop("s")
    cache.discard("x")
    assert cache.stats.deletes == 3


def test_deletes_and_upserts_of_one_flush_leave_store_consistent(make_cache) -> None:
    store = FailingStore({i: "old" for i in range(10)})
    cache = make_cache(store, quiet=True, batch_size=3)
    for i in range(0, 10, 2):
        del cache[i]
    for i in range(10, 15):
        cache[i] = "new"
    cache[0] = "revived"
    cache.flush()
    expected = {i: "old" for i in range(1, 10, 2)}
    expected.update({i: "new" for i in range(10, 15)})
    expected[0] = "revived"
    assert store.data == expected
    for upserts, deletes in store.write_calls:  # a key appears once per batch
        keys = [k for k, _ in upserts] + list(deletes)
        assert len(keys) == len(set(keys)) <= 3
