"""on_flush(result) and on_evict(key, value): called outside every lock, their exceptions contained."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from helpers import TIMEOUT, FailingStore, wait_until

from lazycache import FlushError, FlushResult
from lazycache.stores.memory import MemoryStore


def in_other_thread(fn: Any) -> bool:
    """Runs fn in another thread; whether it finished within TIMEOUT (False: it was blocked)."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    return not thread.is_alive()


def test_on_flush_receives_the_result_of_each_flush_that_wrote(make_cache) -> None:
    results: list[FlushResult] = []
    cache = make_cache(quiet=True, on_flush=results.append)
    cache.flush()
    assert results == []  # a flush with nothing to do is not reported
    cache.update({"a": 1, "b": 2, "c": 3})
    returned = cache.flush()
    assert results == [returned]
    assert returned.written == 3 and returned.batches == 1


def test_on_flush_receives_a_failed_flush_with_its_keys(make_cache) -> None:
    results: list[FlushResult] = []
    store = FailingStore()
    cache = make_cache(store, quiet=True, close_may_fail=True, on_flush=results.append)
    store.fail = True
    cache["down"] = 1
    with pytest.raises(FlushError) as raised:
        cache.flush()
    assert results == [raised.value.result]
    assert results[0].failed_keys == ("down",) and not results[0].ok
    store.fail = False


def test_on_flush_is_called_for_the_writer_threads_flushes(make_cache) -> None:
    called = threading.Event()
    results: list[FlushResult] = []

    def on_flush(result: FlushResult) -> None:
        results.append(result)
        called.set()

    cache = make_cache(on_flush=on_flush)
    cache["background"] = 1
    assert called.wait(TIMEOUT), "the writer thread's flush was not reported"
    assert results[0].written == 1


def test_on_flush_runs_with_no_lock_held_so_it_may_wait_for_another_flush(make_cache) -> None:
    outcome: list[bool] = []

    def on_flush(result: FlushResult) -> None:
        if not outcome:  # the flush started below reports too: only the first waits
            outcome.append(False)

            def write_and_flush() -> None:
                cache["other"] = 2
                cache.flush()

            outcome[0] = in_other_thread(write_and_flush)

    cache = make_cache(quiet=True, on_flush=on_flush)
    cache["a"] = 1
    cache.flush()
    assert outcome == [True], "another thread's flush was blocked while on_flush ran"
    assert cache.store.data == {"a": 1, "other": 2}


def test_on_flush_that_raises_is_logged_and_the_flush_still_succeeds(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")

    def on_flush(result: FlushResult) -> None:
        raise RuntimeError("hook is broken")

    cache = make_cache(quiet=True, on_flush=on_flush)
    cache["a"] = 1
    assert cache.flush().written == 1
    record = next(
        r for r in caplog.records if r.exc_info and "hook is broken" in str(r.exc_info[1])
    )
    assert record.name == "lazycache.writer" and "on_flush" in record.getMessage()
    assert cache.store.data == {"a": 1} and cache.pending == 0


def test_on_evict_receives_each_entry_prune_evicts(make_cache) -> None:
    evicted: list[tuple[Any, Any]] = []
    store = MemoryStore({i: f"v{i}" for i in range(10)})
    cache = make_cache(store, quiet=True, maxsize=4, on_evict=lambda k, v: evicted.append((k, v)))
    for i in range(10):
        assert cache[i] == f"v{i}"  # read through: clean, so evictable
    assert cache.prune() == 6
    assert len(evicted) == 6 == cache.stats.evictions
    for key, value in evicted:
        assert value == f"v{key}"
        assert key not in cache.copy()  # gone from memory (cache.copy() does not read through)
    assert sorted(evicted + list(cache.copy().items())) == sorted(store.data.items())


def test_on_evict_is_called_by_the_pruner_thread(make_cache) -> None:
    evicted: list[Any] = []
    called = threading.Event()

    def on_evict(key: Any, value: Any) -> None:
        evicted.append(key)
        called.set()

    cache = make_cache(MemoryStore({i: i for i in range(20)}), maxsize=5, on_evict=on_evict)
    for i in range(20):
        cache[i]
    assert called.wait(TIMEOUT), "the pruner evicted nothing, or did not report it"
    wait_until(lambda: len(evicted) == cache.stats.evictions and len(cache) <= 5)


def test_on_evict_runs_with_no_lock_held_so_it_may_wait_for_another_writer(make_cache) -> None:
    outcome: list[bool] = []

    def on_evict(key: Any, value: Any) -> None:
        def read_and_write() -> None:
            assert len(cache) >= 2
            cache[("written-during-on_evict", key)] = value

        outcome.append(in_other_thread(read_and_write))

    cache = make_cache(
        MemoryStore({i: i for i in range(6)}), quiet=True, maxsize=2, on_evict=on_evict
    )
    for i in range(6):
        cache[i]
    evicted = cache.prune()  # the hook's writes are pending: the clean entries make room
    assert evicted == 6 == len(outcome)
    assert all(outcome), "another thread's read or write was blocked while on_evict ran"


def test_on_evict_that_raises_is_logged_and_eviction_goes_on(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")

    def on_evict(key: Any, value: Any) -> None:
        raise RuntimeError(f"hook broken on {key!r}")

    cache = make_cache(
        MemoryStore({i: i for i in range(6)}), quiet=True, maxsize=2, on_evict=on_evict
    )
    for i in range(6):
        cache[i]
    assert cache.prune() == 4
    assert len(cache) == 2
    records = [r for r in caplog.records if r.exc_info and "hook broken" in str(r.exc_info[1])]
    assert len(records) == 4
    assert all(r.name == "lazycache.pruner" and "on_evict" in r.getMessage() for r in records)
    assert sorted(r.lazycache_keys[0] for r in records) == sorted(set(range(6)) - set(cache.copy()))


def test_invalidate_clear_and_deletes_do_not_call_on_evict(make_cache) -> None:
    evicted: list[Any] = []
    cache = make_cache(quiet=True, maxsize=100, on_evict=lambda k, v: evicted.append(k))
    cache.update({i: i for i in range(10)})
    del cache[0]
    cache.pop(1)
    cache.invalidate()
    cache[20] = 20
    cache.clear()
    cache.flush()
    assert evicted == []


@pytest.mark.parametrize("option", ["on_flush", "on_evict"])
def test_a_hook_that_is_not_callable_is_refused(make_cache, option) -> None:
    with pytest.raises(TypeError, match=option):
        make_cache(**{option: "not a function"})


def test_name_must_be_a_non_empty_string(make_cache) -> None:
    with pytest.raises(TypeError, match="name"):
        make_cache(name=3)
    with pytest.raises(ValueError, match="name"):
        make_cache(name="")
    assert make_cache(name="sessions").name == "sessions"
    assert make_cache().name == "default"
