"""The writer's GIL pacing (lazycache._pacing): a batch's Python work yields the GIL between slices.

A loop given a share of the wall clock (`sharing`) pauses after each slice for as long as
its share asks; the writer gives its routine batches `BACKGROUND_SHARE`, and nothing else.

Whether another thread then gets the GIL is the OS scheduler's business and cannot be checked
without timing (benchmarks/asyncio_loop_lag.py measures the event loop's lag). What is checked
here: the flushing thread releases the GIL by a real sleep between the chunks of a batch once
its slice is spent, never when it is not, and the batch is written whole either way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers import LONG, TIMEOUT, BlockingStore, wait_until
from services import database, db_cache  # noqa: F401  (fixtures)
from test_sqlalchemy_kv import kv_store, stored

import lazycache._pacing
from lazycache._pacing import GilPacer, current_share, sharing
from lazycache.writer import BACKGROUND_SHARE

GIL = bool(getattr(sys, "_is_gil_enabled", lambda: True)())


@contextmanager
def counting_yields() -> Iterator[list[int]]:
    """Counts the GIL-yielding sleeps (`time.sleep(PAUSE)` calls) made by this thread meanwhile."""
    count = [0]

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and arg is time.sleep:
            count[0] += 1

    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(None)


def test_a_pacer_yields_once_its_slice_is_spent_and_not_before() -> None:
    spent = GilPacer(slice=0.0)
    fresh = GilPacer(slice=3600.0)
    with counting_yields() as sleeps:
        for _ in range(3):
            spent.pace()
            fresh.pace()
    assert fresh.yields == 0
    assert spent.yields == sleeps[0] == (3 if GIL else 0)


def test_a_pacer_counts_its_slice_from_its_last_yield() -> None:
    pacer = GilPacer(slice=0.0)
    pacer.pace()
    pacer.slice = 3600.0  # the slice that started at that yield is not spent
    pacer.pace()
    assert pacer.yields == (1 if GIL else 0)


# The key-value paths that send a batch in chunks (pipelined): PostgreSQL's, and PyMySQL's.
@pytest.mark.parametrize("database", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("spent", [True, False], ids=["slice-spent", "slice-not-spent"])
def test_a_pipelined_batch_yields_the_gil_between_its_chunks(
    database,  # noqa: F811  (fixture)
    db_cache,  # noqa: F811  (fixture)
    monkeypatch,
    spent,
) -> None:
    # A slice of 0 is spent after every chunk; an hour's never is.
    monkeypatch.setattr(lazycache._pacing, "SLICE", 0.0 if spent else 3600.0)
    store = kv_store(database)
    cache = db_cache(store, quiet=True, batch_size=1000)
    values = {f"user:{i}": {"id": i, "name": f"user {i}"} for i in range(600)}
    cache.update(values)
    # The flush runs in this thread: one batch of 600 entries, sent in chunks of 250 or fewer.
    with counting_yields() as sleeps:
        result = cache.flush()
    assert (result.written, result.batches) == (600, 1)
    assert stored(database, store.table.name) == values
    if spent and GIL:
        assert sleeps[0] >= 2  # between chunks of the one batch, not only once
    else:
        assert sleeps[0] == 0


# ----------------------------------------------------------------------------- a share of the clock


def _burn(seconds: float) -> None:
    """Works (CPU) for `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_pacer_given_a_share_pauses_for_the_rest_of_the_clock() -> None:
    # A quarter: after each slice of work, a pause three times as long. The pauses are real
    # sleeps, so the wall clock is at least the work plus them, however slow the machine.
    with sharing(0.25):
        pacer = GilPacer(slice=0.001)
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(40):
        _burn(0.0005)
        pacer.pace()
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert pacer.yields >= 15
    assert wall >= cpu + 3 * (cpu - 0.002)  # all but the last slice's work was paid for


def test_sharing_is_per_thread_nests_and_is_checked() -> None:
    assert current_share() == 1.0
    seen: list[float] = []
    with sharing(0.5):
        with sharing(0.1):
            assert current_share() == 0.1
            other = threading.Thread(target=lambda: seen.append(current_share()))
            other.start()
            other.join(TIMEOUT)
        assert current_share() == 0.5
    assert current_share() == 1.0 and seen == [1.0]
    for share in (0.0, -1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="share"):
            with sharing(share):
                pass


class ShareRecordingStore(BlockingStore):
    """A store noting the share each write was paced with (a driver's pacer would get it); `hold()` holds one."""

    def __init__(self) -> None:
        super().__init__()
        self.shares: list[float] = []

    def write(self, upserts: Any, deletes: Any) -> Any:
        self.shares.append(current_share())
        return super().write(upserts, deletes)


def test_only_the_writers_routine_batches_are_paced_with_a_share(make_cache) -> None:
    store = ShareRecordingStore()
    cache = make_cache(store, write_interval=LONG, prune_interval=LONG, batch_size=10)
    cache.update({i: i for i in range(5)})
    cache.flush()  # someone waits for it: full speed
    assert store.shares == [1.0]
    cache.update({i: -i for i in range(5)})
    cache._writer.wake()  # the writer thread's routine run: the backlog fits in one batch
    wait_until(lambda: len(store.shares) == 2 and cache.pending == 0)
    assert store.shares[1] == BACKGROUND_SHARE
    # A backlog: 25 entries queue up while the writer is held in a routine write of one.
    store.hold()
    cache["first"] = 0
    cache._writer.wake()
    store.wait_entered()
    cache.update({i: i for i in range(25)})
    store.release.set()
    wait_until(lambda: cache.pending == 0 and len(store.shares) == 6)
    # the one; 10 with 15 behind, 10 with 5 behind, at full speed; the last 5 routine again
    assert store.shares[2:] == [BACKGROUND_SHARE, 1.0, 1.0, BACKGROUND_SHARE]
    assert store.data == {"first": 0, **{i: i for i in range(25)}}


def test_a_cache_near_max_pending_is_written_at_full_speed(make_cache) -> None:
    store = ShareRecordingStore()
    cache = make_cache(
        store, write_interval=LONG, prune_interval=LONG, batch_size=100, max_pending=8
    )
    cache.update({i: i for i in range(4)})  # half of max_pending: writers may soon wait
    cache._writer.wake()
    wait_until(lambda: cache.pending == 0)
    cache.update({i: i for i in range(3)})  # below half: routine
    cache._writer.wake()
    wait_until(lambda: cache.pending == 0 and len(store.shares) == 2)
    assert store.shares == [1.0, BACKGROUND_SHARE]
