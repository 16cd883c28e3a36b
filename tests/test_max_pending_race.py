"""`max_pending` holds under concurrent writers: admission and insertion are one atomic step.

Many threads hammer every write path at once over a slow store. Two witnesses watch the
bound: a monitor thread sampling `cache.pending` without pause, and the store itself,
which sees (at each write) everything pending, its own batch included.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
from helpers import run_threads

from lazycache import BackpressureError, MemoryStore

MAX_PENDING = 32
THREADS = 6
KEYS = 200
ROUNDS = 2


class WatchingStore(MemoryStore):
    """A store with latency that records every pending count above the bound it sees at a write."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: Any = None
        self.over: list[int] = []

    def write(self, upserts: Any, deletes: Any) -> None:
        # The batch being written is still counted by cache.pending (in flight), so the
        # count seen here is everything pending, this batch included.
        seen = self.cache.pending
        if seen > MAX_PENDING:
            self.over.append(seen)
        time.sleep(0.001)  # store latency: keeps a backlog for the writers to contend over
        return super().write(upserts, deletes)


def hammer(cache: Any, worker: int) -> None:
    """Every write path that can add a pending entry, over keys shared with the other workers."""
    for round_ in range(ROUNDS):
        for i in range(KEYS):
            # Mostly keys no other op has touched yet: each such write adds a pending entry.
            key = f"k{worker}-{round_}-{i}" if i % 4 else f"k{i}"
            op = (i + worker + round_) % 8
            try:
                if op == 0:
                    cache[key] = i
                elif op == 1:
                    cache.discard(key)
                elif op == 2:
                    cache.pop(key, None)
                elif op == 3:
                    cache.setdefault(key, i)
                elif op == 4:
                    cache.update({key: i, f"{key}-x": i})
                elif op == 5:
                    cache.update_entry(key, lambda v: (v or 0) + 1, 0)
                elif op == 6:
                    try:
                        del cache[key]
                    except KeyError:
                        pass
                else:
                    try:
                        cache.popitem()
                    except KeyError:
                        pass
            except BackpressureError:
                pass  # on_full="raise" (or a block that timed out): refused, as promised


@pytest.mark.parametrize("journaled", [False, True], ids=["plain", "journaled"])
@pytest.mark.parametrize("on_full", ["raise", "block", "write-through"])
def test_concurrent_writers_never_exceed_max_pending(
    make_cache, tmp_path, on_full: str, journaled: bool
) -> None:
    store = WatchingStore()
    journal = {"journal": str(tmp_path / "journal"), "journal_fsync": "no"} if journaled else {}
    cache = make_cache(
        store,
        max_pending=MAX_PENDING,
        on_full=on_full,
        batch_size=8,
        read_through=False,
        **journal,
    )
    store.cache = cache
    peak = 0
    done = threading.Event()

    def monitor() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, cache.pending)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    # Frequent thread switches: a gap between check and insert is found at once if there is one.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        run_threads(hammer, [(cache, worker) for worker in range(THREADS)], timeout=120)
    finally:
        sys.setswitchinterval(switch)
        done.set()
        watcher.join()
    cache.flush()
    assert store.over == [], f"the store saw {max(store.over)} pending (max_pending={MAX_PENDING})"
    assert peak <= MAX_PENDING, f"pending reached {peak} (max_pending={MAX_PENDING})"
    assert cache.pending == 0
