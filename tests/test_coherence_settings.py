"""ChannelSettings: the channel options in one object, checked where they are given, and taken
by both transports whether passed as `settings=` or as keywords."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from helpers import wait_until
from services import postgres_url, redis_url, unique_name

from lazycache import MemoryStore
from lazycache.coherence.channel import ChannelCoherence, ChannelOptions, ChannelSettings
from lazycache.coherence.postgres import PostgresNotifyCoherence
from lazycache.coherence.redis import RedisCoherence

LIBPQ_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclasses.dataclass(frozen=True)
class Point:
    """A key JSON cannot name: it travels only with keys="pickle"."""

    x: int
    y: int


def test_the_defaults() -> None:
    settings = ChannelSettings()
    assert settings.keys == "json" and settings.max_backlog == 100_000
    assert settings.ping_timeout is None and settings.ping_deadline == 3 * settings.ping_interval
    assert ChannelSettings(ping_interval=2).ping_deadline == 6.0
    assert ChannelSettings(ping_interval=2, ping_timeout=0.5).ping_deadline == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.keys = "pickle"  # type: ignore[misc]


def test_the_keywords_are_the_settings_fields() -> None:
    fields = {field.name for field in dataclasses.fields(ChannelSettings)}
    assert set(ChannelOptions.__annotations__) == fields


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"keys": "yaml"}, ValueError, "keys must be one of"),
        ({"ping_interval": 0}, ValueError, "ping_interval must be a positive number of seconds"),
        ({"ping_interval": -1.0}, ValueError, "ping_interval must be a positive number"),
        ({"ping_interval": float("nan")}, ValueError, "ping_interval must be a positive number"),
        ({"ping_interval": True}, TypeError, "ping_interval must be a number of seconds, not bool"),
        ({"ping_interval": "1"}, TypeError, "ping_interval must be a number of seconds, not str"),
        (
            {"ping_timeout": 0},
            ValueError,
            r"ping_timeout must be a positive number of seconds, at most \d+, or None, got 0",
        ),
        ({"ping_timeout": "1"}, TypeError, "ping_timeout must be a number of seconds or None"),
        ({"reconnect_initial": 0}, ValueError, "reconnect_initial must be a positive number"),
        ({"reconnect_max": -2}, ValueError, "reconnect_max must be a positive number"),
        ({"max_backlog": -1}, ValueError, "max_backlog must be an int, 0 or more, got -1"),
        ({"max_backlog": 1.5}, TypeError, "max_backlog must be an int, not float"),
        ({"max_backlog": None}, TypeError, "max_backlog must be an int, not NoneType"),
    ],
)
def test_a_bad_value_is_refused_where_it_is_given(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    # As every option of the library: ValueError for a value out of range, TypeError for one
    # of the wrong type (tests/test_validation.py).
    with pytest.raises(error, match=message):
        ChannelSettings(**options)
    # The same check, whichever way the option reaches a channel; nothing is connected first.
    with pytest.raises(error, match=message):
        RedisCoherence("redis://127.0.0.1:1/0", "c", **options)
    with pytest.raises(error, match=message):
        PostgresNotifyCoherence(LIBPQ_URL, "c", settings=ChannelSettings(), **options)


def test_keywords_override_the_settings_given() -> None:
    shared = ChannelSettings(ping_interval=0.5, max_backlog=10)
    one = RedisCoherence("redis://127.0.0.1:6379/0", "c", settings=shared)
    two = RedisCoherence("redis://127.0.0.1:6379/0", "c", settings=shared, max_backlog=20)
    pg = PostgresNotifyCoherence(LIBPQ_URL, "c", keys="pickle")
    try:
        assert one.settings is shared
        assert two.settings == dataclasses.replace(shared, max_backlog=20)
        assert shared.max_backlog == 10  # untouched
        assert pg.settings == ChannelSettings(keys="pickle")
    finally:
        for channel in (one, two, pg):
            channel.close()


def test_a_misspelt_option_or_a_wrong_settings_object_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="ping_intervall"):
        RedisCoherence("redis://127.0.0.1:1/0", "c", ping_intervall=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="ping_intervall"):
        PostgresNotifyCoherence(LIBPQ_URL, "c", ping_intervall=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="settings must be a ChannelSettings, not dict"):
        RedisCoherence("redis://127.0.0.1:1/0", "c", settings={"keys": "json"})  # type: ignore[arg-type]


def test_a_channel_of_your_own_takes_the_old_keywords_too() -> None:
    # A subclass written against the old signature calls super().__init__(keys=..., ...).
    class Silent(ChannelCoherence):
        def __init__(self) -> None:
            super().__init__(keys="pickle", ping_interval=0.25, max_backlog=5)

        def _connect(self) -> None: ...
        def _receive(self, timeout: float) -> list[Any]:
            return []

        def _ping(self) -> None: ...
        def _pong_pending(self) -> bool:
            return False

        def _disconnect(self) -> None: ...
        def _send(self, payloads: list[str]) -> None: ...
        def _forget_connections(self) -> None: ...

    assert Silent().settings == ChannelSettings(keys="pickle", ping_interval=0.25, max_backlog=5)


# ----------------------------------------------------------------------------- in use


def redis_channel(name: str, settings: ChannelSettings) -> RedisCoherence:
    return RedisCoherence(redis_url(), name, settings=settings)


def postgres_channel(name: str, settings: ChannelSettings) -> PostgresNotifyCoherence:
    postgres_url()  # skips without the server
    return PostgresNotifyCoherence(LIBPQ_URL, name.replace("-", "_"), settings=settings)


@pytest.mark.parametrize(
    "channel_of", [redis_channel, postgres_channel], ids=["redis", "postgresql"]
)
def test_shared_settings_carry_pickled_keys(make_cache, channel_of) -> None:
    name = unique_name("lcset")
    settings = ChannelSettings(keys="pickle", ping_interval=0.5)
    store = MemoryStore()
    a, b = (
        make_cache(store, coherence=channel_of(name, settings), write_interval=3600)
        for _ in range(2)
    )
    a[Point(1, 2)] = "v1"
    a["other"] = 0
    a.flush()
    wait_until(lambda: b._coherence.received >= 1)
    assert b[Point(1, 2)] == "v1" and b["other"] == 0  # both held clean in B now
    a[Point(1, 2)] = "v2"
    a.flush()
    # Only a pickled key names Point(1, 2): under JSON, B would drop everything instead.
    wait_until(lambda: b._coherence.received >= 2)
    assert list(b.keys()) == ["other"]
    assert b[Point(1, 2)] == "v2"
