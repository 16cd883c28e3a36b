"""The writer and pruner threads: they run on their own, wake early under pressure, and survive errors."""

from __future__ import annotations

import logging
import threading

from helpers import LONG, TIMEOUT, BlockingStore, FailingStore, wait_until

from lazycache import MemoryStore


def lazycache_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("lazycache-")]


def test_background_writer_writes_within_a_short_interval(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, write_interval=0.01)
    cache["a"] = 1
    del cache["a"]
    cache["b"] = 2
    wait_until(
        lambda: store.data == {"b": 2} and cache.pending == 0, message=f"store has {store.data}"
    )
    assert cache.stats.writes >= 2


def test_full_batch_wakes_the_writer_early(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, write_interval=LONG, prune_interval=LONG, batch_size=10)
    for i in range(9):
        cache[i] = i
    for i in range(9, 10):  # the 10th pending entry makes a full batch
        cache[i] = i
    wait_until(lambda: len(store.data) == 10, message="the writer was not woken by a full batch")
    wait_until(lambda: cache.pending == 0)


def test_writer_is_woken_again_by_each_full_batch(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, write_interval=LONG, prune_interval=LONG, batch_size=5)
    for round_ in range(3):
        for i in range(5):
            cache[(round_, i)] = i
        wait_until(
            lambda written=5 * (round_ + 1): len(store.data) == written,
            message=f"round {round_} not written",
        )


def test_pruner_evicts_loaded_entries_to_maxsize_when_woken_by_size_pressure(cache_cls) -> None:
    # The pruner's first run waits for the reads to end: a load that overlaps an eviction is
    # not cached (the core bumps its memory epoch on every removal), which would make the
    # number of entries to evict depend on how the two threads interleave.
    woken, reads_done = threading.Event(), threading.Event()

    class HeldPrune(cache_cls):
        def prune(self) -> int:
            woken.set()
            reads_done.wait(TIMEOUT)
            return super().prune()

    store = MemoryStore({i: i for i in range(100)})
    cache = HeldPrune(store, write_interval=LONG, prune_interval=LONG, maxsize=10)
    try:
        for i in range(100):  # clean entries read through from the store push the size past maxsize
            assert cache[i] == i
        reads_done.set()
        assert woken.wait(TIMEOUT), "size pressure did not wake the pruner"
        wait_until(lambda: len(cache) <= 10, message=f"size stayed at {len(cache)} > maxsize 10")
        assert cache.stats.evictions == 90
    finally:
        reads_done.set()
        cache.close()


def test_pruner_answers_size_pressure_right_after_a_large_eviction(cache_cls) -> None:
    # prune() returns how many entries it evicted: the pruner thread must not take that
    # count for a backoff in seconds, or it ignores size pressure for that long after.
    entered, release = threading.Event(), threading.Event()

    class HeldPrune(cache_cls):
        def prune(self) -> int:
            if not entered.is_set():  # the first run waits: it then evicts 40 entries at once
                entered.set()
                release.wait(TIMEOUT)
            return super().prune()

    store = MemoryStore({i: i for i in range(100)})
    cache = HeldPrune(store, write_interval=LONG, prune_interval=LONG, maxsize=10)
    try:
        for i in range(50):
            assert cache[i] == i
        assert entered.wait(TIMEOUT), "size pressure did not wake the pruner"
        release.set()
        wait_until(lambda: len(cache) <= 10, message=f"size stayed at {len(cache)}")
        for i in range(50, 100):
            assert cache[i] == i
        wait_until(
            lambda: len(cache) <= 10,
            message=f"size stayed at {len(cache)}: the pruner ignored size pressure after evicting",
        )
    finally:
        release.set()
        cache.close()


def test_pruner_evicts_to_maxsize_after_the_writer_catches_up(cache_cls) -> None:
    # The size pressure arrives while every entry is still pending (unevictable), so the
    # pruner, woken at once, can evict nothing. Once the writer has saved the entries they
    # are evictable, and the cache must get back to maxsize without waiting for the
    # pruner's (long) interval.
    class CountingPrune(cache_cls):
        prune_calls = 0

        def prune(self) -> int:
            self.prune_calls += 1
            return super().prune()

    store = BlockingStore()
    store.hold()  # the writer's first batch stays in flight until released
    cache = CountingPrune(store, write_interval=0.01, prune_interval=LONG, maxsize=10)
    try:
        for i in range(50):
            cache[i] = i
        store.wait_entered()
        wait_until(lambda: cache.prune_calls >= 1, message="size pressure did not wake the pruner")
        assert len(cache) == 50  # nothing was evictable yet
        store.release.set()
        wait_until(lambda: cache.pending == 0)
        wait_until(
            lambda: len(cache) <= 10,
            message=f"size stayed at {len(cache)} > maxsize 10 with nothing pending (prune ran {cache.prune_calls}x)",
        )
    finally:
        store.release.set()
        cache.close()


def test_writer_survives_a_non_recoverable_store_error_and_logs_the_key(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")
    store = FailingStore()
    store.error = lambda: ValueError("cannot encode this value")
    assert not store.is_recoverable(store.error())
    store.fail = True
    cache = make_cache(store, write_interval=0.01)
    poison = object()
    cache["poison-key"] = poison
    # The entry stops being pending once on_write_error (here: the log line) has returned.
    wait_until(
        lambda: cache.pending == 0 and any("'poison-key'" in r.getMessage() for r in caplog.records)
    )
    # an unrecoverable error is not retried: the entry took the error path, still readable
    assert len(store.write_calls) == 1
    assert cache["poison-key"] is poison
    assert "poison-key" in cache.write_errors and cache.pending == 0
    assert cache.stats.failed_writes == 1 and cache.stats.write_errors == 1
    record = next(r for r in caplog.records if "'poison-key'" in r.getMessage())
    assert record.levelno == logging.ERROR
    assert record.name == "lazycache.writer"
    assert record.lazycache_keys == ["poison-key"] and record.lazycache_count == 1
    assert not record.getMessage().startswith("lazycache")
    assert "cannot encode" in record.getMessage()
    assert {t.name for t in lazycache_threads()} >= {"lazycache-writer", "lazycache-pruner"}
    store.fail = False  # the store is fixed: later writes go through
    cache["later"] = 2
    wait_until(lambda: "later" in store.data, message="the writer stopped after the error")
    wait_until(lambda: cache.pending == 0)


def test_writer_survives_an_exception_raised_outside_the_store(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")

    class BadMergeStore(MemoryStore):
        def write(self, upserts, deletes):
            super().write(upserts, deletes)
            return {key: {"id": 1} for key, _ in upserts}

    def broken_merge(value, generated, overwrite):
        raise RuntimeError("merge is broken")

    store = BadMergeStore()
    cache = make_cache(store, write_interval=0.01, merge_generated=broken_merge)
    cache["a"] = {"x": 1}
    wait_until(lambda: "a" in store.data)
    wait_until(lambda: any("'a'" in r.getMessage() and r.exc_info for r in caplog.records))
    cache["b"] = {"x": 2}
    wait_until(
        lambda: "b" in store.data and cache.pending == 0,
        message="the writer stopped after the error",
    )
    assert cache["a"] == {"x": 1}


def test_pruner_survives_an_exception(cache_cls, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")

    class ExplodingPrune(cache_cls):
        explode = True

        def prune(self) -> int:
            if self.explode:
                self.explode = False
                raise RuntimeError("prune exploded")
            return super().prune()

    store = MemoryStore({i: i for i in range(50)})
    cache = ExplodingPrune(store, write_interval=LONG, prune_interval=0.01, maxsize=5)
    try:
        for i in range(50):
            assert cache[i] == i
        wait_until(lambda: not cache.explode)
        wait_until(lambda: len(cache) <= 5, message=f"size stayed at {len(cache)}")
        record = next(
            r for r in caplog.records if r.exc_info and "prune exploded" in str(r.exc_info[1])
        )
        assert record.levelno == logging.ERROR and record.name == "lazycache.pruner"
        assert "lazycache-pruner" in {t.name for t in lazycache_threads()}
    finally:
        cache.close()


def test_pruner_keeps_pruning_after_evicting_many(make_cache) -> None:
    """Each round of read-through loads is evicted back to maxsize, not only the first."""
    store = MemoryStore({i: i for i in range(10_000)})
    cache = make_cache(store, maxsize=1000, prune_interval=LONG, write_interval=LONG)
    for round_start in range(0, 10_000, 2000):
        for key in range(round_start, round_start + 2000):
            assert cache[key] == key  # loads clean entries; size pressure wakes the pruner
        wait_until(
            lambda: len(cache) <= 1000,
            message=f"the pruner stopped after round {round_start // 2000}: {len(cache)} entries",
        )
    assert all(cache[key] == key for key in range(0, 10_000, 7))  # evicted ones read through


def test_a_job_returning_a_non_backoff_is_reported_and_ignored(caplog) -> None:
    from lazycache._worker import Worker

    ran = threading.Event()
    runs: list[int] = []

    class Owner:
        def job(self) -> int:
            runs.append(1)
            if len(runs) >= 2:
                ran.set()
            return 500  # a count, not seconds: must not pause the worker

    owner = Owner()
    worker = Worker(owner.job, LONG, "lazycache-test-worker")  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="lazycache"):
        worker.start()
        worker.wake()
        wait_until(lambda: runs, message="the worker did not run")
        worker.wake()  # woken again at once: no 500 s pause
        assert ran.wait(5), "the worker treated 500 as a backoff"
        worker.stop(5)
    assert "not a backoff" in caplog.text
