"""The writer's GIL pacing (lazycache._pacing): a batch's Python work yields the GIL between slices.

Whether another thread then gets the GIL is the OS scheduler's business and cannot be checked
without timing (benchmarks/asyncio_loop_lag.py measures the event loop's lag). What is checked
here: the flushing thread releases the GIL by a real sleep between the chunks of a batch once
its slice is spent, never when it is not, and the batch is written whole either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from services import database, db_cache  # noqa: F401  (fixtures)
from test_sqlalchemy_kv import kv_store, stored

import lazycache._pacing
from lazycache._pacing import GilPacer

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
