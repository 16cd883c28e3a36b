"""RedisCoherence in one process: caches over one store, each with its own channel object.

The store is the shared local Redis (or a MemoryStore where the store does not matter);
tests that kill the subscriber's connection, pause or stop the server carry the channel
on a private redis-server (tests/redis_cluster.py), so the shared server is never disturbed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import threading
from typing import Any

import pytest
from helpers import TIMEOUT, wait_until
from redis_cluster import private_redis  # noqa: F401  (fixture)
from services import delete_redis_keys, redis_client, redis_url, unique_name

from lazycache import MemoryStore
from lazycache.coherence.channel import ChannelSettings
from lazycache.coherence.message import (
    all_message,
    decode_message,
    encode_keys,
    encode_message,
    envelope,
)
from lazycache.coherence.redis import RedisCoherence
from lazycache.stores.redis import RedisStore


class CountingStore(RedisStore):
    """A real RedisStore that counts its read-through loads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loads = 0
        self._count_lock = threading.Lock()

    def load_many(self, keys: Any) -> Any:
        with self._count_lock:
            self.loads += 1
        return super().load_many(keys)

    def load_many_with_ttls(self, keys: Any) -> Any:  # what a read-through calls
        with self._count_lock:
            self.loads += 1
        return super().load_many_with_ttls(keys)


@pytest.fixture
def names() -> Any:
    """(key prefix, channel) of this test's own; the keys are deleted at teardown."""
    prefix = unique_name("lcco") + ":"
    yield prefix, prefix + "invalidate"
    client = redis_client()
    try:
        delete_redis_keys(client, prefix)
    finally:
        client.close()


@pytest.fixture
def pair(make_cache: Any, names: Any) -> Any:
    """pair(channel_url=None, **options) -> (A, B): two caches over one RedisStore, each on its own channel object."""
    prefix, channel = names
    stores: list[RedisStore] = []

    def make(channel_url: str = "", store: Any = None, **options: Any) -> Any:
        caches = []
        for _ in range(2):
            if store is None:
                s = CountingStore(redis_url(), prefix, cluster=False)
                stores.append(s)
            else:
                s = store
            options.setdefault("write_interval", 3600)
            caches.append(
                make_cache(
                    s, coherence=RedisCoherence(channel_url or redis_url(), channel), **options
                )
            )
        return caches

    yield make
    for store in stores:
        store.close()


def heard(cache: Any, messages: int) -> None:
    """Waits until cache's channel has handled `messages` messages from others (so that a
    later read is not undone by an invalidation still on its way)."""
    wait_until(
        lambda: cache._coherence.received >= messages,
        message=f"{messages} message(s) never arrived",
    )


# ----------------------------------------------------------------------------- invalidation


def test_a_write_in_one_cache_invalidates_the_other(pair) -> None:
    a, b = pair()
    a["k"] = "v1"
    a.flush()
    heard(b, 1)
    assert b["k"] == "v1"
    loads = b.store.loads
    assert b["k"] == "v1" and b.store.loads == loads  # cached: served from memory
    a["k"] = "v2"
    a.flush()
    wait_until(lambda: b["k"] == "v2", message="B never saw A's write")
    assert b.store.loads == loads + 1  # exactly one read-through after the invalidation


def test_deletes_are_published_too(pair) -> None:
    a, b = pair()
    a.update({"x": 1, "y": 2})
    a.flush()
    heard(b, 1)
    assert b["x"] == 1 and b["y"] == 2
    del a["x"]
    a.flush()
    wait_until(lambda: "x" not in b, message="B never learnt of the delete")
    assert b["y"] == 2


def test_a_pending_write_survives_an_invalidation(pair) -> None:
    a, b = pair()
    a.update({"k": "base", "sentinel": 0})
    a.flush()
    heard(b, 1)
    assert b["sentinel"] == 0
    b["k"] = "mine"  # pending in B (its writer is idle)
    a.update({"k": "theirs", "sentinel": 1})
    a.flush()
    wait_until(lambda: b["sentinel"] == 1, message="B never got A's batch")  # same message as k's
    assert b["k"] == "mine" and b.pending == 1
    b.flush()  # B commits after A: last committed batch wins, in the store and in A
    wait_until(lambda: a["k"] == "mine", message="A never saw B's later write")
    assert a.store.load_many(["k"]) == {"k": "mine"}


def test_a_cache_does_not_hear_itself(pair) -> None:
    a, b = pair()
    for i in range(3):
        a[f"k{i}"] = i
        a.flush()
    wait_until(lambda: b._coherence.received == 3)
    assert a._coherence.received == 0 and a._coherence.published == 3
    assert b._coherence.published == 0


def test_a_channel_object_serves_one_cache(make_cache, names) -> None:
    channel = RedisCoherence(redis_url(), names[1])
    make_cache(MemoryStore(), coherence=channel)
    with pytest.raises(RuntimeError, match="one channel object per cache"):
        make_cache(MemoryStore(), coherence=channel)


# ----------------------------------------------------------------------------- message format


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


KEYS = [
    "plain",
    "",
    "ключ 🔑",
    0,
    -7,
    2**70,
    1.5,
    True,
    None,
    b"\x00\xffbytes",
    ("a", 1, ("nested", b"x")),
    (),
]


def test_json_keys_come_back_as_the_same_objects() -> None:
    message = encode_message("me", KEYS, "json")
    assert message == envelope(
        "me", encode_keys(KEYS, "json"), "json"
    )  # one dumps, or one per key (for splitting)
    sender, keys = decode_message(message, "json")
    assert sender == "me" and keys == KEYS
    assert [type(k) for k in keys] == [type(k) for k in KEYS]


def test_pickled_keys_round_trip_only_when_asked_for() -> None:
    message = envelope("me", encode_keys([Point(1, 2), "s"], "pickle"), "pickle")
    assert decode_message(message, "pickle") == ("me", [Point(1, 2), "s"])
    with pytest.raises(ValueError, match="never unpickles"):
        decode_message(message, "json")
    with pytest.raises(TypeError):
        encode_keys([Point(1, 2)], "json")
    with pytest.raises(ValueError):
        decode_message(b"[1, 2]", "json")


def test_keys_without_a_json_form_invalidate_everything(pair, names, caplog) -> None:
    a, b = pair(store=MemoryStore())
    a.update({"x": 1, "y": 2})
    a.flush()
    heard(b, 1)
    assert b["x"] == 1 and b["y"] == 2
    b["mine"] = "pending"
    with caplog.at_level(logging.ERROR, logger="lazycache"):
        a[Point(1, 2)] = "a point"
        a.flush()
        a[Point(3, 4)] = "another"
        a.flush()
    wait_until(lambda: b._coherence.received == 3)
    assert sorted(map(str, b.keys())) == ["mine"]  # every clean entry dropped, the pending one kept
    assert sum("keys='pickle'" in r.getMessage() for r in caplog.records) == 1  # said once
    assert b.coherent


def test_pickled_keys_between_caches(make_cache, names) -> None:
    store = MemoryStore()
    a = make_cache(
        store, coherence=RedisCoherence(redis_url(), names[1], keys="pickle"), write_interval=3600
    )
    b = make_cache(
        store, coherence=RedisCoherence(redis_url(), names[1], keys="pickle"), write_interval=3600
    )
    a[Point(1, 2)] = "v1"
    a["other"] = 0
    a.flush()
    heard(b, 1)
    assert b[Point(1, 2)] == "v1" and b["other"] == 0
    a[Point(1, 2)] = "v2"
    a.flush()
    wait_until(lambda: b[Point(1, 2)] == "v2")
    assert "other" in list(b.keys())  # only the key named was dropped


TRIPPED: list[str] = []


class Tripwire:
    def __reduce__(self) -> Any:
        return (TRIPPED.append, ("unpickled!",))


def test_a_json_channel_never_unpickles_and_drops_everything_instead(pair, names, caplog) -> None:
    a, b = pair(store=MemoryStore())
    a.update({"x": 1, "y": 2})
    a.flush()
    assert b["x"] == 1
    hostile = envelope(
        "someone",
        [json.dumps(__import__("base64").b64encode(pickle.dumps(Tripwire())).decode())],
        "pickle",
    )
    client = redis_client()
    wait_until(lambda: b._coherence.received == 1)  # A's batch
    try:
        with caplog.at_level(logging.WARNING, logger="lazycache"):
            client.publish(names[1], hostile)
            wait_until(lambda: b._coherence.received == 2)
            assert list(b.keys()) == []
            client.publish(names[1], b"\xff not even utf-8")
            client.publish(names[1], all_message("someone else"))
            wait_until(lambda: b._coherence.received == 4)
    finally:
        client.close()
    assert TRIPPED == []
    # "drop everything" goes through lost-then-restored: coherent again right after
    wait_until(lambda: b.coherent)
    assert list(b.keys()) == []
    assert any("unreadable message" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- losing the channel


def test_killing_the_subscriber_connection_is_noticed_and_survived(
    make_cache, names, private_redis, caplog
) -> None:
    prefix, channel = names
    store = CountingStore(redis_url(), prefix, cluster=False)
    try:
        writer = make_cache(
            store, coherence=RedisCoherence(private_redis.url, channel), write_interval=3600
        )
        reader = make_cache(
            store, coherence=RedisCoherence(private_redis.url, channel), write_interval=3600
        )
        writer.update({"k1": 1, "k2": 2})
        writer.flush()
        heard(reader, 1)
        assert reader["k1"] == 1 and reader["k2"] == 2
        reader["mine"] = "pending"
        admin = private_redis.client()
        try:
            with caplog.at_level(logging.WARNING, logger="lazycache"):
                # Kill every pub/sub connection and keep the server from answering the
                # reconnection for a while, in one transaction so nothing slips in between.
                pipe = admin.pipeline(transaction=True)
                pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                pipe.execute_command("CLIENT", "PAUSE", "1500", "ALL")
                killed, _ = pipe.execute()
                assert killed == 2
                # A loss is counted once the cache has handled it (dropped its clean entries).
                wait_until(
                    lambda: reader._coherence.losses == 1,
                    message="the reader never noticed its channel died",
                )
                assert not reader.coherent
                assert sorted(reader.keys()) == [
                    "mine"
                ]  # clean entries dropped, the pending write kept
                loads = store.loads
                assert reader["k1"] == 1 and reader["k1"] == 1 and reader["k2"] == 2
                assert store.loads == loads + 3  # not caching: every read went to the store
                assert reader["mine"] == "pending"
                wait_until(
                    lambda: reader.coherent, timeout=TIMEOUT, message="the channel never came back"
                )
                # Each cache says so once it is coherent again, from its channel's thread.
                wait_until(
                    lambda: (
                        sum("coherence channel is back" in r.getMessage() for r in caplog.records)
                        == 2
                    ),
                    message="a cache did not log the return of its channel",
                )
        finally:
            admin.close()
        assert reader._coherence.losses == 1
        wait_until(lambda: writer._coherence.losses == 1)  # its own subscriber, its own pace
        messages = [r.getMessage() for r in caplog.records]
        assert any("coherence subscription is down" in m for m in messages)
        loads = store.loads
        assert reader["k1"] == 1 and reader["k1"] == 1
        assert store.loads == loads + 1  # caching again
        writer["k1"] = "new"
        writer.flush()
        wait_until(lambda: reader["k1"] == "new", message="invalidations did not resume")
        assert reader.pending == 1
    finally:
        store.close()


def test_a_server_restart_and_a_channel_down_at_start(make_cache, names, private_redis) -> None:
    prefix, channel = names
    store = RedisStore(redis_url(), prefix, cluster=False)
    try:
        port = private_redis.port
        private_redis.stop()
        options = dict(ping_interval=0.2, reconnect_max=0.2, connect_timeout=0.5)
        a = make_cache(
            store,
            coherence=RedisCoherence(f"redis://127.0.0.1:{port}/0", channel, **options),
            write_interval=3600,
        )
        assert not a.coherent  # no channel: the cache reads through from the start
        b = make_cache(
            store,
            coherence=RedisCoherence(f"redis://127.0.0.1:{port}/0", channel, **options),
            write_interval=3600,
        )
        a["k"] = 1
        a.flush()  # committed; the publish fails and is kept for later
        assert b["k"] == 1 and "k" not in list(b.keys())
        private_redis.start(port)
        wait_until(lambda: a.coherent and b.coherent, message="the channels never reconnected")
        wait_until(
            lambda: a._coherence.published == 1, message="the publish kept for later was never sent"
        )
        # The late invalidation may reach B after a read has cached k and drop it again, so
        # read until k stays: B caches reads once its channel is back.
        wait_until(
            lambda: b["k"] == 1 and "k" in list(b.keys()), message="B never cached reads again"
        )
        a["k"] = 2
        a.flush()
        wait_until(lambda: b["k"] == 2)
        private_redis.stop()
        wait_until(lambda: not b.coherent and not a.coherent)
        private_redis.start(port)
        wait_until(lambda: a.coherent and b.coherent)
        a["k"] = 3
        a.flush()
        wait_until(lambda: b["k"] == 3)
    finally:
        store.close()


@pytest.mark.parametrize("given_as", ["keywords", "settings"])
def test_a_server_that_stops_answering_is_declared_lost(
    make_cache, names, private_redis, given_as
) -> None:
    # The default ping_timeout (3 s) would outlast the pause: noticing it proves the
    # channel took its timings, whichever way they were given.
    timings: dict[str, Any] = {"ping_interval": 0.1, "ping_timeout": 0.3}
    if given_as == "settings":
        channel = RedisCoherence(
            private_redis.url, names[1], settings=ChannelSettings(**timings), connect_timeout=0.5
        )
    else:
        channel = RedisCoherence(private_redis.url, names[1], **timings, connect_timeout=0.5)
    assert channel.settings.ping_deadline == 0.3
    cache = make_cache(MemoryStore({"k": 1}), coherence=channel)
    assert cache["k"] == 1 and list(cache.keys()) == ["k"]
    admin = private_redis.client()
    try:
        admin.execute_command(
            "CLIENT", "PAUSE", "1500", "ALL"
        )  # the connection stays open, nothing answers
        wait_until(lambda: channel.losses == 1, message="an unanswered PING went unnoticed")
        assert not cache.coherent and list(cache.keys()) == []
        wait_until(lambda: cache.coherent, message="the channel never came back after the pause")
    finally:
        admin.close()


class CommitThenHoldStore(MemoryStore):
    """Commits a write, then (when armed) holds before returning, like a reply still on its way."""

    def __init__(self, data: Any = None) -> None:
        super().__init__(data)
        self.armed = False
        self.committed = threading.Event()
        self.release = threading.Event()

    def write(self, upserts: Any, deletes: Any) -> Any:
        result = super().write(upserts, deletes)
        if self.armed:
            self.armed = False
            self.committed.set()
            assert self.release.wait(TIMEOUT)
        return result


def test_a_loss_is_counted_once_it_has_been_handled(names, private_redis) -> None:
    # Like `received`, `losses` counts what was handled: whoever waits for it sees the
    # cache's clean entries already dropped. on_lost is held here, to look in between.
    channel = RedisCoherence(private_redis.url, names[1], connect_timeout=0.5)
    entered, release = threading.Event(), threading.Event()

    def on_lost() -> None:
        entered.set()
        release.wait(TIMEOUT)

    channel.start(lambda keys: None, on_lost, lambda: None)
    admin = private_redis.client()
    try:
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
        assert entered.wait(TIMEOUT), "the loss of the subscription went unnoticed"
        assert channel.losses == 0, "the loss was counted before it was handled"
        release.set()
        wait_until(lambda: channel.losses == 1)
    finally:
        release.set()
        admin.close()
        channel.close()


def test_an_invalidation_during_our_own_commit_is_not_lost(make_cache, names) -> None:
    shared = {}
    a_store, b_store = MemoryStore(), CommitThenHoldStore()
    a_store.data = b_store.data = shared  # one store, two objects: only B's writes are held
    a_store._lock = b_store._lock
    a = make_cache(a_store, coherence=RedisCoherence(redis_url(), names[1]), write_interval=3600)
    b = make_cache(b_store, coherence=RedisCoherence(redis_url(), names[1]), write_interval=3600)
    b["k"] = "mine"
    b_store.armed = True
    flushing = threading.Thread(target=b.flush)
    flushing.start()
    assert b_store.committed.wait(TIMEOUT)  # B's value is in the store; B has not heard back yet
    a["k"] = "theirs"
    a.flush()  # A commits after B: the store ends with A's value
    heard(b, 1)
    b_store.release.set()
    flushing.join(TIMEOUT)
    assert shared["k"] == "theirs"
    assert b["k"] == "theirs"
