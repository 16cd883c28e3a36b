"""Bounded holds of the GIL by the cache's background work (the writer's batches).

A thread doing Python work (serialising a batch, a driver encoding it) keeps the GIL until
the interpreter forces a switch, every `sys.getswitchinterval()` (5 ms by default), or until
it blocks. Meanwhile every other thread that wants to run waits: an asyncio loop's
callbacks, a threaded server's request handlers. And a driver that releases the GIL only
around short C calls (psycopg's pure-Python mode over ctypes, sqlite3's steps) makes it
worse: the waiting thread is woken at each release, finds the GIL taken again, and starts
its 5 ms wait over, so the forced switch may not come before the batch ends.

`GilPacer.pace()`, called between bounded units of work, yields the GIL once the thread has
worked `SLICE` seconds since its last yield: no stretch of the writer's work then holds it
much longer than that, whatever the switch interval. The process-wide switch interval is
left alone (it is the application's, and lowering it costs every thread).

The slice is the thread's CPU time, not the wall clock's: time the OS spent running other
processes is not work to pace (yielding after it gives nothing back), and counting it would
pause the writer most often where a pause costs most. On a loaded machine a pause gives the
CPU away for a scheduler's turn: measured 0.4-0.8 ms per pause on 2 busy cores against 66 µs
on idle ones, and with the wall clock a synchronous flush to PostgreSQL lost 10-16% of its
throughput there; with the thread's CPU time, none beyond the noise, for the same loop lag.

A loop may also be given a `share` of the time (`sharing()`): after each slice it then
pauses long enough that its work takes at most that share of the wall clock. The writer
runs its routine flushes so (`BACKGROUND_SHARE`): the request a service is serving meanwhile
meets a flush's work spread over a longer stretch, in small pieces, instead of all of it at
once; the database, which works on the chunks as they arrive, spreads its work likewise.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

SLICE = 0.001
"""Seconds of work between two yields of the GIL by a paced loop."""

PAUSE = 1e-6
"""The sleep that yields: long enough that a waiting thread takes the GIL (a release that is
taken back at once does not hand it over; `time.sleep(0)` does not either on Python 3.10, and
is a bare `Sleep(0)` on Windows), short enough to cost little (Linux rounds it up to about
50 µs, its default timer slack). Windows before 3.11 sleeps whole milliseconds: 0 there."""

if sys.platform == "win32" and sys.version_info < (3, 11):  # pragma: no cover
    PAUSE = 0.0

# Free-threaded builds (3.13t, 3.14t) run without the GIL unless an extension turns it on:
# nothing to yield then. Asked at each pace, since an import may turn it on at any time.
_gil_enabled = getattr(sys, "_is_gil_enabled", None)

# The thread's CPU time; on Windows the wall clock, since GetThreadTimes counts in scheduler
# ticks (15.6 ms by default), far coarser than a slice.
_clock = time.perf_counter if sys.platform == "win32" else time.thread_time


_local = threading.local()


@contextmanager
def sharing(share: float) -> Iterator[None]:
    """Within the block, the pacers this thread makes keep their loop's work to `share` (0-1] of the wall clock."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share!r}")
    outer = getattr(_local, "share", 1.0)
    _local.share = share
    try:
        yield
    finally:
        _local.share = outer


def current_share() -> float:
    """The share of the wall clock this thread's paced loops may work for now (1.0 outside `sharing`)."""
    share: float = getattr(_local, "share", 1.0)
    return share


class GilPacer:
    """Call `pace()` between units of work; it yields the GIL once the thread has worked `slice`
    seconds (of CPU time) since the pacer was made or last yielded. One pacer per loop, used
    by the thread that made it."""

    __slots__ = ("_rest", "_since", "slice", "yields")

    def __init__(self, slice: float | None = None) -> None:
        self.slice = SLICE if slice is None else slice
        self._rest = 1 / current_share() - 1
        """Seconds of pause per second of work (0: the briefest yield)."""
        self.yields = 0
        """How many times `pace()` yielded."""
        self._since = _clock()

    def pace(self) -> None:
        """Yields the GIL if this thread has worked for a slice (without a GIL: does nothing)."""
        worked = _clock() - self._since
        if worked >= self.slice:
            if self._rest:
                # With or without a GIL: the machine's CPUs are shared too.
                time.sleep(worked * self._rest)
            elif _gil_enabled is not None and not _gil_enabled():
                return
            else:
                time.sleep(PAUSE)
            self.yields += 1
            self._since = _clock()
