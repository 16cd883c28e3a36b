"""A background thread that runs one method of its owner periodically or when woken.

It holds only a weak reference to the owner between runs, so a cache that the
program drops is garbage-collected (and flushed by its finaliser) even though
its threads are alive.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Optional

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

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops the thread after its current run; waits for it unless called from it."""
        self._stopping = True
        self._wakeup.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wakeup.wait(self._interval)
            self._wakeup.clear()
            if self._stopping:
                return
            owner = self._owner()
            if owner is None:
                return
            try:
                getattr(owner, self._method)()
            except BaseException:  # the thread must carry on; the method logs its own keys
                log.exception("lazycache %s: unexpected error in %s", self._thread.name, self._method)
            finally:
                del owner
