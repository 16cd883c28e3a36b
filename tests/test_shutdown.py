"""Shutdown with a deadline: close()/flush(timeout=...) return in time and name exactly what was not written.

(Idempotent close, writes refused after close, flushing of dropped caches and of caches
left open at exit with a healthy store: see test_lifecycle.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import SLACK, BlockingStore, FailingStore, TimedStore, wait_until

from lazycache import FlushError

SRC = str(Path(__file__).resolve().parent.parent / "src")
FAST_RETRY = {"retry_initial": 0.01, "retry_max": 0.1}


def test_close_with_the_store_down_names_exactly_the_unwritten_keys_within_its_deadline(
    make_cache,
) -> None:
    store = FailingStore()
    cache = make_cache(store, close_may_fail=True, **FAST_RETRY)
    for i in range(5):
        cache[f"early{i}"] = i
    cache.flush()
    store.fail = True
    for i in range(20):
        cache[f"late{i}"] = i
    del cache["early0"]  # a pending delete is unwritten too
    unwritten = {f"late{i}" for i in range(20)} | {"early0"}
    calls = len(store.write_calls)
    started = time.monotonic()
    with pytest.raises(FlushError) as info:
        cache.close(timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 1 + SLACK, f"close(timeout=1) took {elapsed:.2f}s"
    result = info.value.result
    assert set(result.failed_keys) == unwritten and len(result.failed_keys) == len(unwritten)
    assert result.poisoned_keys == ()
    assert any(isinstance(exc, ConnectionError) for exc in result.errors), result.errors
    assert "late0" in str(info.value)
    assert len(store.write_calls) - calls >= 2  # close kept retrying until its deadline
    assert cache.closed and cache.pending == len(unwritten)
    assert cache["late3"] == 3  # nothing unwritten was dropped
    store.fail = False
    assert cache.flush().written == 20  # and it can still be written
    assert store.data == {
        **{f"early{i}": i for i in range(1, 5)},
        **{f"late{i}": i for i in range(20)},
    }


def test_close_with_a_hung_store_returns_within_its_deadline(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, close_may_fail=True)
    store.hold()
    cache["a"] = 1
    cache["b"] = 2
    store.wait_entered()  # the writer thread is stuck in the store
    cache["c"] = 3  # queued behind the hung batch
    try:
        started = time.monotonic()
        with pytest.raises(FlushError) as info:
            cache.close(timeout=0.5)
        elapsed = time.monotonic() - started
        assert elapsed < 0.5 + SLACK, f"close(timeout=0.5) took {elapsed:.2f}s"
        assert set(info.value.result.failed_keys) == {"a", "b", "c"}
        assert any(isinstance(exc, TimeoutError) for exc in info.value.result.errors)
    finally:
        store.release.set()
    # the hung write finishes later; its entries are then clean, the rest can be flushed
    wait_until(lambda: store.data == {"a": 1, "b": 2} and cache.pending == 1)
    assert cache.flush().written == 1
    assert store.data == {"a": 1, "b": 2, "c": 3}


def test_close_retries_until_the_store_comes_back_before_its_deadline(make_cache) -> None:
    store = TimedStore()
    cache = make_cache(store, quiet=True, **FAST_RETRY)
    for i in range(10):
        cache[i] = i
    store.fail_times(3)
    result = cache.close(timeout=5)
    assert result is not None and result.ok and result.written == 10
    assert len(store.call_times) == 4
    assert store.data == {i: i for i in range(10)}


def test_close_of_a_healthy_cache_with_a_deadline_writes_everything(make_cache) -> None:
    store = FailingStore({f"old{i}": i for i in range(50)})
    cache = make_cache(store, batch_size=64)
    expected = {}
    for i in range(1000):
        cache[f"k{i % 300}"] = i
        expected[f"k{i % 300}"] = i
    for i in range(50):
        del cache[f"old{i}"]
    result = cache.close(timeout=5)
    assert result is not None and result.ok
    assert store.data == expected
    assert cache.pending == 0


def test_flush_with_a_timeout_retries_until_the_store_comes_back(make_cache) -> None:
    store = TimedStore()
    cache = make_cache(store, quiet=True, **FAST_RETRY)
    cache["a"] = 1
    store.fail_times(3)
    result = cache.flush(timeout=5)
    assert result.ok and result.written == 1
    assert len(store.call_times) == 4
    assert cache.stats.retries == 3


def test_flush_with_a_timeout_and_the_store_down_raises_by_its_deadline(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, **FAST_RETRY)
    store.fail = True
    cache["a"] = 1
    cache["b"] = 2
    started = time.monotonic()
    with pytest.raises(FlushError) as info:
        cache.flush(timeout=0.3)
    assert time.monotonic() - started < 0.3 + SLACK
    assert sorted(info.value.result.failed_keys) == ["a", "b"]
    assert cache.pending == 2
    store.fail = False  # the writer thread keeps retrying after the failed flush
    wait_until(lambda: cache.pending == 0)
    assert store.data == {"a": 1, "b": 2}


def test_flush_with_a_timeout_returns_by_its_deadline_while_the_store_hangs(make_cache) -> None:
    store = BlockingStore()
    cache = make_cache(store, quiet=True, close_may_fail=True)
    cache["a"] = 1
    store.hold()
    try:
        started = time.monotonic()
        with pytest.raises(FlushError) as info:
            cache.flush(timeout=0.3)
        assert time.monotonic() - started < 0.3 + SLACK
        assert info.value.result.failed_keys == ("a",)
        store.wait_entered()
    finally:
        store.release.set()
    wait_until(lambda: cache.pending == 0)  # the write that hung completes on its own
    assert store.data == {"a": 1}


def test_a_flush_given_up_at_its_deadline_names_the_store_error_behind_it(make_cache) -> None:
    store = BlockingStore()
    # No background retry: the only attempts are the two flushes below.
    cache = make_cache(store, quiet=True, retry_initial=3600, retry_max=3600)
    cache["a"] = 1
    store.fail = True
    with pytest.raises(FlushError) as first:
        cache.flush()
    assert isinstance(first.value.result.errors[-1], ConnectionError)
    store.hold()  # the next attempt hangs, so this flush gives up before it fails
    try:
        with pytest.raises(FlushError) as info:
            cache.flush(timeout=0.3)
        store.wait_entered()
        assert [type(exc) for exc in info.value.result.errors] == [ConnectionError, TimeoutError]
        assert "after ConnectionError('store is down')" in str(info.value)
        assert info.value.result.failed_keys == ("a",)
    finally:
        store.fail = False
        store.release.set()
    wait_until(lambda: cache.pending == 0)
    assert store.data == {"a": 1}


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_non_positive_flush_timeout_is_a_value_error(make_cache, timeout) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    with pytest.raises(ValueError, match="timeout"):
        cache.flush(timeout=timeout)
    assert cache.pending == 1


@pytest.mark.parametrize("timeout", [0, -1, "1"])
def test_close_with_an_invalid_timeout_raises_and_leaves_the_cache_open(
    make_cache, timeout
) -> None:
    # A rejected argument must not half-close the cache: a later close() still flushes.
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    with pytest.raises((ValueError, TypeError), match="timeout"):
        cache.close(timeout=timeout)
    assert not cache.closed
    result = cache.close()
    assert result is not None and result.written == 1
    assert store.data == {"a": 1}


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from lazycache import MemoryStore
    from lazycache.cache import implementation_class

    class DownStore(MemoryStore):
        def write(self, upserts, deletes):
            raise ConnectionError("the database is down")

    cache = implementation_class(sys.argv[1])(DownStore(), write_interval=3600, prune_interval=3600, exit_timeout=0.5)
    cache["unwritten-1"] = 1
    cache["unwritten-2"] = 2
    print(cache.pending, flush=True)
    # exits without close(), with the store down
    """
)


def test_cache_left_open_with_the_store_down_names_the_lost_keys_at_exit(impl) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, impl],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"
    assert "'unwritten-1'" in proc.stderr and "'unwritten-2'" in proc.stderr, proc.stderr
    assert "not written" in proc.stderr


def test_setter_blocked_by_backpressure_is_released_when_the_cache_closes(make_cache) -> None:
    # After close nothing drains the backlog, so a blocked setter has nothing to wait for:
    # it should meet the closed cache's RuntimeError promptly, not wait out block_timeout.
    store = FailingStore()
    store.fail = True
    cache = make_cache(
        store,
        max_pending=1,
        on_full="block",
        block_timeout=3,
        close_may_fail=True,
        retry_initial=0.01,
        retry_max=0.05,
    )
    cache["a"] = 1
    outcome = []

    def set_one_more() -> None:
        try:
            cache["b"] = 2
        except Exception as exc:
            outcome.append((exc, time.monotonic()))

    thread = threading.Thread(target=set_one_more, daemon=True)
    thread.start()
    time.sleep(0.1)  # the setter is waiting for room
    closed_at = time.monotonic()
    with pytest.raises(FlushError):
        cache.close(timeout=0.2)
    thread.join(5)
    [(exc, when)] = outcome
    assert when - closed_at < 1.5, (
        f"the setter waited {when - closed_at:.2f}s after close (block_timeout=3)"
    )
    assert isinstance(exc, RuntimeError) and "closed" in str(exc), repr(exc)


HUNG_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from lazycache import MemoryStore
    from lazycache.cache import implementation_class

    class HungStore(MemoryStore):
        def write(self, upserts, deletes):
            threading.Event().wait()  # the database never answers

    cache = implementation_class(sys.argv[1])(HungStore(), write_interval=0.01, prune_interval=3600)
    cache["unwritten"] = 1
    time.sleep(0.2)  # the writer thread is now stuck in the store
    cache["queued"] = 2
    print("exiting", flush=True)
    # exits without close(), with the store hanging
    """
)


@pytest.mark.skipif(
    (3, 12, 0) <= sys.version_info[:3] < (3, 12, 3),
    reason="CPython 3.12.0-3.12.2 start no thread in atexit handlers (cpython#113964): the exit "
    "flush runs in the exiting thread, where a store call that never returns cannot be cut short",
)
def test_cache_left_open_with_a_hung_store_does_not_hang_interpreter_exit(impl) -> None:
    # A store that never answers must not keep the process alive forever (a container stop
    # would end in SIGKILL, the lost keys never named): the exit close has a deadline
    # (exit_timeout, 3 s by default).
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_EXIT_SCRIPT, impl],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()  # the child we started, by its handle
        out, err = proc.communicate()
        pytest.fail(f"interpreter exit hung on a cache whose store hangs (stdout: {out.strip()!r})")
    assert proc.returncode == 0, err
    assert "'unwritten'" in err and "'queued'" in err, err
