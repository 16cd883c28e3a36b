"""Bounded holds of the GIL by the cache's background work (the writer's batches).

A thread doing Python work (serialising a batch, a driver encoding it) keeps the GIL until
the interpreter forces a switch, every `sys.getswitchinterval()` (5 ms by default), or until
it blocks. Meanwhile every other thread that wants to run waits: an asyncio loop's
callbacks, a threaded server's request handlers. And a driver that releases the GIL only
around short C calls (psycopg's pure-Python mode over ctypes, sqlite3's steps) makes it
worse: the waiting thread is woken at each release, finds the GIL taken again, and starts
its 5 ms wait over, so the forced switch may not come before the batch ends.

`GilPacer.pace()`, called between bounded units of work, yields the GIL once `SLICE`
seconds have passed since the last yield: no stretch of the writer's work then holds it much
longer than that, whatever the switch interval. The process-wide switch interval is left
alone (it is the application's, and lowering it costs every thread).
"""

from __future__ import annotations

import sys
import time

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


class GilPacer:
    """Call `pace()` between units of work; it yields the GIL once `slice` seconds have passed
    since the pacer was made or last yielded. One pacer per loop, used by one thread."""

    __slots__ = ("_since", "slice", "yields")

    def __init__(self, slice: float | None = None) -> None:
        self.slice = SLICE if slice is None else slice
        self.yields = 0
        """How many times `pace()` yielded."""
        self._since = time.perf_counter()

    def pace(self) -> None:
        """Yields the GIL if this thread has held it for a slice (without a GIL: does nothing)."""
        if time.perf_counter() - self._since >= self.slice:
            if _gil_enabled is not None and not _gil_enabled():
                return
            time.sleep(PAUSE)
            self.yields += 1
            self._since = time.perf_counter()
