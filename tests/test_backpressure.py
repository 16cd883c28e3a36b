"""Backpressure: `max_pending` bounds the entries awaiting the store; `on_full` says what a setter meets.

"raise" refuses at once, "block" waits (at most `block_timeout`) for the writer to catch up,
"write-through" writes the setter's own entry synchronously. Changing an entry that is
already pending adds nothing to the backlog and is always allowed.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers import SLACK, FailingStore, RejectingStore, run_threads, wait_until

from lazycache import BackpressureError, FlushError, MemoryStore

FAST_RETRY = {"retry_initial": 0.01, "retry_max": 0.05}


def down_store(data=None) -> FailingStore:
    store = FailingStore(data)
    store.fail = True
    return store


def fill(cache, count: int = 10) -> dict:
    values = {f"k{i}": i for i in range(count)}
    for key, value in values.items():
        cache[key] = value
    return values


# ----------------------------------------------------------------- "raise"
def test_raise_refuses_a_new_key_when_full_but_allows_changing_a_pending_one(make_cache) -> None:
    store = down_store({"store-only": 0})
    cache = make_cache(store, max_pending=10, on_full="raise", **FAST_RETRY)
    expected = fill(cache)
    expected["store-only"] = 0
    wait_until(lambda: cache.stats.retries >= 1)  # the store is down: nothing drains
    with pytest.raises(BackpressureError):
        cache["k10"] = 10
    assert cache.pending == 10
    assert "k10" not in cache  # refused writes leave no trace
    cache["k0"] = "again"  # already pending: allowed
    del cache["k1"]  # already pending: becomes a pending delete
    with pytest.raises(BackpressureError):
        del cache["store-only"]  # a new delete adds to the backlog
    assert cache.pending == 10
    expected["k0"] = "again"
    del expected["k1"]
    store.fail = False
    wait_until(lambda: cache.pending == 0)
    assert store.data == expected
    cache["k10"] = 10  # room again
    wait_until(lambda: cache.pending == 0)
    assert store.data["k10"] == 10


def test_backpressure_error_names_the_limit_and_the_key(make_cache) -> None:
    cache = make_cache(
        down_store(), max_pending=3, on_full="raise", close_may_fail=True, **FAST_RETRY
    )
    fill(cache, 3)
    with pytest.raises(BackpressureError, match=r"max_pending=3.*'the-new-key'") as info:
        cache["the-new-key"] = 1
    assert isinstance(info.value, RuntimeError)
    assert "3" in str(info.value)


def test_compound_writes_are_refused_too_unless_the_key_is_pending(make_cache) -> None:
    store = down_store({"store-only": 0})
    cache = make_cache(store, max_pending=10, on_full="raise", close_may_fail=True, **FAST_RETRY)
    fill(cache)
    for write in (
        lambda: cache.setdefault("new", 1),
        lambda: cache.pop("store-only"),
        lambda: cache.discard("store-only"),
        lambda: cache.update_entry("new", lambda v: v + 1, 0),
        lambda: cache.update({"new": 1}),
    ):
        with pytest.raises(BackpressureError):
            write()
    assert cache.update_entry("k0", lambda v: v + 100) == 100  # pending: allowed
    assert cache.pop("k1") == 1
    assert cache.setdefault("k2", "ignored") == 2
    assert cache.pending == 10


# ----------------------------------------------------------------- "block"
def test_block_waits_for_block_timeout_then_raises(make_cache) -> None:
    cache = make_cache(
        down_store(),
        max_pending=10,
        on_full="block",
        block_timeout=0.2,
        close_may_fail=True,
        **FAST_RETRY,
    )
    fill(cache)
    started = time.monotonic()
    with pytest.raises(BackpressureError, match="max_pending=10"):
        cache["k10"] = 10
    elapsed = time.monotonic() - started
    assert elapsed >= 0.2 * 0.9, f"gave up after {elapsed:.3f}s, before block_timeout"
    assert elapsed < 0.2 + SLACK
    assert cache.pending == 10 and "k10" not in cache
    cache["k0"] = "pending keys never wait"
    assert cache["k0"] == "pending keys never wait"


def test_blocked_setter_proceeds_when_the_store_comes_back(make_cache) -> None:
    store = down_store()
    cache = make_cache(store, max_pending=10, on_full="block", block_timeout=10, **FAST_RETRY)
    expected = fill(cache)
    done = threading.Event()

    def set_one_more() -> None:
        cache["k10"] = 10
        done.set()

    thread = threading.Thread(target=set_one_more, daemon=True)
    thread.start()
    try:
        assert not done.wait(0.15), "the setter did not wait for room"
        assert cache.pending == 10
    finally:
        store.fail = False
    assert done.wait(5), "the blocked setter never proceeded"
    thread.join(5)
    expected["k10"] = 10
    wait_until(lambda: cache.pending == 0)
    assert store.data == expected


# ----------------------------------------------------------------- "write-through"
def test_write_through_writes_the_setters_entry_synchronously(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True, max_pending=10, on_full="write-through")
    expected = fill(cache)  # the writer has not run: these wait
    assert store.data == {}
    cache["k10"] = 10
    assert store.data == {"k10": 10}  # written before the set returned
    assert cache["k10"] == 10
    assert cache.pending == 10  # clean: not added to the backlog
    result = cache.flush()
    assert result.written == 10
    expected["k10"] = 10
    assert store.data == expected
    assert store.upserted_keys.count("k10") == 1  # not written a second time
    assert cache.stats.writes == 11


def test_write_through_failure_raises_to_the_setter_and_caches_nothing(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(
        store, quiet=True, max_pending=10, on_full="write-through", close_may_fail=True
    )
    fill(cache)
    store.fail = True
    with pytest.raises(ConnectionError):
        cache["k10"] = 10
    assert "k10" not in cache  # cache and store agree: neither has it
    assert cache.pending == 10
    store.fail = False
    cache["k10"] = 10
    assert store.data == {"k10": 10}


def test_write_through_rejection_raises_to_the_setter(make_cache) -> None:
    store = RejectingStore(poison={"bad"})
    cache = make_cache(store, quiet=True, max_pending=2, on_full="write-through")
    fill(cache, 2)
    with pytest.raises(ValueError, match="bad"):
        cache["bad"] = 1
    assert "bad" not in cache
    assert cache.write_errors == {}  # the setter was told directly


def test_delete_under_write_through_deletes_synchronously(make_cache) -> None:
    store = FailingStore({"old": 1, "loaded": 2})
    cache = make_cache(store, quiet=True, max_pending=10, on_full="write-through")
    assert cache["loaded"] == 2  # now in memory, clean
    fill(cache)
    del cache["old"]  # known only to the store
    del cache["loaded"]
    assert "old" not in store.data and "loaded" not in store.data
    assert "old" not in cache and "loaded" not in cache
    assert cache.pending == 10
    calls = len(store.write_calls)
    with pytest.raises(KeyError):
        del cache["nowhere"]
    assert len(store.write_calls) == calls  # nothing to delete, nothing written


def test_write_through_of_a_previously_rejected_key_clears_its_error(make_cache) -> None:
    # write_errors lists a key "until a later write of the key succeeds": a write-through is one.
    store = RejectingStore()
    store.poison_values = {"bad"}
    cache = make_cache(store, quiet=True, max_pending=2, on_full="write-through")
    cache["a"] = "bad"
    with pytest.raises(FlushError):
        cache.flush()
    assert "a" in cache.write_errors
    fill(cache, 2)
    cache["a"] = "good"  # written through
    assert store.data == {"a": "good"}
    assert cache.write_errors == {}
    assert cache.stats.write_errors == 0


def test_compound_writes_under_write_through_wait_for_the_writer(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True, max_pending=10, on_full="write-through", block_timeout=5)
    expected = fill(cache)
    assert cache.setdefault("new", 1) == 1  # never written through: it wakes the writer and waits
    assert {k: store.data[k] for k in expected} == expected
    assert "new" not in store.data and cache.pending == 1


# ----------------------------------------------------------------- memory stays bounded
@pytest.mark.parametrize("on_full", ["raise", "block"])
def test_pending_stays_bounded_while_many_threads_write_to_a_down_store(
    make_cache, on_full
) -> None:
    store = down_store()
    limit, writers = 20, 6
    cache = make_cache(store, max_pending=limit, on_full=on_full, block_timeout=0.02, **FAST_RETRY)
    acknowledged = [{} for _ in range(writers)]
    refused = [0] * writers
    peak = [0]
    stop = threading.Event()
    # The writers push until every one of them has met the limit (been refused), however
    # slowly they are scheduled, and for at least 0.3 s; the deadline only ends a hung run.
    busy_until = time.monotonic() + 0.3
    deadline = busy_until + 20

    def work(n: int) -> None:
        if n == writers:  # the monitor, which also says when to stop
            while not stop.is_set():
                peak[0] = max(peak[0], cache.pending)
                now = time.monotonic()
                if (now >= busy_until and all(refused)) or now >= deadline:
                    stop.set()
            return
        i = 0
        while not stop.is_set():
            key = f"t{n}-{i % 40}"
            i += 1
            try:
                cache[key] = i
            except BackpressureError:
                refused[n] += 1
                continue
            acknowledged[n][key] = i

    run_threads(work, [(n,) for n in range(writers + 1)])
    assert all(refused), f"some writers never met the limit within 20 s: refusals {refused}"
    assert peak[0] <= limit + writers, f"pending reached {peak[0]} with max_pending={limit}"
    assert cache.pending <= limit + writers
    assert store.data == {}
    store.fail = False
    wait_until(lambda: cache.pending == 0)
    expected = {k: v for acked in acknowledged for k, v in acked.items()}
    assert len(expected) >= limit
    assert store.data == expected  # every acknowledged write, newest value, nothing else


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_max_pending_is_a_value_error(cache_cls, value) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        cache_cls(MemoryStore(), max_pending=value)


@pytest.mark.parametrize("value", ["10", 10.0, True])
def test_max_pending_of_wrong_type_is_a_type_error(cache_cls, value) -> None:
    with pytest.raises(TypeError, match="max_pending"):
        cache_cls(MemoryStore(), max_pending=value)


@pytest.mark.parametrize("value", ["drop", "Block", None, "write_through"])
def test_unknown_on_full_policy_is_a_value_error(cache_cls, value) -> None:
    with pytest.raises(ValueError, match="on_full"):
        cache_cls(MemoryStore(), on_full=value)


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-1, ValueError), ("1", TypeError), (None, TypeError)]
)
def test_bad_block_timeout_is_rejected(cache_cls, value, error) -> None:
    with pytest.raises(error, match="block_timeout"):
        cache_cls(MemoryStore(), block_timeout=value)


def test_rejected_failure_options_start_no_threads(cache_cls) -> None:
    before = sum(t.name.startswith("lazycache-") for t in threading.enumerate())
    for kwargs in (
        {"max_pending": 0},
        {"on_full": "drop"},
        {"block_timeout": 0},
        {"retry_initial": 0},
        {"retry_max": -1},
        {"max_retries": -1},
        {"on_write_error": 1},
    ):
        with pytest.raises((ValueError, TypeError)):
            cache_cls(MemoryStore(), **kwargs)
    assert sum(t.name.startswith("lazycache-") for t in threading.enumerate()) == before


def test_without_max_pending_nothing_is_refused(make_cache) -> None:
    cache = make_cache(down_store(), on_full="raise", close_may_fail=True, **FAST_RETRY)
    fill(cache, 500)
    assert cache.pending == 500
