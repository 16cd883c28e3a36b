"""What both cores share with each other and with the cache layer above them.

The compiled core (``_core.pyx``) and its pure-Python twin (``_core_py.py``) raise the same
exception and raise the same signal bits; both take them from here, so neither imports
the other. The compiled core copies the signal values into C ints at import (its hot path
reads no Python object).
"""

from __future__ import annotations

from ._checks import check_int_or_none

SIGNAL_PRUNE = 1
"""Passed to the core's ``_wake`` when the map grew past maxsize: the pruner has work."""

SIGNAL_WRITE = 2
"""Passed to the core's ``_wake`` when the dirty queue reached write_threshold: a batch is due."""


class Full(Exception):
    """Raised by a core operation, under the core's lock and before any change, when it would
    add a pending entry beyond max_pending. Not an error: the caller applies its on_full policy
    (without the lock) and tries again."""


def check_limit(name: str, value: int | None) -> int:
    """A core's limit (maxsize, write_threshold, max_pending), checked: a positive int, or None
    for no limit, which the cores hold as 0."""
    return check_int_or_none(name, value) or 0
