"""os.fork(): the child gets a usable cache with its own threads; the parent alone writes what was pending.

The processes share one store through a file (SharedLogStore: one JSON line per committed
write, with the writer's pid), so the test sees who wrote what. The child always leaves by
os._exit (run_in_forked_child), never returning into pytest.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
from helpers import SharedLogStore, run_in_forked_child, wait_until

from lazycache import MemoryStore

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform"),
    # Python 3.12+ warns that forking a multi-threaded process may deadlock: that is what is tested here.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

FAST_RETRY = {"retry_initial": 0.01, "retry_max": 0.05}


def keys_written(log, pid):
    return [key for line in log if line["pid"] == pid for key, _ in line["upserts"]] + [
        key for line in log if line["pid"] == pid for key in line["deletes"]
    ]


def test_child_starts_with_nothing_pending_and_its_own_writer_writes_its_writes(
    make_cache, tmp_path
) -> None:
    store = SharedLogStore(tmp_path / "writes.jsonl")
    store.fail = True  # the store is down at the fork: the parent's writes are waiting
    cache = make_cache(store, **FAST_RETRY)
    for i in range(10):
        cache[f"p{i}"] = i
    wait_until(lambda: cache.stats.retries >= 1)
    parent = os.getpid()

    def child():
        report = {"pending": cache.pending, "stats_pending": cache.stats.pending, "p3": cache["p3"]}
        report["size"] = len(cache)
        store.fail = False  # the child's view of the store is back
        cache["child-key"] = "c"
        wait_until(lambda: cache.pending == 0 and "child-key" in store.data)
        report["threads"] = sorted(t.name for t in threading.enumerate())
        report["store"] = sorted(store.data)
        report["pid"] = os.getpid()
        return report

    report = run_in_forked_child(child)
    assert report["pending"] == 0 and report["stats_pending"] == 0  # the parent writes those
    assert report["p3"] == 3 and report["size"] == 10  # reads still work
    assert "lazycache-writer" in report["threads"] and "lazycache-pruner" in report["threads"]
    assert report["store"] == ["child-key"]  # written by the child's own writer thread
    # the parent: its entries still pending, written once, by itself
    assert cache.pending == 10
    store.fail = False
    wait_until(lambda: cache.pending == 0)
    log = store.log()
    assert keys_written(log, report["pid"]) == ["child-key"]
    assert Counter(keys_written(log, parent)) == Counter(f"p{i}" for i in range(10))
    assert {line["pid"] for line in log} == {parent, report["pid"]}
    assert "child-key" not in cache


def test_child_does_not_rewrite_a_batch_in_flight_at_the_fork(make_cache, tmp_path) -> None:
    store = SharedLogStore(tmp_path / "writes.jsonl")
    cache = make_cache(store)
    store.hold()
    cache["p0"] = 0
    store.wait_entered()  # the parent's writer is inside the store with p0
    for i in range(1, 5):
        cache[f"p{i}"] = i  # queued behind it
    parent = os.getpid()

    def child():
        report = {"pending": cache.pending, "p0": cache["p0"], "pid": os.getpid()}
        cache["child-key"] = "c"
        wait_until(lambda: cache.pending == 0 and "child-key" in store.data)
        return report

    try:
        report = run_in_forked_child(child)
    finally:
        store.release.set()
    assert report["pending"] == 0 and report["p0"] == 0
    wait_until(lambda: cache.pending == 0)
    log = store.log()
    assert keys_written(log, report["pid"]) == ["child-key"]
    assert Counter(keys_written(log, parent)) == Counter(f"p{i}" for i in range(5))
    assert store.data == {f"p{i}": i for i in range(5)}


def test_child_that_closes_its_cache_flushes_only_its_own_writes(make_cache, tmp_path) -> None:
    store = SharedLogStore(tmp_path / "writes.jsonl", {"stored": "s"})
    cache = make_cache(store, quiet=True)
    cache["p"] = 1
    del cache["stored"]
    parent = os.getpid()

    def child():
        cache["c1"] = 1
        del cache["c1"]
        cache["c2"] = 2
        result = cache.close()
        return {
            "written": result.written,
            "deleted": result.deleted,
            "pid": os.getpid(),
            "closed": cache.closed,
        }

    report = run_in_forked_child(child)
    assert report["closed"] and (report["written"], report["deleted"]) == (1, 1)
    assert not cache.closed and cache.pending == 2
    cache.flush()
    log = store.log()
    assert sorted(keys_written(log, report["pid"])) == ["c1", "c2"]
    assert sorted(keys_written(log, parent)) == ["p", "stored"]
    assert store.data == {"p": 1}


def test_forked_child_can_fork_again(make_cache, tmp_path) -> None:
    store = SharedLogStore(tmp_path / "writes.jsonl")
    cache = make_cache(store)

    def grandchild():
        cache["grandchild"] = 2
        wait_until(
            lambda: "grandchild" in store.data and cache.pending == 0
        )  # committed: logged too
        return os.getpid()

    def child():
        cache["child"] = 1
        wait_until(lambda: "child" in store.data and cache.pending == 0)
        return [os.getpid(), run_in_forked_child(grandchild)]

    child_pid, grandchild_pid = run_in_forked_child(child)
    log = store.log()
    assert keys_written(log, child_pid) == ["child"]
    assert keys_written(log, grandchild_pid) == ["grandchild"]
    cache["parent"] = 0
    wait_until(lambda: "parent" in store.data and cache.pending == 0)


class ForkRecordingStore(MemoryStore):
    """A MemoryStore that records each after_fork_in_child call: in which process, and
    which threads were running then."""

    def __init__(self) -> None:
        super().__init__()
        self.fork_calls: list[dict] = []

    def after_fork_in_child(self) -> None:
        threads = sorted(thread.name for thread in threading.enumerate())
        self.fork_calls.append({"pid": os.getpid(), "threads": threads})


def test_child_tells_each_cache_store_before_any_cache_thread_runs(make_cache) -> None:
    store = ForkRecordingStore()
    make_cache(store)
    make_cache(store)  # two caches over one store: both reset it before either's threads start

    def child():
        return {"pid": os.getpid(), "calls": store.fork_calls}

    report = run_in_forked_child(child)
    assert [call["pid"] for call in report["calls"]] == [report["pid"]] * 2
    assert all(
        not any(name.startswith("lazycache-") for name in call["threads"])
        for call in report["calls"]
    )
    assert store.fork_calls == []  # the parent's store is not told anything
