"""One rule for numbers of seconds and for counts, wherever an option takes one.

Every option of the library that takes seconds or an int is checked by `lazycache._checks`:
the same bad value raises the same exception (TypeError for the wrong type, ValueError out of
range) naming the option, whether it is given to a cache, a store, a channel or a call.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest

from lazycache import MemoryStore
from lazycache._checks import MAX_SECONDS, MAX_WAIT
from lazycache.coherence.channel import ChannelSettings
from lazycache.stores.redis import RedisStore
from lazycache.stores.sqlalchemy import SQLAlchemyStore

NO_SERVER = "redis://127.0.0.1:1/0"  # RedisStore(cluster=False) connects on first use only

Make = Callable[[type, Any], Any]
"""make(cache_cls, value): gives `value` to one option; returns what must be closed, if anything."""


def cache_option(name: str) -> Make:
    return lambda cls, value: cls(MemoryStore(), **{"write_interval": 3600, name: value})


def cache_call(method: str, *args: Any, keyword: str = "timeout") -> Make:
    def make(cls: type, value: Any) -> Any:
        cache = cls(MemoryStore(), write_interval=3600)
        try:
            getattr(cache, method)(*args, **{keyword: value})
        finally:
            if not cache.closed:
                cache.close()

    return make


WAITS: dict[str, Make] = {
    "write_interval": cache_option("write_interval"),
    "prune_interval": cache_option("prune_interval"),
    "block_timeout": cache_option("block_timeout"),
    "exit_timeout": cache_option("exit_timeout"),
    "retry_initial": lambda cls, value: cls(
        MemoryStore(), write_interval=3600, retry_initial=value, retry_max=MAX_WAIT
    ),
    "flush(timeout)": cache_call("flush"),
    "close(timeout)": cache_call("close"),
    "ping_interval": lambda cls, value: ChannelSettings(ping_interval=value),
    "reconnect_initial": lambda cls, value: ChannelSettings(
        reconnect_initial=value, reconnect_max=MAX_WAIT
    ),
    "ping_timeout": lambda cls, value: ChannelSettings(ping_timeout=value),
}
"""Options in seconds that a thread waits: at most MAX_WAIT."""

DEADLINES: dict[str, Make] = {
    "expire_after_write": cache_option("expire_after_write"),
    "expire_after_access": cache_option("expire_after_access"),
    "set(ttl)": cache_call("set", "k", 1, keyword="ttl"),
    "ttl (Redis)": lambda cls, value: RedisStore(NO_SERVER, "checks:", cluster=False, ttl=value),
}
"""Options in seconds only compared with a clock: at most MAX_SECONDS."""

SECONDS = {**WAITS, **DEADLINES}

POSITIVE_INTS: dict[str, Make] = {
    "maxsize": cache_option("maxsize"),
    "max_pending": cache_option("max_pending"),
    "batch_size": cache_option("batch_size"),
    "chunk_size (SQL)": lambda cls, value: SQLAlchemyStore("sqlite://", "t", chunk_size=value),
    "chunk_size (Redis)": lambda cls, value: RedisStore(
        NO_SERVER, "checks:", cluster=False, chunk_size=value
    ),
}

COUNTS: dict[str, Make] = {
    "max_retries": cache_option("max_retries"),
    "max_backlog": lambda cls, value: ChannelSettings(max_backlog=value),
}
"""Ints of 0 or more."""

TAKES_NONE = {
    "expire_after_write",
    "expire_after_access",
    "set(ttl)",
    "ping_timeout",
    "ttl (Redis)",
    "maxsize",
    "max_pending",
    "max_retries",
    "flush(timeout)",
    "close(timeout)",
}
"""Options where None is a value (no limit, no deadline) rather than a wrong type."""


def option_name(where: str) -> str:
    """The option's name as its error message says it: "flush(timeout)" -> "timeout"."""
    word = where.split(" ")[0]
    return word[word.index("(") + 1 : -1] if "(" in word else word


def refused(make: Make, cache_cls: type, value: Any) -> BaseException:
    with pytest.raises((TypeError, ValueError)) as info:
        make(cache_cls, value)
    return info.value


def accepted(make: Make, cache_cls: type, value: Any) -> None:
    made = make(cache_cls, value)
    if made is not None and hasattr(made, "close"):
        made.close()


@pytest.mark.parametrize("where", sorted(SECONDS))
def test_seconds_of_the_wrong_type_or_not_above_zero_are_refused_alike(cache_cls, where) -> None:
    make = SECONDS[where]
    name = option_name(where)
    for value in (True, "1", [1]) + (() if where in TAKES_NONE else (None,)):
        error = refused(make, cache_cls, value)
        assert type(error) is TypeError, (where, value, error)
        assert str(error).startswith(f"{name} must be a number of seconds"), error
    for value in (0, 0.0, -1, -0.5, math.nan):
        error = refused(make, cache_cls, value)
        assert type(error) is ValueError, (where, value, error)
        assert str(error).startswith(f"{name} must be a positive"), error
        assert f"got {value!r}" in str(error)
    for value in (0.001, 2, 1e6):
        accepted(make, cache_cls, value)


@pytest.mark.parametrize("where", sorted(SECONDS))
def test_seconds_beyond_the_longest_time_are_refused(cache_cls, where) -> None:
    # Infinity was once taken, and killed the writer thread (OverflowError in its wait).
    most = MAX_WAIT if where in WAITS else MAX_SECONDS
    for value in (math.inf, most * 2):
        error = refused(SECONDS[where], cache_cls, value)
        assert type(error) is ValueError, (where, value, error)
        assert f"at most {most}" in str(error), error
    accepted(SECONDS[where], cache_cls, most)


@pytest.mark.parametrize("where", sorted({**POSITIVE_INTS, **COUNTS}))
def test_ints_of_the_wrong_type_or_too_small_are_refused_alike(cache_cls, where) -> None:
    make = {**POSITIVE_INTS, **COUNTS}[where]
    name = option_name(where)
    minimum = 1 if where in POSITIVE_INTS else 0
    for value in (True, "10", 10.0, [10]) + (() if where in TAKES_NONE else (None,)):
        error = refused(make, cache_cls, value)
        assert type(error) is TypeError, (where, value, error)
        assert str(error).startswith(f"{name} must be an int"), error
    for value in (minimum - 1, -5):
        error = refused(make, cache_cls, value)
        assert type(error) is ValueError, (where, value, error)
        assert str(error).startswith(f"{name} must be an int, {minimum} or more"), error
    for value in (minimum, 1000):
        accepted(make, cache_cls, value)


@pytest.mark.parametrize("where", sorted(TAKES_NONE))
def test_none_is_taken_where_it_means_no_limit(cache_cls, where) -> None:
    accepted({**SECONDS, **POSITIVE_INTS, **COUNTS}[where], cache_cls, None)
