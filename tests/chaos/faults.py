"""The nemesis's tools: a TCP proxy with faults, a slow store, hostile keys and values no store can take.

Everything is real: the proxy forwards real connections to the real servers on loopback, the
slow store is the real store with a delay in front of its writes, and the bad values are ones
a user can pass.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

from lazycache import Store
from lazycache.stores.base import GeneratedFields


class SlowStore(Store[Any, Any]):
    """The real store, with `delay` seconds added before each write while the nemesis says so.

    The delay lives in shared memory: a forked child sees the parent's nemesis heal it, as it
    would see a real network or server recover.
    """

    def __init__(self, inner: Store[Any, Any]) -> None:
        self.inner = inner
        self._delay = multiprocessing.RawValue("d", 0.0)

    @property
    def delay(self) -> float:
        return float(self._delay.value)

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._delay.value = seconds

    def load_many(self, keys: Sequence[Any]) -> Any:
        return self.inner.load_many(keys)

    def write(
        self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]
    ) -> GeneratedFields | None:
        delay = self.delay
        if delay:
            time.sleep(delay)
        return self.inner.write(upserts, deletes)

    def is_recoverable(self, exc: BaseException) -> bool:
        return self.inner.is_recoverable(exc)

    def after_fork_in_child(self) -> None:
        self.inner.after_fork_in_child()  # the child must not use the parent's connections

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"SlowStore({self.inner!r})"


class HostileError(Exception):
    """Raised by a hostile key's __hash__ or __eq__."""


class HostileKey:
    """A key a user may pass by mistake: its hash works `hash_calls` times, then raises; its
    __eq__ raises against anything but itself. No store can write it (it is no str)."""

    def __init__(self, n: int, hash_calls: int) -> None:
        self.n = n
        self.hash_calls = hash_calls

    def __hash__(self) -> int:
        if self.hash_calls <= 0:
            raise HostileError(f"__hash__ of {self!r}")
        self.hash_calls -= 1
        return hash(("hostile", self.n))

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise HostileError(f"__eq__ of {self!r}")

    def __repr__(self) -> str:
        return f"HostileKey({self.n})"


def rejected_value(kind: int) -> Any:
    """A value the JSON serializer refuses (so does a row table: it is no dict of columns)."""
    return [float("nan"), {1, 2}, object(), b"raw bytes"][kind % 4]


def unstable_value(write_id: str, kind: int) -> Any:
    """A value JSON accepts but gives back as another type (a tuple as a list, int dict keys as str)."""
    return [(write_id, 1), {1: write_id}, {"inner": (write_id,)}][kind % 3]
