"""Closing: idempotent, flushes, refuses writes afterwards; dropped and exiting caches are flushed."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
from helpers import LONG, FailingStore, wait_until

from lazycache import FlushError, MemoryStore

SRC = str(Path(__file__).resolve().parent.parent / "src")


def test_close_is_idempotent(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    first = cache.close()
    assert first is not None and first.written == 1
    assert cache.closed
    assert cache.close() is None
    assert cache.close(flush=True) is None
    assert store.data == {"a": 1}


def test_close_stops_the_threads(cache_cls) -> None:
    cache = cache_cls(MemoryStore(), write_interval=LONG, prune_interval=LONG)
    threads = [cache._writer, cache._pruner]
    assert all(worker.alive for worker in threads)
    cache.close()
    assert not any(worker.alive for worker in threads)


def test_context_manager_flushes_and_closes(cache_cls) -> None:
    store = MemoryStore()
    with cache_cls(store, write_interval=LONG, prune_interval=LONG) as cache:
        cache["a"] = 1
        del cache["a"]
        cache["b"] = 2
        assert store.data == {}
    assert cache.closed
    assert store.data == {"b": 2}


def test_context_manager_flushes_when_the_block_raises(cache_cls) -> None:
    store = MemoryStore()
    with pytest.raises(ZeroDivisionError):
        with cache_cls(store, write_interval=LONG, prune_interval=LONG) as cache:
            cache["a"] = 1
            raise ZeroDivisionError
    assert store.data == {"a": 1}


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda c: c.__setitem__("a", 2), id="set"),
        pytest.param(lambda c: c.__setitem__("new", 2), id="set-new"),
        pytest.param(lambda c: c.__delitem__("a"), id="del"),
        pytest.param(lambda c: c.__delitem__("store-only"), id="del-store-only"),
        pytest.param(lambda c: c.pop("a"), id="pop"),
        pytest.param(lambda c: c.pop("store-only", None), id="pop-store-only"),
        pytest.param(lambda c: c.popitem(), id="popitem"),
        pytest.param(lambda c: c.setdefault("new", 1), id="setdefault"),
        pytest.param(lambda c: c.discard("a"), id="discard"),
        pytest.param(lambda c: c.clear(), id="clear"),
        pytest.param(lambda c: c.update({"a": 3}), id="update"),
        pytest.param(lambda c: c.update_entry("a", lambda v: v + 1), id="update_entry"),
        pytest.param(lambda c: c.update_entry("new", lambda v: v + 1, 0), id="update_entry-new"),
    ],
)
def test_writes_after_close_raise_runtime_error(make_cache, write) -> None:
    store = MemoryStore({"store-only": 0})
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        write(cache)
    assert cache["a"] == 1
    assert cache.pending == 0
    assert store.data == {"store-only": 0, "a": 1}


def test_reads_after_close_are_answered_from_memory(make_cache) -> None:
    store = MemoryStore({"store-only": 0})
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    cache.close()
    assert cache["a"] == 1
    assert cache.get("a") == 1
    assert "a" in cache
    assert len(cache) == 1
    assert list(cache) == ["a"]
    assert cache.copy() == {"a": 1}
    with pytest.raises(RuntimeError, match="closed"):  # no read-through after close
        cache["store-only"]
    assert cache.stats.size >= 1
    assert cache.flush().written == 0


def test_close_without_flush_leaves_the_store_untouched(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True, flush_on_close=False)
    cache["a"] = 1
    assert cache.close() is None
    assert store.data == {}
    assert cache.pending == 1


def test_close_flush_argument_overrides_the_default(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True, flush_on_close=False)
    cache["a"] = 1
    assert cache.close(flush=True).written == 1
    assert store.data == {"a": 1}
    other = make_cache(MemoryStore(), quiet=True)
    other["a"] = 1
    assert other.close(flush=False) is None
    assert other.store.data == {}


def test_failed_final_flush_raises_and_can_be_retried(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = 1
    store.fail = True
    with pytest.raises(FlushError) as info:
        cache.close()
    assert info.value.result.failed_keys == ("a",)
    assert cache.closed
    assert cache["a"] == 1 and cache.pending == 1
    store.fail = False
    assert cache.flush().written == 1
    assert store.data == {"a": 1}


def test_cache_dropped_without_close_is_flushed_when_garbage_collected(cache_cls) -> None:
    store = MemoryStore()
    cache = cache_cls(store, write_interval=LONG, prune_interval=LONG)
    writer = cache._writer
    cache["a"] = 1
    cache["b"] = 2
    del cache["a"]
    del cache
    gc.collect()
    wait_until(lambda: store.data == {"b": 2}, message=f"store has {store.data}")
    wait_until(lambda: not writer.alive, message="the writer thread outlived its cache")


def test_garbage_collected_cache_whose_flush_fails_logs_the_lost_keys(cache_cls, caplog) -> None:
    store = FailingStore()
    store.fail = True
    cache = cache_cls(store, write_interval=LONG, prune_interval=LONG)
    cache["lost-key"] = 1
    del cache
    gc.collect()
    wait_until(
        lambda: any(
            "'lost-key'" in r.getMessage() and "garbage-collected" in r.getMessage()
            for r in caplog.records
        )
    )


ATEXIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lazycache import Store
    from lazycache.cache import implementation_class

    class FileStore(Store):
        def __init__(self, path):
            self.path = path
            self.data = {}

        def load_many(self, keys):
            return {k: self.data[k] for k in keys if k in self.data}

        def write(self, upserts, deletes):
            self.data.update(upserts)
            for key in deletes:
                self.data.pop(key, None)
            with open(self.path, "w") as f:
                json.dump(self.data, f)

    cache = implementation_class(sys.argv[2])(FileStore(sys.argv[1]), write_interval=3600, prune_interval=3600)
    for i in range(100):
        cache[f"k{i}"] = i
    del cache["k0"]
    print(cache.pending)
    # exits without close(); `cache` stays referenced until after atexit hooks run
    """
)


def test_open_cache_is_flushed_at_interpreter_exit(impl, tmp_path) -> None:
    out = tmp_path / "store.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", ATEXIT_SCRIPT, str(out), impl],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "100"  # nothing was written before exit
    assert out.exists(), f"nothing was written at exit; stderr: {proc.stderr}"
    assert json.loads(out.read_text()) == {f"k{i}": i for i in range(1, 100)}


def test_open_cache_is_flushed_at_exit_while_a_background_write_is_running(impl, tmp_path) -> None:
    # The writer thread is a daemon: exit must still wait for the final flush to finish.
    script = ATEXIT_SCRIPT.replace("write_interval=3600", "write_interval=0.001")
    out = tmp_path / "store.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out), impl],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == {f"k{i}": i for i in range(1, 100)}


def test_threads_of_a_cache_hold_no_strong_reference(cache_cls) -> None:
    cache = cache_cls(MemoryStore(), write_interval=0.005, prune_interval=0.005)
    ref = weakref.ref(cache)
    cache["a"] = 1
    del cache
    gc.collect()
    wait_until(lambda: ref() is None, message="the cache was kept alive by its threads")


def test_a_cache_in_a_reference_cycle_is_collected_and_flushed(cache_cls: type) -> None:
    # A value that refers to its own cache makes a cycle through the core's storage
    # (C arrays, in the compiled core): the garbage collector must still find it, run the
    # cache's finaliser (which flushes) and free it.
    import weakref

    store = MemoryStore()
    cache = cache_cls(store, write_interval=3600, prune_interval=3600)
    cache["self"] = {"cache": cache}
    cache["plain"] = 1
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None
    assert sorted(store.data) == ["plain", "self"]
