"""The failure pipeline: retries with backoff, poison isolation by bisection, the error path.

What users of write-behind caches complain about (../shared/ANCHORS.md, "What their users
complain about"), and the tests that show lazycache's answer:

| #  | complaint                                              | answered by |
|----|--------------------------------------------------------|-------------|
| 1  | writes lost on shutdown                                | test_shutdown.py: test_close_of_a_healthy_cache_with_a_deadline_writes_everything, test_close_with_the_store_down_names_exactly_the_unwritten_keys_within_its_deadline, test_close_with_a_hung_store_returns_within_its_deadline, test_close_retries_until_the_store_comes_back_before_its_deadline, test_cache_left_open_with_the_store_down_names_the_lost_keys_at_exit, test_cache_left_open_with_a_hung_store_does_not_hang_interpreter_exit, test_close_with_an_invalid_timeout_raises_and_leaves_the_cache_open; test_lifecycle.py: test_open_cache_is_flushed_at_interpreter_exit, test_cache_dropped_without_close_is_flushed_when_garbage_collected |
| 2  | writes lost when a node crashes                        | needs the journal and PostgreSQL: see test_journal.py / test_postgres_faults.py. A forked child never writes (or loses) the parent's entries: test_fork.py |
| 3  | one bad record blocks the queue; flush() hangs         | here: test_poison_keys_are_isolated_and_everything_else_is_committed, test_one_bad_record_does_not_block_the_background_writer, test_unserializable_value_is_isolated_without_bisection, test_two_unserializable_values_are_isolated_one_call_each, test_poisoned_delete_reaches_on_write_error_as_missing |
| 4  | retries infinite, silent, not configurable; or stop    | here: test_recoverable_failure_is_retried_in_the_background_and_the_newest_value_wins, test_backoff_grows_between_attempts, test_wake_ups_during_a_backoff_cause_no_extra_attempts, test_retry_max_caps_the_backoff, test_a_store_that_stays_down_is_logged_at_doubling_attempts_then_once_back, test_max_retries_hands_the_entries_to_on_write_error_after_the_last_attempt, test_max_retries_in_the_background_reports_each_key_once, test_max_retries_zero_reports_at_the_first_failure, test_on_write_error_that_raises_is_logged_and_the_writer_carries_on, test_on_write_error_that_flushes_does_not_deadlock_the_writer, the validation tests |
| 5  | the queue grows without bound                          | test_backpressure.py: test_pending_stays_bounded_while_many_threads_write_to_a_down_store and the policy tests |
| 6  | a delete overtakes an earlier put                      | test_deletes.py: test_put_then_delete_ends_deleted, test_delete_then_put_ends_present; test_flush.py: test_delete_during_flush_is_not_lost, test_put_during_flush_of_a_delete_ends_present; here: test_a_change_made_while_a_put_is_retried_is_not_overtaken, test_order_is_kept_when_the_store_goes_down_while_a_poisoned_batch_is_split |
| 7  | cache and database disagree after a failed write       | here: test_poison_keys_are_isolated_and_everything_else_is_committed (value readable, listed in write_errors, user told), test_rewriting_a_poisoned_key_with_an_accepted_value_clears_its_error, test_a_newer_value_survives_the_failure_of_the_batch_it_replaced, test_on_write_error_may_write_a_corrected_value; test_backpressure.py: test_write_through_failure_raises_to_the_setter_and_caches_nothing; test_flush.py: test_newer_value_wins_over_a_failed_batch |
| 8  | entries evicted before they were written               | test_eviction.py: test_prune_never_evicts_pending_entries; here: test_pending_entries_are_not_evicted_while_the_store_is_down, test_poisoned_entry_is_still_in_memory_when_on_write_error_runs |
| 9  | no metrics on the queue (depth, oldest age, failures)  | test_observability.py (every test) |
| 10 | backpressure arrives as a surprise; async users left out | test_backpressure.py: the policy is chosen by the user (block with a timeout, raise with a clear message, write through), test_backpressure_error_names_the_limit_and_the_key; test_shutdown.py: test_setter_blocked_by_backpressure_is_released_when_the_cache_closes. No asyncio API exists yet: not covered |
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter

import pytest
from helpers import BlockingStore, FailingStore, RejectingStore, TimedStore, wait_until

from lazycache import MISSING, FlushError, MemoryStore, SerializationError
from lazycache.serializers import JSON

FAST_RETRY = {"retry_initial": 0.01, "retry_max": 0.05}


def recorder():
    """An on_write_error that records (key, value, exception) calls."""
    calls = []

    def on_write_error(key, value, exc):
        calls.append((key, value, exc))

    on_write_error.calls = calls  # type: ignore[attr-defined]
    return on_write_error


# ----------------------------------------------------------------- retries
def test_recoverable_failure_is_retried_in_the_background_and_the_newest_value_wins(
    make_cache,
) -> None:
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, **FAST_RETRY)
    expected = {f"k{i}": "v1" for i in range(10)}
    cache.update(expected)
    wait_until(
        lambda: cache.stats.retries >= 3, message="the writer did not retry in the background"
    )
    assert store.data == {}
    assert cache.pending == 10
    for i in range(5):  # written while the batch is being retried
        cache[f"k{i}"] = "v2"
        expected[f"k{i}"] = "v2"
    cache["new"] = "v2"
    expected["new"] = "v2"
    del cache["k9"]
    del expected["k9"]
    assert cache["k0"] == "v2"
    store.fail = False
    wait_until(lambda: cache.pending == 0, message="the writer gave up after the store came back")
    assert store.data == expected
    assert cache.write_errors == {}


def test_backoff_grows_between_attempts(make_cache) -> None:
    store = TimedStore()
    store.fail = True
    cache = make_cache(store, retry_initial=0.01, retry_max=10.0, close_may_fail=True)
    cache["a"] = 1
    wait_until(lambda: len(store.call_times) >= 7, message="the writer stopped retrying")
    gaps = store.gaps()[:6]
    # The backoff after the n-th failure is retry_initial * 2**(n-1), times a jitter in [0.5, 1].
    for n, gap in enumerate(gaps, start=1):
        floor = 0.5 * 0.01 * 2 ** (n - 1)
        assert gap >= floor * 0.9, (
            f"attempt {n + 1} came {gap:.4f}s after attempt {n}, before the backoff {floor}s"
        )
    assert cache.pending == 1 and store.data == {}
    # A gap's upper bound is the scheduler's (a thread may wake a second late on a loaded
    # machine): that the delay is no longer than the policy says is checked on the policy,
    # of a cache with the same options whose writer never runs on its own.
    policy = make_cache(quiet=True, retry_initial=0.01, retry_max=10.0)._batch_writer
    for failures in range(1, 12):
        policy.consecutive_failures = failures
        ceiling = min(10.0, 0.01 * 2 ** (failures - 1))
        assert 0.5 * ceiling <= policy.backoff() <= ceiling


def test_wake_ups_during_a_backoff_cause_no_extra_attempts(make_cache) -> None:
    store = TimedStore()
    store.fail = True
    # batch_size=1: every new key fills a batch and wakes the writer.
    cache = make_cache(store, batch_size=1, retry_initial=0.2, retry_max=0.2, close_may_fail=True)
    cache["first"] = 0
    wait_until(lambda: len(store.call_times) >= 2)  # now in a steady backoff of 0.1-0.2 s
    before = len(store.call_times)
    started = time.monotonic()
    sets = 0
    while time.monotonic() - started < 0.6:
        cache[f"k{sets}"] = sets
        sets += 1
        time.sleep(0.001)
    window = time.monotonic() - started
    attempts = len(store.call_times) - before
    assert sets > 50
    assert attempts <= window / 0.1 + 2, (
        f"{attempts} attempts in {window:.2f}s with a backoff of at least 0.1s"
    )


def test_retry_max_caps_the_backoff(make_cache) -> None:
    store = TimedStore()
    store.fail = True
    cache = make_cache(store, retry_initial=0.01, retry_max=0.02, close_may_fail=True)
    cache["a"] = 1
    # Uncapped, the 20th attempt would come 0.01 * 2**18 s (43 minutes) after the 19th.
    wait_until(
        lambda: len(store.call_times) >= 20, message="the backoff was not capped at retry_max"
    )
    assert cache.stats.retries >= 19


def test_a_store_that_stays_down_is_logged_at_doubling_attempts_then_once_back(
    make_cache, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="lazycache")
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, close_may_fail=True, **FAST_RETRY)
    cache["the-key"] = 1
    wait_until(lambda: cache.stats.retries >= 9)
    writer = [r for r in caplog.records if r.name == "lazycache.writer"]
    attempts = {}
    for record in writer:
        match = re.search(r"attempt (\d+)", record.getMessage())
        if match:
            attempts.setdefault(int(match.group(1)), record)
    # Every attempt is logged, naming the key; only the 1st, 2nd, 4th, 8th... at WARNING.
    for attempt in range(1, 10):
        record = attempts[attempt]
        assert "'the-key'" in record.getMessage() and "store is down" in record.getMessage()
        assert record.lazycache_keys == ["the-key"]
        summary = attempt in (1, 2, 4, 8)
        assert record.levelno == (logging.WARNING if summary else logging.DEBUG), attempt
    store.fail = False
    # The writer logs the recovery just after it commits the batch (pending is 0 before it).
    wait_until(lambda: any("store is back" in r.getMessage() for r in caplog.records))
    assert cache.pending == 0
    back = [r for r in caplog.records if "store is back" in r.getMessage()]
    assert len(back) == 1 and back[0].levelno == logging.WARNING
    assert re.search(
        r"back after \d+\.\ds and \d+ failed attempts; wrote 1 entries", back[0].getMessage()
    )
    cache["later"] = 2
    cache.flush()
    assert len([r for r in caplog.records if "store is back" in r.getMessage()]) == 1


def test_max_retries_hands_the_entries_to_on_write_error_after_the_last_attempt(make_cache) -> None:
    errors = recorder()
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, quiet=True, max_retries=2, on_write_error=errors)
    cache["a"] = 1
    cache["b"] = 2
    for _attempt in (1, 2):
        with pytest.raises(FlushError) as info:
            cache.flush()
        assert sorted(info.value.result.failed_keys) == ["a", "b"]
        assert info.value.result.poisoned_keys == ()
        assert errors.calls == [] and cache.pending == 2
    with pytest.raises(FlushError) as info:  # the third consecutive failure: retries are exhausted
        cache.flush()
    assert sorted(info.value.result.poisoned_keys) == ["a", "b"]
    assert info.value.result.failed_keys == ()
    assert len(store.write_calls) == 3
    assert sorted((k, v) for k, v, _ in errors.calls) == [("a", 1), ("b", 2)]
    assert all(isinstance(exc, ConnectionError) for _, _, exc in errors.calls)
    assert cache.pending == 0
    assert (cache["a"], cache["b"]) == (1, 2)  # still readable
    assert set(cache.write_errors) == {"a", "b"}
    stats = cache.stats
    assert (stats.retries, stats.write_errors, stats.failed_writes) == (2, 2, 6)
    store.fail = False
    assert cache.flush().written == 0  # given up: not retried behind the user's back
    assert len(store.write_calls) == 3


def test_max_retries_in_the_background_reports_each_key_once(make_cache) -> None:
    errors = recorder()
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, max_retries=2, on_write_error=errors, **FAST_RETRY)
    cache.update({"a": 1, "b": 2, "c": 3})
    # The entries stop being pending once on_write_error has returned for each.
    wait_until(
        lambda: len(errors.calls) >= 3 and cache.pending == 0, message="retries never stopped"
    )
    time.sleep(0.1)  # no second report, no further attempt
    assert sorted((k, v) for k, v, _ in errors.calls) == [("a", 1), ("b", 2), ("c", 3)]
    calls = len(store.write_calls)
    assert 3 <= calls
    time.sleep(0.1)
    assert len(store.write_calls) == calls
    assert cache.pending == 0 and set(cache.write_errors) == {"a", "b", "c"}
    assert store.data == {}


def test_max_retries_zero_reports_at_the_first_failure(make_cache) -> None:
    errors = recorder()
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, quiet=True, max_retries=0, on_write_error=errors)
    cache["a"] = 1
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == ("a",)
    assert [(k, v) for k, v, _ in errors.calls] == [("a", 1)]
    assert cache.stats.retries == 0 and len(store.write_calls) == 1


def test_a_change_made_while_a_put_is_retried_is_not_overtaken(make_cache) -> None:
    store = FailingStore({"deleted": "old", "revived": "old"})
    store.fail = True
    cache = make_cache(store, **FAST_RETRY)
    cache["deleted"] = "new"
    del cache["revived"]
    wait_until(lambda: cache.stats.retries >= 2)
    del cache["deleted"]  # the delete comes after the failing put, and must win
    cache["revived"] = "new"  # the put comes after the failing delete, and must win
    wait_until(lambda: cache.stats.retries >= 4)
    store.fail = False
    wait_until(lambda: cache.pending == 0)
    assert store.data == {"revived": "new"}
    assert "deleted" not in cache and cache["revived"] == "new"


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["retry_initial", "retry_max"])
@pytest.mark.parametrize("value", [0, -1, 0.0, float("nan")])
def test_non_positive_retry_delay_is_a_value_error_naming_it(cache_cls, name, value) -> None:
    with pytest.raises(ValueError, match=name):
        cache_cls(MemoryStore(), **{name: value})


@pytest.mark.parametrize("name", ["retry_initial", "retry_max"])
@pytest.mark.parametrize("value", ["1", None, True, [1]])
def test_retry_delay_of_wrong_type_is_a_type_error_naming_it(cache_cls, name, value) -> None:
    with pytest.raises(TypeError, match=name):
        cache_cls(MemoryStore(), **{name: value})


def test_retry_max_below_retry_initial_is_a_value_error(cache_cls) -> None:
    with pytest.raises(ValueError, match="retry_max"):
        cache_cls(MemoryStore(), retry_initial=2, retry_max=1)


def test_negative_max_retries_is_a_value_error_naming_it(cache_cls) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        cache_cls(MemoryStore(), max_retries=-1)


@pytest.mark.parametrize("value", ["3", 1.5, True])
def test_max_retries_of_wrong_type_is_a_type_error_naming_it(cache_cls, value) -> None:
    # The rule of test_validation.py: bad values are ValueError, bad types TypeError.
    with pytest.raises(TypeError, match="max_retries"):
        cache_cls(MemoryStore(), max_retries=value)


def test_on_write_error_must_be_callable(cache_cls) -> None:
    with pytest.raises(TypeError, match="on_write_error"):
        cache_cls(MemoryStore(), on_write_error="log it")


def test_valid_retry_options_are_accepted(make_cache) -> None:
    cache = make_cache(retry_initial=1, retry_max=1, max_retries=0)
    assert cache.stats.retries == 0
    assert make_cache(max_retries=None, retry_initial=0.001, retry_max=3600).pending == 0


# ----------------------------------------------------------------- poison isolation
POISON = {"k13", "k50", "k87"}


def test_poison_keys_are_isolated_and_everything_else_is_committed(make_cache) -> None:
    errors = recorder()
    store = RejectingStore(poison=POISON)
    cache = make_cache(store, quiet=True, on_write_error=errors)
    for i in range(100):
        cache[f"k{i}"] = i
    with pytest.raises(FlushError) as info:
        cache.flush()  # returns: the bad records do not make it hang
    result = info.value.result
    assert sorted(result.poisoned_keys) == sorted(POISON) and len(result.poisoned_keys) == 3
    assert result.failed_keys == ()
    assert result.written == 97
    assert store.data == {f"k{i}": i for i in range(100) if f"k{i}" not in POISON}
    committed = Counter(store.committed_keys)
    assert set(committed) == set(store.data) and set(committed.values()) == {
        1
    }  # each good key once
    # bisection: at most one failing node per poison key per level, two calls per failing node
    assert len(store.write_calls) <= 1 + 2 * 3 * math.ceil(math.log2(100))
    # the error path: told once per key, the value still readable, not pending, listed, counted
    assert sorted(k for k, _, _ in errors.calls) == sorted(POISON)
    for key, value, exc in errors.calls:
        assert value == int(key[1:])
        assert isinstance(exc, ValueError) and key in str(exc)
        assert cache[key] == value
    assert cache.pending == 0
    assert set(cache.write_errors) == POISON
    assert all(isinstance(exc, ValueError) for exc in cache.write_errors.values())
    stats = cache.stats
    assert stats.write_errors == 3
    assert stats.failed_writes >= 3
    assert stats.writes == 97
    calls = len(store.write_calls)
    assert cache.flush().ok  # not retried
    assert len(store.write_calls) == calls


def test_one_bad_record_does_not_block_the_background_writer(make_cache) -> None:
    errors = recorder()
    store = RejectingStore(poison={"bad"})
    cache = make_cache(store, on_write_error=errors)
    expected = {}
    for i in range(20):
        cache[f"before{i}"] = i
        expected[f"before{i}"] = i
    cache["bad"] = "x"
    for i in range(20):
        cache[f"after{i}"] = i
        expected[f"after{i}"] = i
    wait_until(
        lambda: cache.pending == 0, message=f"{cache.pending} entries stuck behind a bad record"
    )
    assert store.data == expected
    assert [k for k, _, _ in errors.calls] == ["bad"]
    cache["later"] = 1
    wait_until(lambda: "later" in store.data, message="the writer stopped after a bad record")
    assert cache.flush().ok
    assert cache["bad"] == "x"


def test_rewriting_a_poisoned_key_with_an_accepted_value_clears_its_error(make_cache) -> None:
    errors = recorder()
    store = RejectingStore()
    store.poison_values = {"bad"}  # a CHECK constraint on the value
    cache = make_cache(store, quiet=True, on_write_error=errors)
    cache["a"] = "bad"
    cache["b"] = "ok"
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == ("a",)
    assert cache["a"] == "bad" and "a" in cache.write_errors
    cache["a"] = "still bad"
    store.poison_values.add("still bad")
    with pytest.raises(FlushError):
        cache.flush()
    assert [v for _, v, _ in errors.calls] == ["bad", "still bad"]  # told again for the new value
    cache["a"] = "good"
    assert cache.flush().ok
    assert store.data == {"a": "good", "b": "ok"}
    assert cache.write_errors == {}
    assert cache.stats.write_errors == 0


class JsonStore(FailingStore):
    """Encodes every value with the JSON serializer before committing the batch (all or nothing)."""

    def write(self, upserts, deletes):
        try:
            encoded = [(key, JSON.encode(key, value)) for key, value in upserts]
        except SerializationError:
            self.write_calls.append((list(upserts), list(deletes)))
            raise
        return super().write(encoded, deletes)


def test_unserializable_value_is_isolated_without_bisection(make_cache) -> None:
    errors = recorder()
    store = JsonStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    unserializable = object()
    for i in range(50):
        cache[f"k{i}"] = unserializable if i == 7 else i
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == ("k7",)
    assert info.value.result.written == 49
    assert len(store.write_calls) == 2  # the failing batch, then the rest in one batch
    assert len(store.write_calls[1][0]) == 49
    assert store.data == {f"k{i}": str(i) for i in range(50) if i != 7}
    [(key, value, exc)] = errors.calls
    assert key == "k7" and value is unserializable
    assert (
        isinstance(exc, SerializationError) and exc.key == "k7" and isinstance(exc.cause, TypeError)
    )
    assert cache["k7"] is unserializable and cache.pending == 0
    assert list(cache.write_errors) == ["k7"]


def test_two_unserializable_values_are_isolated_one_call_each(make_cache) -> None:
    errors = recorder()
    store = JsonStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    for i in range(30):
        cache[f"k{i}"] = {i} if i in (3, 20) else i  # a set is not JSON
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert sorted(info.value.result.poisoned_keys) == ["k20", "k3"]
    assert len(store.write_calls) == 3
    assert len(store.data) == 28
    assert sorted(k for k, _, _ in errors.calls) == ["k20", "k3"]


def test_on_write_error_that_raises_is_logged_and_the_writer_carries_on(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")
    seen = []

    def broken_callback(key, value, exc):
        seen.append(key)
        raise RuntimeError("the dead-letter queue is down")

    store = RejectingStore(poison={"bad"})
    cache = make_cache(store, on_write_error=broken_callback)
    cache["good1"] = 1
    cache["bad"] = 2
    cache["good2"] = 3
    wait_until(lambda: cache.pending == 0 and seen == ["bad"])
    wait_until(
        lambda: any(
            "on_write_error raised" in r.getMessage() and "'bad'" in r.getMessage()
            for r in caplog.records
        )
    )
    record = next(r for r in caplog.records if "on_write_error raised" in r.getMessage())
    assert record.levelno >= logging.ERROR and record.exc_info is not None
    assert "dead-letter queue is down" in str(record.exc_info[1])
    assert store.data == {"good1": 1, "good2": 3}
    assert "bad" in cache.write_errors and cache["bad"] == 2
    cache["later"] = 4
    wait_until(
        lambda: "later" in store.data, message="the writer stopped after on_write_error raised"
    )


def test_on_write_error_that_flushes_does_not_deadlock_the_writer(make_cache) -> None:
    # The callback runs in the writer thread, inside a flush: a flush() from it (say, "save
    # everything else before alerting") may be refused, but must not hang the writer for good.
    store = RejectingStore(poison={"bad"})
    cache = None

    def flush_then_alert(key, value, exc):
        try:
            cache.flush()
        except Exception:
            pass

    cache = make_cache(store, on_write_error=flush_then_alert, close_may_fail=True)
    try:
        cache["bad"] = 1
        cache["later"] = 2
        wait_until(
            lambda: "later" in store.data and cache.pending == 0,
            message="the writer hung in a flush() called from on_write_error",
        )
    finally:
        try:
            cache.close(timeout=0.5)  # with a deadline: a hung writer must not hang the test too
        except Exception:
            pass


def test_poisoned_delete_reaches_on_write_error_as_missing(make_cache) -> None:
    errors = recorder()
    store = RejectingStore({"referenced": 1, "free": 2, "kept": 3})
    store.poison_deletes = {"referenced"}  # like a foreign key still pointing at the row
    cache = make_cache(store, quiet=True, on_write_error=errors)
    del cache["referenced"]
    del cache["free"]
    cache["new"] = 4
    with pytest.raises(FlushError) as info:
        cache.flush()
    result = info.value.result
    assert result.poisoned_keys == ("referenced",)
    assert (result.written, result.deleted) == (1, 1)
    [(key, value, exc)] = errors.calls
    assert key == "referenced" and value is MISSING and isinstance(exc, ValueError)
    assert store.data == {"referenced": 1, "kept": 3, "new": 4}
    assert cache.pending == 0 and list(cache.write_errors) == ["referenced"]


def test_default_on_write_error_says_a_delete_was_rejected(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")
    store = RejectingStore({"referenced": 1})
    store.poison_deletes = {"referenced"}
    cache = make_cache(store, quiet=True)
    del cache["referenced"]
    with pytest.raises(FlushError):
        cache.flush()
    [record] = [r for r in caplog.records if "'referenced'" in r.getMessage()]
    assert record.levelno == logging.ERROR and "delete" in record.getMessage()


def test_order_is_kept_when_the_store_goes_down_while_a_poisoned_batch_is_split(make_cache) -> None:
    # The store rejects a batch for a bad record, then loses its connection while the writer
    # splits the batch: the entries must go back in their order (oldest first), not halves swapped.
    class FlakyRejectingStore(RejectingStore):
        drop_connection = True

        def write(self, upserts, deletes):
            try:
                return super().write(upserts, deletes)
            except ValueError:
                if self.drop_connection:  # the connection drops right after the first rejection
                    self.drop_connection = False
                    self.fail = True
                raise

    store = FlakyRejectingStore(poison={"k3"})
    cache = make_cache(store, quiet=True)
    for i in range(4):
        cache[f"k{i}"] = i
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert sorted(info.value.result.failed_keys) == ["k0", "k1", "k2", "k3"]
    store.fail = False
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == ("k3",)
    assert store.committed_keys == ["k0", "k1", "k2"], "entries were committed out of their order"


def test_a_newer_value_survives_the_failure_of_the_batch_it_replaced(make_cache) -> None:
    # The batch holding a=1 fails for good while a=2 is set: the user is told about 1, 2 is written.
    errors = recorder()
    store = BlockingStore()
    cache = make_cache(store, quiet=True, max_retries=0, on_write_error=errors)
    cache["a"] = 1
    store.fail = True
    store.hold()
    outcome = []

    def flush() -> None:
        try:
            cache.flush()
        except FlushError as exc:
            outcome.append(exc.result)

    thread = threading.Thread(target=flush, daemon=True)
    thread.start()
    try:
        store.wait_entered()
        cache["a"] = 2
    finally:
        store.release.set()
    thread.join(5)
    assert outcome and outcome[0].poisoned_keys == ("a",)
    assert [(k, v) for k, v, _ in errors.calls] == [("a", 1)]
    assert cache["a"] == 2 and cache.pending == 1
    store.fail = False
    assert cache.flush().written == 1
    assert store.data == {"a": 2}
    assert cache.write_errors == {}


def test_on_write_error_may_write_a_corrected_value(make_cache) -> None:
    store = RejectingStore()
    store.poison_values = {"bad"}
    cache = None

    def repair(key, value, exc):
        cache[key] = "repaired"

    cache = make_cache(store, on_write_error=repair)
    cache["a"] = "bad"
    cache["b"] = "ok"
    wait_until(lambda: store.data == {"a": "repaired", "b": "ok"} and cache.pending == 0)
    assert cache["a"] == "repaired"
    assert cache.write_errors == {}


# ----------------------------------------------------------------- nothing unwritten is evicted
def test_pending_entries_are_not_evicted_while_the_store_is_down(make_cache) -> None:
    store = FailingStore()
    store.fail = True
    store.fail_loads = True  # memory is the only place these values are
    cache = make_cache(store, maxsize=5, **FAST_RETRY)
    for i in range(30):
        cache[i] = i
    wait_until(lambda: cache.stats.retries >= 3)
    cache.prune()
    assert len(cache) == 30
    assert all(cache[i] == i for i in range(30))
    store.fail = store.fail_loads = False
    wait_until(lambda: cache.pending == 0)
    assert store.data == {i: i for i in range(30)}
    wait_until(lambda: len(cache) <= 5, message="written entries were not evicted down to maxsize")


def test_poisoned_entry_is_still_in_memory_when_on_write_error_runs(make_cache) -> None:
    seen = {}
    store = RejectingStore(poison={"p1", "p2"})
    cache = None

    def on_write_error(key, value, exc):
        store.fail_loads = True  # a read now can only be answered from memory
        try:
            seen[key] = cache.get(key, "evicted")
        except ConnectionError:
            seen[key] = "evicted"
        finally:
            store.fail_loads = False

    cache = make_cache(store, maxsize=1, batch_size=5, on_write_error=on_write_error)
    for i in range(20):
        cache[f"k{i}"] = i
        if i in (4, 12):
            cache[f"p{1 if i == 4 else 2}"] = f"value-{i}"
    wait_until(lambda: len(seen) == 2 and cache.pending == 0)
    assert seen == {"p1": "value-4", "p2": "value-12"}


def test_readers_and_writers_are_not_blocked_by_a_hung_write(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store)
    store.hold()
    cache["a"] = 1
    store.wait_entered()  # the writer thread is stuck in the store
    done = threading.Event()

    def use_the_cache() -> None:
        cache["b"] = 2
        assert cache["a"] == 1 and cache["b"] == 2
        del cache["b"]
        done.set()

    thread = threading.Thread(target=use_the_cache, daemon=True)
    thread.start()
    try:
        assert done.wait(5), "a reader or writer waited for the hung store"
    finally:
        store.release.set()
    thread.join(5)
    wait_until(lambda: cache.pending == 0)
    assert store.data == {"a": 1}
