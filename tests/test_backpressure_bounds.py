"""Backpressure keeps its two bounds under contention: `block_timeout` for a whole blocked
write, and `max_pending` for every write, `clear()` included.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import SLACK, TIMEOUT, FailingStore, wait_until

from lazycache import BackpressureError, MemoryStore


def _inert_writer(cache_cls: type) -> type:
    """A cache class whose writer thread never writes: nothing drains on its own (a hung store)."""

    class Inert(cache_cls):  # type: ignore[misc,valid-type]
        def _background_flush(self) -> None:
            return None

    return Inert


# ----------------------------------------------------------------- block_timeout
def test_a_blocked_write_gives_up_by_its_deadline_though_room_keeps_appearing(
    cache_cls: type,
) -> None:
    """Room appears again and again, and each time another writer takes it before the blocked
    setter can: the setter must still give up block_timeout after it started, not wait anew
    each time it saw room."""
    block_timeout = 0.3
    saw_room = threading.Event()  # the setter read `pending` below the bound
    saw_full = threading.Event()  # ... at the bound: it is waiting, and holds nothing
    setter: list[threading.Thread] = []

    class Observed(_inert_writer(cache_cls)):  # type: ignore[misc]
        @property
        def pending(self) -> int:
            count: int = super().pending
            if setter and threading.current_thread() is setter[0]:
                (saw_room if count < 1 else saw_full).set()
            return count

    cache = Observed(MemoryStore(), max_pending=1, on_full="block", block_timeout=block_timeout)
    try:
        cache["r0"] = 0  # the one pending entry allowed
        outcome: list[Any] = []

        def set_blocked() -> None:
            started = time.monotonic()
            try:
                cache["x"] = 1
                outcome.append("written")
            except BackpressureError:
                outcome.append(time.monotonic() - started)
            finally:
                saw_room.set()  # the test waits for neither any more
                saw_full.set()

        setter.append(threading.Thread(target=set_blocked, daemon=True))
        setter[0].start()
        rounds = 0
        stop_at = time.monotonic() + block_timeout + SLACK + 1  # then the setter may only wait
        while not outcome and time.monotonic() < stop_at:
            if not saw_full.wait(TIMEOUT) or outcome:
                break
            # Under the core's lock: the setter can see the room, but not take it before we do.
            cache._fork_prepare()
            try:
                saw_room.clear()
                cache.clear_dirty()  # room for one ...
                saw_room.wait(TIMEOUT)
                rounds += 1
                cache[f"r{rounds}"] = rounds  # ... taken again
                saw_full.clear()  # the setter cannot have read it since: it waits for this lock
            finally:
                cache._fork_release()
        setter[0].join(TIMEOUT)
        assert not setter[0].is_alive()
        (result,) = outcome
        assert result != "written", "the setter took room the test held"
        assert rounds >= 1
        assert result < block_timeout + SLACK, (
            f"the blocked set gave up after {result:.2f}s (block_timeout={block_timeout}), "
            f"having seen room {rounds} times"
        )
        assert "x" not in cache
    finally:
        cache.close(flush=False)


def test_a_blocked_delete_and_compound_write_give_up_by_their_deadline(make_cache: Any) -> None:
    store = FailingStore({"store-only": 0, "other": 1})
    store.fail = True
    cache = make_cache(
        store, max_pending=2, on_full="block", block_timeout=0.2, close_may_fail=True
    )
    cache["a"] = cache["b"] = 1
    for write in (
        lambda: cache.__delitem__("store-only"),
        lambda: cache.pop("other"),
        lambda: cache.setdefault("new", 1),
    ):
        started = time.monotonic()
        with pytest.raises(BackpressureError, match="max_pending=2"):
            write()
        assert time.monotonic() - started < 0.2 + SLACK
    assert cache.pending == 2


# ----------------------------------------------------------------- clear() and max_pending
def test_clear_under_raise_refuses_what_does_not_fit_and_deletes_nothing(make_cache: Any) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True, max_pending=5, on_full="raise")
    for i in range(5):
        cache[f"k{i}"] = i
    cache.flush()
    for i in range(5, 8):
        cache[f"k{i}"] = i
    cache.flush()
    assert cache.pending == 0 and len(cache) == 8
    with pytest.raises(BackpressureError, match=r"max_pending=5.*clear\(\).*nothing was deleted"):
        cache.clear()
    assert len(cache) == 8 and cache.pending == 0
    assert cache["k7"] == 7


def test_clear_of_entries_already_pending_needs_no_room(make_cache: Any) -> None:
    store = FailingStore({"k0": "old"})
    store.fail = True
    cache = make_cache(store, quiet=True, max_pending=5, on_full="raise")
    for i in range(5):
        cache[f"k{i}"] = i
    cache.clear()  # each delete replaces a pending write: the backlog does not grow
    assert len(cache) == 0 and cache.pending == 5
    store.fail = False
    cache.flush()
    assert store.data == {}


@pytest.mark.parametrize("on_full", ["block", "write-through"])
def test_clear_under_block_stays_within_max_pending_and_deletes_everything(
    make_cache: Any, on_full: str
) -> None:
    limit = 5
    seen_pending: list[int] = []
    cache: Any = None

    class Watching(MemoryStore):
        def write(self, upserts: Any, deletes: Any) -> Any:
            if cache is not None:
                seen_pending.append(cache.pending)
            return super().write(upserts, deletes)

    store = Watching()
    cache = make_cache(store, quiet=True, max_pending=limit, on_full=on_full, block_timeout=TIMEOUT)
    for start in range(0, 23, limit):
        for i in range(start, min(start + limit, 23)):
            cache[f"k{i}"] = i
        cache.flush()
    assert len(store.data) == 23 and cache.pending == 0
    cache.clear()
    assert cache.pending <= limit
    assert len(cache) == 0
    cache.flush()
    assert store.data == {}
    assert seen_pending and max(seen_pending) <= limit, seen_pending


def test_clear_under_block_gives_up_by_its_deadline_leaving_the_rest(make_cache: Any) -> None:
    store = FailingStore()
    cache = make_cache(
        store,
        quiet=True,
        max_pending=3,
        on_full="block",
        block_timeout=0.2,
        close_may_fail=True,
        retry_initial=0.01,
        retry_max=0.05,
    )
    for i in range(3):
        cache[f"k{i}"] = i
    cache.flush()
    for i in range(3, 6):
        cache[f"k{i}"] = i
    cache.flush()
    store.fail = True  # nothing drains now
    started = time.monotonic()
    with pytest.raises(BackpressureError, match="max_pending=3"):
        cache.clear()
    assert time.monotonic() - started < 0.2 + SLACK
    assert cache.pending == 3
    assert len(cache) == 3  # three deleted, three still there
    store.fail = False
    wait_until(lambda: cache.pending == 0)
    assert len(store.data) == 3


def test_a_journaled_clear_in_steps_journals_each_delete(make_cache: Any, tmp_path: Any) -> None:
    store = MemoryStore()
    cache = make_cache(  # not quiet: a journaled cache is its own class
        store,
        max_pending=4,
        on_full="block",
        block_timeout=TIMEOUT,
        journal=str(tmp_path / "journal"),
    )
    for start in range(0, 10, 4):
        for i in range(start, min(start + 4, 10)):
            cache[f"k{i}"] = i
        cache.flush()
    cache.clear()
    assert len(cache) == 0 and cache.pending <= 4
    cache.close()
    assert store.data == {}


def test_a_blocked_set_on_an_async_cache_off_the_loop_waits_and_gives_up(impl: str) -> None:
    """The asyncio cache has its own wait for the loop; a plain set from a thread still blocks."""
    from lazycache.aio import async_implementation_class

    store = FailingStore()
    store.fail = True
    cache = async_implementation_class(impl)(
        store, max_pending=1, on_full="block", block_timeout=0.2, retry_initial=0.01
    )
    try:
        cache["a"] = 1
        started = time.monotonic()
        with pytest.raises(BackpressureError, match="max_pending=1"):
            cache["b"] = 2
        elapsed = time.monotonic() - started
        assert 0.2 * 0.9 <= elapsed < 0.2 + SLACK
    finally:
        cache.close(flush=False)
