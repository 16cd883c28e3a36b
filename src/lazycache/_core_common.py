"""What both cores share with each other and with the cache layer above them.

The compiled core (``_core.pyx``) and its pure-Python twin (``_core_py.py``) raise the same
exception, raise the same signal bits, and check and convert their options the same way;
both take all of it from here, so neither imports the other. The compiled core copies the signal values into C ints at import (its hot path
reads no Python object).
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import MAX_SECONDS, check_int_or_none, check_seconds_or_none

SIGNAL_PRUNE = 1
"""Passed to the core's ``_wake`` when the map grew past maxsize: the pruner has work."""

SIGNAL_WRITE = 2
"""Passed to the core's ``_wake`` when the dirty queue reached write_threshold: a batch is due."""

LATE_TTL_NS = 1_000_000
"""The TTL (ns) of a write that reaches the store after its deadline: 1 ms, the least a store
counting in milliseconds (Redis `PX`, a SQL `expires_at`) keeps. Such a write is still made,
so that it replaces the store's older value, and expires there at once."""


class Full(Exception):
    """Raised by a core operation, under the core's lock and before any change, when it would
    add a pending entry beyond max_pending. Not an error: the caller applies its on_full policy
    (without the lock) and tries again."""


def check_limit(name: str, value: int | None) -> int:
    """A core's limit (maxsize, write_threshold, max_pending), checked: a positive int, or None
    for no limit, which the cores hold as 0."""
    return check_int_or_none(name, value) or 0


def ttl_ns(name: str, seconds: float | None) -> int:
    """A TTL or expire_after_* in seconds, checked, as nanoseconds (0 for None: no expiry).

    A deadline, compared with the clock and never waited for: up to `MAX_SECONDS` everywhere.
    """
    checked = check_seconds_or_none(name, seconds, most=MAX_SECONDS)
    return 0 if checked is None else max(1, math.ceil(checked * 1_000_000_000))


def clock_ns(clock: Any) -> int:
    """What a `clock=` function says now, in nanoseconds (both cores convert through here)."""
    seconds = clock()
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"clock() must return a number of seconds, not {type(seconds).__name__}")
    return int(seconds * 1_000_000_000)
