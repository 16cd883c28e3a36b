"""update_entry: an atomic read-modify-write."""

from __future__ import annotations

import pytest
from helpers import FailingStore, run_threads

from lazycache import MemoryStore

THREADS = 8
INCREMENTS = 500


def increment(value: int) -> int:
    return value + 1


def test_concurrent_increments_are_not_lost(make_cache) -> None:
    cache = make_cache()  # short intervals: the writer and pruner run meanwhile
    cache["n"] = 0

    def work() -> None:
        for _ in range(INCREMENTS):
            cache.update_entry("n", increment)

    run_threads(work, [()] * THREADS)
    assert cache["n"] == THREADS * INCREMENTS
    cache.flush()
    assert cache.store.data["n"] == THREADS * INCREMENTS


def test_concurrent_increments_of_a_store_only_key_start_from_the_stored_value(make_cache) -> None:
    store = MemoryStore({"n": 10})
    cache = make_cache(store)

    def work() -> None:
        for _ in range(INCREMENTS):
            cache.update_entry("n", increment)

    run_threads(work, [()] * THREADS)
    assert cache["n"] == 10 + THREADS * INCREMENTS
    cache.flush()
    assert store.data["n"] == 10 + THREADS * INCREMENTS


def test_concurrent_increments_from_a_default(make_cache) -> None:
    cache = make_cache()

    def work() -> None:
        for _ in range(INCREMENTS):
            cache.update_entry("n", increment, 0)

    run_threads(work, [()] * THREADS)
    assert cache["n"] == THREADS * INCREMENTS


def test_update_of_store_only_key_reads_through_and_marks_pending(make_cache) -> None:
    store = MemoryStore({"n": 10})
    cache = make_cache(store, quiet=True)
    assert cache.update_entry("n", increment) == 11
    assert cache["n"] == 11
    assert store.data["n"] == 10
    assert cache.pending == 1
    cache.flush()
    assert store.data["n"] == 11


def test_update_of_missing_key_uses_default_or_raises(make_cache) -> None:
    cache = make_cache(quiet=True)
    with pytest.raises(KeyError):
        cache.update_entry("n", increment)
    assert cache.pending == 0
    assert cache.update_entry("n", increment, 41) == 42
    assert cache["n"] == 42


def test_update_of_pending_delete_uses_default_not_the_stored_value(make_cache) -> None:
    store = FailingStore({"n": 10})
    cache = make_cache(store, quiet=True)
    del cache["n"]
    with pytest.raises(KeyError):
        cache.update_entry("n", increment)
    assert cache.update_entry("n", increment, 0) == 1
    cache.flush()
    assert store.data == {"n": 1}


def test_update_function_error_leaves_value_unchanged(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["n"] = 1
    cache.flush()

    def boom(value: int) -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        cache.update_entry("n", boom)
    assert cache["n"] == 1
    assert cache.pending == 0
