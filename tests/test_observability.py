"""Metrics on the queue: depth, age of the oldest pending write, the last flush, retries and failures."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import BlockingStore, FailingStore, RejectingStore, wait_until

from lazycache import FlushError, MemoryStore

FAST_RETRY = {"retry_initial": 0.01, "retry_max": 0.05}


def test_oldest_pending_age_grows_while_the_store_is_down_and_is_zero_when_nothing_is_pending(
    make_cache,
) -> None:
    store = FailingStore()
    cache = make_cache(store, **FAST_RETRY)
    assert cache.stats.oldest_pending_age == 0.0
    store.fail = True
    cache["a"] = 1
    wait_until(
        lambda: cache.stats.oldest_pending_age >= 0.1,
        message="the age of a stuck write did not grow",
    )
    first = cache.stats.oldest_pending_age
    time.sleep(0.05)
    assert cache.stats.oldest_pending_age > first
    cache["b"] = 2  # a younger write does not make the oldest one look younger
    assert cache.stats.oldest_pending_age >= first
    store.fail = False
    wait_until(lambda: cache.pending == 0)
    assert cache.stats.oldest_pending_age == 0.0


def test_oldest_pending_age_counts_from_the_write(make_cache) -> None:
    # A write made right after the cache was built, before its writer first ran.
    started = time.monotonic()
    cache = make_cache(quiet=True)
    cache["a"] = 1
    age = cache.stats.oldest_pending_age
    elapsed = time.monotonic() - started
    assert 0.0 <= age <= elapsed + 0.1, (
        f"oldest_pending_age is {age}s for a write made {elapsed:.3f}s ago"
    )


def test_oldest_pending_age_counts_a_batch_in_flight(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True)
    _ = cache.stats  # a first reading, so that the write below is stamped with a recent time
    cache["a"] = 1
    store.hold()
    thread = threading.Thread(target=lambda: cache.flush(), daemon=True)
    thread.start()
    try:
        store.wait_entered()
        time.sleep(0.05)
        stats = cache.stats
        assert stats.pending == 1  # in flight still counts as pending
        assert stats.oldest_pending_age >= 0.04
    finally:
        store.release.set()
    thread.join(5)
    assert cache.stats.oldest_pending_age == 0.0 and cache.pending == 0


class SlowStore(MemoryStore):
    """Takes `delay` seconds per write."""

    delay = 0.01

    def write(self, upserts, deletes):
        time.sleep(self.delay)
        return super().write(upserts, deletes)


def test_last_flush_duration_and_last_batch_size_describe_the_last_flush(make_cache) -> None:
    cache = make_cache(SlowStore(), quiet=True, batch_size=10)
    assert (cache.stats.last_flush_duration, cache.stats.last_batch_size) == (0.0, 0)
    for i in range(25):
        cache[i] = i
    result = cache.flush()
    assert result.batches == 3
    stats = cache.stats
    assert stats.last_batch_size == 5  # 10, 10, then 5
    assert (
        stats.last_flush_duration >= 3 * SlowStore.delay * 0.9
    )  # it includes the time in the store
    assert stats.last_flush_duration == result.duration
    cache.flush()  # nothing to write: the last flush that wrote something is still described
    assert cache.stats.last_flush_duration == result.duration and cache.stats.last_batch_size == 5


def test_retries_and_failed_writes_are_counted(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache["b"] = 2
    store.fail = True
    for _ in range(3):
        with pytest.raises(FlushError):
            cache.flush()
    stats = cache.stats
    assert stats.retries == 3
    assert stats.failed_writes == 6  # two entries per failed attempt
    assert stats.pending == 2 and stats.writes == 0 and stats.write_errors == 0
    store.fail = False
    cache.flush()
    stats = cache.stats
    assert (stats.writes, stats.flushes, stats.retries, stats.pending) == (2, 1, 3, 0)


def test_write_errors_counts_the_keys_in_the_error_path_now(make_cache) -> None:
    store = RejectingStore(poison={"x", "y"})
    cache = make_cache(store, quiet=True, on_write_error=lambda k, v, e: None)
    for key in ("x", "y", "z"):
        cache[key] = 1
    with pytest.raises(FlushError):
        cache.flush()
    assert cache.stats.write_errors == 2 == len(cache.write_errors)
    store.poison = set()
    cache["x"] = 2
    cache.flush()
    assert cache.stats.write_errors == 1 and list(cache.write_errors) == ["y"]
    assert "write_errors=1" in str(cache.stats)


def test_pending_is_the_queue_depth_while_the_store_is_down(make_cache) -> None:
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, close_may_fail=True, **FAST_RETRY)
    for i in range(30):
        cache[i % 20] = i
    wait_until(lambda: cache.stats.retries >= 2)
    stats = cache.stats
    assert stats.pending == 20 and stats.size == 20
    assert stats.failed_writes >= stats.retries >= 2  # every failed attempt counts its entries


def test_a_write_made_during_a_long_backoff_is_not_stamped_with_an_old_time(make_cache) -> None:
    # The writer backs off for a second at a time; the core's clock must keep time meanwhile,
    # or a write made late in the backoff would look as old as the backoff.
    store = FailingStore()
    store.fail = True
    cache = make_cache(
        store, write_interval=0.02, retry_initial=1.0, retry_max=1.0, close_may_fail=True
    )
    cache["old"] = 1
    wait_until(lambda: cache.stats.retries >= 1)
    time.sleep(0.6)  # well into the backoff
    cache.clear_dirty()  # forget "old": only the new write is pending
    cache["new"] = 2
    # The clock may lag by one write interval, not by the 0.6 s spent in the backoff.
    assert cache.stats.oldest_pending_age < 0.3
