"""A background thread that runs one method of its owner periodically or when woken.

It holds only a weak reference to the owner between runs, so a cache that the
program drops is garbage-collected (and flushed by its finaliser) even though
its threads are alive. If the method returns a number of seconds (a backoff
after a failure), the next run waits that long, and wake-ups before then are
ignored: a store that is down is not hammered by every write.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

log = logging.getLogger("lazycache")


class Worker:
    def __init__(self, owner: Any, method: str, interval: float, name: str) -> None:
        self._owner = weakref.ref(owner)
        self._method = method
        self._interval = interval
        self._wakeup = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

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

    def _run(self) -> None:
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
                owner = self._owner()
                if owner is None:
                    return
                owner._heartbeat()  # the clock keeps time during a long backoff
                del owner
                continue
            self._wakeup.clear()
            owner = self._owner()
            if owner is None:
                return
            backoff = None
            try:
                backoff = getattr(owner, self._method)()
            except BaseException:  # the thread must carry on; the method logs its own keys
                log.exception(
                    "lazycache %s: unexpected error in %s", self._thread.name, self._method
                )
            finally:
                del owner
            if backoff:
                wait = min(backoff, self._interval)
                not_before = time.monotonic() + backoff
            else:
                wait = self._interval
                not_before = 0.0
