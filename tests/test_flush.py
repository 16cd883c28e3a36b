"""Flushing: batches, results, failures, and changes made while a batch is being written."""

from __future__ import annotations

import threading

import pytest
from helpers import BlockingStore, FailingStore

from lazycache import FlushError, FlushResult


def flush_in_thread(cache):
    """Starts cache.flush() in a thread; returns (thread, outcome list with the result or error)."""
    outcome = []

    def run() -> None:
        try:
            outcome.append(cache.flush())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_flush_result_counts_upserts_deletes_and_batches(make_cache) -> None:
    store = FailingStore({"gone": 0})
    cache = make_cache(store, quiet=True, batch_size=2)
    for i in range(4):
        cache[i] = i
    cache.discard("gone")
    result = cache.flush()
    assert isinstance(result, FlushResult)
    assert (result.written, result.deleted, result.batches) == (4, 1, 3)
    assert result.failed_keys == () and result.errors == () and result.ok
    assert result.duration >= 0
    assert [len(u) + len(d) for u, d in store.write_calls] == [2, 2, 1]


def test_flush_writes_oldest_changes_first(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True, batch_size=2)
    for key in "abcde":
        cache[key] = key
    cache.flush()
    assert [k for k, _ in store.write_calls[0][0]] == ["a", "b"]
    assert [k for k, _ in store.write_calls[2][0]] == ["e"]


def test_flush_with_nothing_pending_writes_nothing(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    result = cache.flush()
    assert (result.written, result.deleted, result.batches) == (0, 0, 0)
    assert store.write_calls == []


def test_failed_flush_raises_flush_error_and_keeps_entries_pending(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache["b"] = 2
    store.fail = True
    with pytest.raises(FlushError) as info:
        cache.flush()
    result = info.value.result
    assert set(result.failed_keys) == {"a", "b"}
    assert not result.ok
    assert isinstance(result.errors[0], ConnectionError)
    assert "'a'" in str(info.value) and "2 entries still pending" in str(info.value)
    assert cache.pending == 2
    assert cache.stats.failed_writes == 2
    store.fail = False
    assert cache.flush().written == 2
    assert store.data == {"a": 1, "b": 2}
    assert cache.pending == 0


def test_failed_batch_stops_the_flush_and_later_batches_stay_pending(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True, batch_size=2)
    for i in range(6):
        cache[i] = i
    cache.flush()
    for i in range(6):
        cache[i] = -i
    store.fail = True
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert set(info.value.result.failed_keys) == set(range(6))
    assert cache.pending == 6
    store.fail = False
    cache.flush()
    assert store.data == {i: -i for i in range(6)}


def test_write_during_flush_is_not_lost(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = "v1"
    cache["b"] = "v1"
    store.hold()
    thread, outcome = flush_in_thread(cache)
    store.wait_entered()
    cache["a"] = "v2"  # the batch holding a=v1 is being written right now
    store.release.set()
    thread.join(5)
    assert isinstance(outcome[0], FlushResult)
    assert store.data == {"a": "v1", "b": "v1"}
    assert cache.pending == 1
    assert cache["a"] == "v2"
    cache.flush()
    assert store.data == {"a": "v2", "b": "v1"}
    assert cache.pending == 0


def test_pending_counts_an_entry_changed_in_flight_once(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = "v1"
    cache["b"] = "v1"
    store.hold()
    thread, _ = flush_in_thread(cache)
    store.wait_entered()
    try:
        cache["a"] = "v2"
        # two entries have changes that have not reached the store: a (v2) and b (v1)
        assert cache.pending == 2
        assert cache.stats.pending == 2
    finally:
        store.release.set()
        thread.join(5)
    assert cache.pending == 1


def test_delete_during_flush_is_not_lost(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = "v1"
    store.hold()
    thread, _ = flush_in_thread(cache)
    store.wait_entered()
    del cache["a"]
    store.release.set()
    thread.join(5)
    assert "a" not in cache
    assert store.data == {"a": "v1"}
    cache.flush()
    assert store.data == {}
    assert len(cache) == 0 and cache.pending == 0


def test_put_during_flush_of_a_delete_ends_present(make_cache) -> None:
    store = BlockingStore({"a": "old"})
    cache = make_cache(store, quiet=True)
    cache.discard("a")
    store.hold()
    thread, _ = flush_in_thread(cache)
    store.wait_entered()
    cache["a"] = "new"
    store.release.set()
    thread.join(5)
    assert cache["a"] == "new"
    cache.flush()
    assert store.data == {"a": "new"}


def test_failed_batch_requeues_its_entries(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache["b"] = 2
    store.fail = True
    store.hold()
    thread, outcome = flush_in_thread(cache)
    store.wait_entered()
    store.release.set()
    thread.join(5)
    assert isinstance(outcome[0], FlushError)
    assert cache.pending == 2
    store.fail = False
    cache.flush()
    assert store.data == {"a": 1, "b": 2}


def test_newer_value_wins_over_a_failed_batch(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = "v1"
    cache["b"] = "v1"
    store.fail = True
    store.hold()
    thread, outcome = flush_in_thread(cache)
    store.wait_entered()
    cache["a"] = "v2"  # replaces the value of the batch that is about to fail
    store.release.set()
    thread.join(5)
    assert isinstance(outcome[0], FlushError)
    assert cache.pending == 2  # a (newer) and b (requeued), each once
    store.fail = False
    result = cache.flush()
    assert result.written == 2
    assert store.data == {"a": "v2", "b": "v1"}
    assert [k for k, _ in store.write_calls[-1][0]].count("a") == 1


def test_newer_value_set_after_a_failed_flush_wins(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    store.fail = True
    with pytest.raises(FlushError):
        cache.flush()
    cache["a"] = 2
    assert cache.pending == 1
    store.fail = False
    cache.flush()
    assert store.data == {"a": 2}


def test_flush_error_message_is_bounded_for_many_keys(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    for i in range(50):
        cache[i] = i
    store.fail = True
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert len(info.value.result.failed_keys) == 50
    assert "more" in str(info.value)
    store.fail = False


class PoisonStore(FailingStore):
    """Fails every batch that contains one of the keys in `poison`."""

    def __init__(self) -> None:
        super().__init__()
        self.poison: set = set()

    def write(self, upserts, deletes):
        keys = {k for k, _ in upserts} | set(deletes)
        if keys & self.poison:
            self.write_calls.append((list(upserts), list(deletes)))
            raise ConnectionError(f"poisoned batch: {sorted(keys & self.poison)}")
        return super().write(upserts, deletes)


def test_flush_order_survives_requeue_and_queue_growth(make_cache) -> None:
    store = PoisonStore()
    # No retry in the background: an entry changed while a retry has it in flight is
    # queued again at the back, which is right, but not the order this test checks.
    cache = make_cache(store, quiet=True, batch_size=10, retry_initial=3600, retry_max=3600)
    for i in range(50):
        cache[i] = "v1"
    store.poison = {20}
    with pytest.raises(FlushError):
        cache.flush()  # 0-19 written, 20-29 requeued at the front, 30-49 behind them
    for i in range(50, 300):  # the queue grows while its head has moved
        cache[i] = "v1"
    for i in range(25, 35):  # changes to queued keys keep their place
        cache[i] = "v2"
    store.poison = set()
    store.write_calls.clear()
    cache.flush()
    order = [
        k for upserts, deletes in store.write_calls for k in [k for k, _ in upserts] + list(deletes)
    ]
    assert order == list(range(20, 300))
    expected = {i: "v1" for i in range(300)}
    expected.update({i: "v2" for i in range(25, 35)})
    assert store.data == expected
    assert cache.pending == 0


def test_repeated_failures_keep_order_and_lose_nothing(make_cache) -> None:
    store = PoisonStore()
    cache = make_cache(store, quiet=True, batch_size=7)
    expected = {}
    for round_ in range(12):
        for i in range(round_ * 20, round_ * 20 + 20):
            cache[i] = round_
            expected[i] = round_
        store.poison = {round_ * 20 + 3} if round_ % 3 else set()
        try:
            cache.flush()
        except FlushError:
            pass
        for i in range(0, round_ * 20, 9):  # rewrite some old keys, written or not
            cache[i] = -round_
            expected[i] = -round_
    store.poison = set()
    cache.flush()
    assert store.data == expected
    assert cache.pending == 0
