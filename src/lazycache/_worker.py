"""A background thread that runs one method of its owner periodically or when woken.

It holds only weak references to the owner between runs, so a cache that the
program drops is garbage-collected (and flushed by its finaliser) even though
its threads are alive. The method's return value is the contract: a `Backoff`
(seconds to wait after a failure) makes the next run wait that long, ignoring
wake-ups before then, so that a store that is down is not hammered by every
write; `None` means "run again at the next wake-up or interval". Anything else
is a programming error, reported once in the log and treated as `None`: a
count, say, must never be mistaken for a pause.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable, NewType, Optional

Backoff = NewType("Backoff", float)
"""Seconds a failing background job asks to wait before its next run."""

Run = Callable[[], Optional[Backoff]]


class Worker:
    def __init__(
        self,
        run: Run,
        interval: float,
        name: str,
        *,
        while_backing_off: Callable[[], None] | None = None,
    ) -> None:
        """`run` and `while_backing_off` are bound methods of the owner, held weakly."""
        self._run_once = weakref.WeakMethod(run)
        self._tick = None if while_backing_off is None else weakref.WeakMethod(while_backing_off)
        self._interval = interval
        self._wakeup = threading.Event()
        self._stopping = False
        self._complained = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        # "lazycache-writer" logs as lazycache.writer: each part's logger can be tuned alone.
        self._log = logging.getLogger(name.replace("-", ".", 1))

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stops the thread after its current run; waits for it unless called from it."""
        self._stopping = True
        self._wakeup.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        wait = self._interval
        not_before = 0.0
        while True:
            self._wakeup.wait(wait)
            if self._stopping:
                return
            early = not_before - time.monotonic()
            if early > 0:  # woken during a backoff: keep waiting
                self._wakeup.clear()
                wait = min(early, self._interval)
                if self._tick is not None:
                    tick = self._tick()
                    if tick is None:
                        return  # the owner is gone
                    tick()
                    del tick
                continue
            self._wakeup.clear()
            run = self._run_once()
            if run is None:
                return  # the owner is gone
            backoff: object = None
            try:
                backoff = run()
            except BaseException:  # the thread must carry on; the method logs its own keys
                self._log.exception("%s: unexpected error", self._thread.name)
            finally:
                del run
            pause = self._checked(backoff)
            if pause:
                wait = min(pause, self._interval)
                not_before = time.monotonic() + pause
            else:
                wait = self._interval
                not_before = 0.0

    def _checked(self, backoff: object) -> float | None:
        if backoff is None or (type(backoff) is float and backoff >= 0):
            return backoff
        if not self._complained:
            self._complained = True
            self._log.error(
                "%s: its job returned %r, not a backoff in seconds or None; ignored",
                self._thread.name,
                backoff,
            )
        return None
