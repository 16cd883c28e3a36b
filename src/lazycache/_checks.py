"""The checks of numeric arguments: a number of seconds, and an int count or size.

Every option of the library that takes seconds or a count is checked here, so the same bad
value gets the same exception wherever it is given: TypeError for a value of the wrong type
(a bool is not a number here), ValueError for one out of range, each naming the option.
What is accepted:

* seconds: an int or a float above 0 and at most `MAX_WAIT` (NaN and infinity are not: the
  threads wait these times, and a thread cannot wait forever by a timeout), or `MAX_SECONDS`
  for a deadline that is only compared with a clock (a TTL);
* an int: at least `minimum` (1 for a size, 0 for a count that may be none);
* the `_or_none` forms: also None, returned as it is.
"""

from __future__ import annotations

import threading

MAX_SECONDS = 10**9
"""The longest time an option takes, in seconds (about 31 years)."""

MAX_WAIT: int = min(MAX_SECONDS, int(threading.TIMEOUT_MAX))
"""The longest time a thread is asked to wait: `MAX_SECONDS`, or less where a thread cannot
wait that long (`threading.TIMEOUT_MAX`: about 49 days on Windows)."""


def check_seconds(name: str, value: object, *, most: int = MAX_WAIT) -> float:
    """`value` as a float of seconds, above 0 and at most `most`; TypeError or ValueError naming
    `name` otherwise."""
    return _seconds(name, value, most, optional=False)


def check_seconds_or_none(name: str, value: object, *, most: int = MAX_WAIT) -> float | None:
    """None, or `value` as `check_seconds` takes it."""
    return None if value is None else _seconds(name, value, most, optional=True)


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """`value` if it is an int of at least `minimum`; TypeError or ValueError naming `name` otherwise."""
    return _int(name, value, minimum, optional=False)


def check_int_or_none(name: str, value: object, *, minimum: int = 1) -> int | None:
    """None, or `value` as `check_int` takes it."""
    return None if value is None else _int(name, value, minimum, optional=True)


def _seconds(name: str, value: object, most: int, *, optional: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        or_none = " or None" if optional else ""
        raise TypeError(f"{name} must be a number of seconds{or_none}, not {type(value).__name__}")
    if not 0 < value <= most:  # NaN compares false: refused too
        or_none = ", or None" if optional else ""
        raise ValueError(
            f"{name} must be a positive number of seconds, at most {most}{or_none}, got {value!r}"
        )
    return float(value)


def _int(name: str, value: object, minimum: int, *, optional: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        or_none = " or None" if optional else ""
        raise TypeError(f"{name} must be an int{or_none}, not {type(value).__name__}")
    if value < minimum:
        or_none = ", or None" if optional else ""
        raise ValueError(f"{name} must be an int, {minimum} or more{or_none}, got {value!r}")
    return value
