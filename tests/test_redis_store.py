"""RedisStore against the local Redis (127.0.0.1:6379): round trips, keys, serializers, TTLs,
deletes, read-through, poison, error classification, and a private server that goes away.

Every test writes under a key prefix of its own and deletes its keys at teardown. Tests
that stop a server, fill its memory or read its counters use a private redis-server on a
free loopback port (tests/redis_cluster.py), never the shared one.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from helpers import TIMEOUT, close_caches, recording, wait_until
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_cluster import free_port, private_redis  # noqa: F401  (fixture)
from services import delete_redis_keys, redis_client, redis_url, unique_name

from lazycache import MISSING, FlushError, open_redis
from lazycache.coherence.redis import RedisCoherence, default_channel
from lazycache.serializers import SerializationError
from lazycache.stores.redis import (
    RedisKeyError,
    RedisStore,
    TTLError,
    is_recoverable_error,
)


@pytest.fixture
def raw() -> Any:
    """A plain redis-py client on the shared Redis, to look at what the store wrote."""
    client = redis_client()
    yield client
    client.close()


@pytest.fixture
def prefix(raw: Any) -> Any:
    name = unique_name("lctest") + ":"
    yield name
    delete_redis_keys(raw, name)


@pytest.fixture
def make_store(prefix: str) -> Any:
    made: list[RedisStore] = []

    def make(url: str = "", **options: Any) -> RedisStore:
        options.setdefault("prefix", prefix)
        store = RedisStore(url or redis_url(), cluster=False, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def redis_cache(make_cache: Any, make_store: Any) -> Any:
    """make_cache for caches over Redis stores: they are closed before their stores and keys go."""
    make, made = recording(make_cache)
    yield make
    close_caches(made)


VALUES = {
    "alice": {"age": 30, "tags": ["a", "b"], "nested": {"x": 1.5, "none": None}},
    "ключ 🔑": "значение",
    "empty": {},
    "list": [1, 2, 3],
    "zero": 0,
    "false": False,
    "null": None,
}


# ----------------------------------------------------------------------------- round trips


def test_a_new_cache_reads_through_what_another_wrote(make_store, redis_cache, raw, prefix) -> None:
    writer = redis_cache(make_store(), quiet=True)
    writer.update(VALUES)
    result = writer.flush()
    assert result.written == len(VALUES) and result.batches == 1
    # In Redis: prefix + key, JSON text.
    for key, value in VALUES.items():
        assert json.loads(raw.get((prefix + key).encode())) == value
    reader = redis_cache(make_store(), quiet=True)
    for key, value in VALUES.items():
        assert reader[key] == value
    assert reader.stats.loads == len(VALUES)
    assert reader["alice"] == VALUES["alice"] and reader.stats.loads == len(
        VALUES
    )  # now from memory
    assert reader.pending == 0  # what was read is clean: never written back
    with pytest.raises(KeyError):
        reader["nobody"]
    assert "nobody" not in reader


def test_a_miss_is_not_cached(make_store, redis_cache, raw, prefix) -> None:
    cache = redis_cache(make_store(), quiet=True)
    assert cache.get("later") is None
    raw.set(prefix + "later", json.dumps("arrived"))
    assert cache.get("later") == "arrived"


def test_deletes_reach_redis(make_store, redis_cache, raw, prefix) -> None:
    cache = redis_cache(make_store(), quiet=True)
    cache.update({"a": 1, "b": 2, "c": 3})
    cache.flush()
    del cache["a"]
    cache.discard("never-existed")
    cache.pop("b")
    result = cache.flush()
    assert result.deleted == 3
    assert raw.exists(prefix + "a", prefix + "b", prefix + "never-existed") == 0
    assert json.loads(raw.get(prefix + "c")) == 3
    fresh = redis_cache(make_store(), quiet=True)
    assert "a" not in fresh and fresh["c"] == 3


def test_store_write_and_load_many_directly(make_store) -> None:
    store = make_store()
    assert store.write([("x", 1), ("y", [2])], []) is None
    assert store.load_many(["x", "y", "z"]) == {"x": 1, "y": [2]}
    store.write([("z", 3)], ["x"])
    assert store.load_many(["x", "y", "z"]) == {"y": [2], "z": 3}
    assert store.load("z") == 3
    with pytest.raises(KeyError):
        store.load("x")
    assert store.load_many([]) == {}
    store.write([], [])  # nothing to do: no round trip, no error


def test_load_many_in_chunks_keeps_order_and_duplicates(make_store) -> None:
    store = make_store(chunk_size=7)
    store.write([(f"k{i}", i) for i in range(0, 50, 2)], [])
    keys = [f"k{i}" for i in range(50)] + ["k4", "k4"]
    found = store.load_many(keys)
    assert found == {f"k{i}": i for i in range(0, 50, 2)}


# ----------------------------------------------------------------------------- keys


def test_str_bytes_and_int_keys(make_store, raw, prefix) -> None:
    store = make_store()
    store.write([("7", "seven"), (b"raw", "bytes"), ("ünï", "utf-8")], [])
    assert raw.exists(prefix + "7", prefix + "raw") == 2
    assert raw.exists((prefix + "ünï").encode("utf-8")) == 1
    # int 7 and str "7" name one Redis key; bytes and their UTF-8 str too. Results come
    # back under the very objects asked for.
    found = store.load_many([7, "7", b"7", "raw", b"raw"])
    assert found[7] == found["7"] == found[b"7"] == "seven"
    assert found["raw"] == found[b"raw"] == "bytes"
    assert set(map(type, found)) == {int, str, bytes}
    assert (
        store.redis_key(7) == (prefix + "7").encode()
        and store.redis_key(-12) == (prefix + "-12").encode()
    )


@pytest.mark.parametrize("key", [True, 1.5, ("a", 1), None, frozenset({1})], ids=repr)
def test_other_key_types_are_refused(make_store, key) -> None:
    store = make_store()
    with pytest.raises(TypeError, match="key_encoder"):
        store.load_many([key])
    with pytest.raises(RedisKeyError) as info:
        store.write([("fine", 1), (key, 2)], [])
    assert info.value.key == key and isinstance(info.value, SerializationError)
    assert not store.is_recoverable(info.value)
    assert store.load_many(["fine"]) == {}  # nothing of the batch was sent


def test_an_unencodable_key_is_poison_for_itself_only(make_store, redis_cache) -> None:
    errors = []
    cache = redis_cache(
        make_store(), quiet=True, on_write_error=lambda k, v, e: errors.append((k, e))
    )
    cache.update({"a": 1, ("t", 1): 2, "b": 3})
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == (("t", 1),)
    assert [k for k, _ in errors] == [("t", 1)] and isinstance(errors[0][1], RedisKeyError)
    assert cache.store.load_many(["a", "b"]) == {"a": 1, "b": 3}
    assert cache[("t", 1)] == 2  # still readable in memory


def test_key_encoder_maps_tuple_keys(make_store, redis_cache, raw, prefix) -> None:
    store = make_store(key_encoder=lambda key: ":".join(map(str, key)))
    cache = redis_cache(store, quiet=True)
    cache[("user", 42)] = {"name": "x"}
    cache.flush()
    assert json.loads(raw.get(prefix + "user:42")) == {"name": "x"}
    assert redis_cache(make_store(key_encoder=lambda key: ":".join(map(str, key))), quiet=True)[
        ("user", 42)
    ] == {"name": "x"}
    bad = make_store(key_encoder=lambda key: 42)
    with pytest.raises(TypeError, match="must return str or bytes"):
        bad.load_many(["x"])


# ----------------------------------------------------------------------------- serializers


def test_pickle_msgpack_and_custom_serializers(make_store, redis_cache, raw, prefix) -> None:
    moment = datetime.datetime(2024, 5, 1, 12, 30)
    pickled = make_store(serializer="pickle", prefix=prefix + "p:")
    pickled.write([("when", {"at": moment, "ids": {1, 2}})], [])
    assert make_store(serializer="pickle", prefix=prefix + "p:").load_many(["when"]) == {
        "when": {"at": moment, "ids": {1, 2}}
    }

    packed = make_store(serializer="msgpack", prefix=prefix + "m:")
    packed.write([("m", {"a": [1, 2], "b": b"\x00\xff"})], [])
    assert packed.load_many(["m"]) == {"m": {"a": [1, 2], "b": b"\x00\xff"}}

    upper = make_store(
        serializer=(lambda v: str(v).upper(), lambda s: s.lower()), prefix=prefix + "c:"
    )
    cache = redis_cache(upper, quiet=True)
    cache["k"] = "MiXeD"
    cache.flush()
    assert raw.get(prefix + "c:k") == b"MIXED"
    assert upper.load_many(["k"]) == {"k": "mixed"}


def test_a_value_the_serializer_refuses_is_poison(make_store, redis_cache) -> None:
    errors = []
    cache = redis_cache(make_store(), quiet=True, on_write_error=lambda k, v, e: errors.append(k))
    cache.update({"ok1": 1, "bad": object(), "ok2": {"x": float("nan")}, "ok3": 3})
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert set(info.value.result.poisoned_keys) == {"bad", "ok2"}  # NaN is not JSON
    assert sorted(errors) == ["bad", "ok2"]
    assert cache.store.load_many(["ok1", "ok3", "bad"]) == {"ok1": 1, "ok3": 3}
    assert set(cache.write_errors) == {"bad", "ok2"}


def test_an_undecodable_stored_value_raises_to_the_reader(
    make_store, redis_cache, raw, prefix
) -> None:
    raw.set(prefix + "garbage", b"{not json")
    cache = redis_cache(make_store(), quiet=True)
    with pytest.raises(SerializationError) as info:
        cache["garbage"]
    assert info.value.key == "garbage"


def test_a_client_that_decodes_responses_is_refused(prefix) -> None:
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStore(client, prefix)
    finally:
        client.close()
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(redis_url(), prefix, cluster=False, client_options={"decode_responses": True})


def test_constructor_checks(prefix) -> None:
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisStore(object(), prefix)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        RedisStore(redis_url(), prefix, cluster=False, chunk_size=0)
    with pytest.raises(TypeError, match="key_encoder"):
        RedisStore(redis_url(), prefix, cluster=False, key_encoder="nope")  # type: ignore[arg-type]
    client = redis.Redis.from_url(redis_url())
    try:
        with pytest.raises(ValueError, match="client_options"):
            RedisStore(client, prefix, client_options={"socket_timeout": 1})
        with pytest.raises(ValueError, match="cluster=True"):
            RedisStore(client, prefix, cluster=True)
        store = RedisStore(client, prefix)
        store.close()
        assert client.ping()  # a client we were given is left open
    finally:
        client.close()


# ----------------------------------------------------------------------------- TTL


def test_fixed_ttl_is_set_on_every_write(make_store, raw, prefix) -> None:
    store = make_store(ttl=60)
    store.write([("a", 1)], [])
    assert 59_000 < raw.pttl(prefix + "a") <= 60_000
    raw.pexpire(prefix + "a", 5_000)
    store.write([("a", 2)], [])  # a rewrite restarts the TTL
    assert raw.pttl(prefix + "a") > 59_000
    fractional = make_store(ttl=2.5, prefix=prefix + "f:")
    fractional.write([("b", 1)], [])
    assert 2_000 < raw.pttl(prefix + "f:b") <= 2_500


def test_per_key_ttl_and_none_means_no_expiry(make_store, raw, prefix) -> None:
    store = make_store(ttl=lambda key, value: None if key.startswith("keep") else value["ttl"])
    store.write([("keep", {"ttl": 1}), ("short", {"ttl": 30}), ("long", {"ttl": 3000})], [])
    assert raw.pttl(prefix + "keep") == -1
    assert 29_000 < raw.pttl(prefix + "short") <= 30_000
    assert 2_999_000 < raw.pttl(prefix + "long") <= 3_000_000


def test_expired_keys_are_gone_from_redis(make_store) -> None:
    store = make_store(ttl=0.15)
    store.write([("brief", 1)], [])
    assert store.load_many(["brief"]) == {"brief": 1}
    wait_until(lambda: store.load_many(["brief"]) == {}, message="the key never expired")


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan")])
def test_an_invalid_fixed_ttl_is_refused_at_construction(prefix, ttl) -> None:
    with pytest.raises(ValueError, match="positive"):
        RedisStore(redis_url(), prefix, cluster=False, ttl=ttl)


def test_an_invalid_per_key_ttl_is_poison_for_its_key(make_store, redis_cache) -> None:
    def ttl(key: str, value: Any) -> Any:
        if key == "raises":
            raise RuntimeError("no TTL for you")
        return {"neg": -5, "text": "10"}.get(key, 60)

    cache = redis_cache(make_store(ttl=ttl), quiet=True, on_write_error=lambda k, v, e: None)
    cache.update({"fine": 1, "neg": 2, "text": 3, "raises": 4})
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert set(info.value.result.poisoned_keys) == {"neg", "text", "raises"}
    assert all(isinstance(cache.write_errors[k], TTLError) for k in ("neg", "text", "raises"))
    assert cache.store.load_many(["fine", "neg"]) == {"fine": 1}


# ----------------------------------------------------------------------------- transactions and errors


def test_each_batch_is_one_transaction(private_redis, redis_cache) -> None:
    store = RedisStore(
        private_redis.url, "t:", cluster=False, ttl=lambda k, v: 60 if v % 2 else None
    )
    try:
        cache = redis_cache(store, quiet=True, batch_size=100)
        client = private_redis.client()
        before = client.info("commandstats")
        cache.update({f"k{i}": i for i in range(250)})
        cache.flush()
        for i in range(0, 250, 3):
            del cache[f"k{i}"]
        cache.flush()
        after = client.info("commandstats")
        calls = {
            name: after.get(f"cmdstat_{name}", {}).get("calls", 0)
            - before.get(f"cmdstat_{name}", {}).get("calls", 0)
            for name in ("multi", "exec", "mset", "set", "del", "get")
        }
        # 3 batches of puts (MSET + SET PX: a transaction each); the batch of deletes is one DEL,
        # atomic by itself, so it needs no MULTI.
        assert calls["multi"] == calls["exec"] == 3
        assert (
            calls["set"] == 125 and calls["mset"] == 3 and calls["del"] == 1 and calls["get"] == 0
        )
        assert client.dbsize() == 250 - len(range(0, 250, 3))
        client.close()
    finally:
        store.close()


def test_server_errors_are_classified(raw, prefix) -> None:
    store = RedisStore(raw, prefix)
    raw.lpush(prefix + "a-list", 1)
    with pytest.raises(redis.ResponseError) as wrongtype:
        raw.get(prefix + "a-list")
    assert str(wrongtype.value).startswith("WRONGTYPE") and not store.is_recoverable(
        wrongtype.value
    )
    with pytest.raises(redis.ResponseError) as syntax:
        raw.execute_command("SET", prefix + "x")
    assert not store.is_recoverable(syntax.value)

    no_retry = Retry(NoBackoff(), 0)
    refused = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=no_retry
    )
    with pytest.raises(redis.ConnectionError) as down:
        refused.ping()
    assert store.is_recoverable(down.value)
    slow = redis_client(socket_timeout=0.05, retry=no_retry)
    try:
        with pytest.raises(redis.TimeoutError) as timeout:
            slow.blpop([prefix + "never"], timeout=1)
        assert store.is_recoverable(timeout.value)
    finally:
        slow.close()
    for reply in (
        "LOADING Redis is loading",
        "BUSY Redis is busy running a script",
        "MISCONF no disk",
        "NOREPLICAS Not enough good replicas",
        "CLUSTERDOWN The cluster is down",
        "TRYAGAIN Multiple keys request during rehashing",
    ):
        assert is_recoverable_error(redis.ResponseError(reply)), reply
    assert not is_recoverable_error(SerializationError("k", ValueError()))
    assert not is_recoverable_error(ValueError("constraint"))
    assert is_recoverable_error(ConnectionError()) and is_recoverable_error(TimeoutError())


def test_out_of_memory_is_retried_until_redis_has_room(private_redis, redis_cache) -> None:
    client = private_redis.client()
    store = RedisStore(private_redis.url, "oom:", cluster=False)
    try:
        cache = redis_cache(store, retry_initial=0.02, retry_max=0.05)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        cache["k"] = "v" * 100
        with pytest.raises(FlushError) as info:
            cache.flush()
        assert info.value.result.failed_keys == ("k",) and not info.value.result.poisoned_keys
        assert isinstance(info.value.result.errors[0], redis.exceptions.OutOfMemoryError)
        assert cache.pending == 1
        client.config_set("maxmemory", 0)
        wait_until(
            lambda: client.exists("oom:k"), message="the writer never retried after Redis had room"
        )
        assert cache.stats.retries >= 1
    finally:
        client.close()
        store.close()


def test_a_stopped_server_is_retried_until_it_is_back(private_redis, redis_cache) -> None:
    store = RedisStore(
        private_redis.url, "down:", cluster=False, client_options={"socket_connect_timeout": 0.5}
    )
    try:
        cache = redis_cache(store, retry_initial=0.02, retry_max=0.1)
        cache["before"] = 1
        cache.flush()
        port = private_redis.port
        private_redis.stop()
        cache["during"] = 2
        with pytest.raises(FlushError) as info:
            cache.flush()
        assert info.value.result.failed_keys == ("during",)
        assert store.is_recoverable(info.value.result.errors[0])
        assert cache["before"] == 1 and cache["during"] == 2  # served from memory meanwhile
        private_redis.start(port)  # an empty server: "before" was not persisted (--save '')
        client = private_redis.client()
        try:
            wait_until(
                lambda: client.exists("down:during"),
                timeout=TIMEOUT * 2,
                message="the writer never retried",
            )
        finally:
            client.close()
    finally:
        store.close()


# ----------------------------------------------------------------------------- one line


def test_open_redis_makes_a_coherent_cache(raw, prefix, impl) -> None:
    with open_redis(redis_url(), prefix=prefix, implementation=impl, write_interval=0.02) as cache:
        assert cache.implementation == impl
        assert isinstance(cache.store, RedisStore) and not cache.store.cluster
        assert isinstance(cache._coherence, RedisCoherence)
        assert cache._coherence.channel == prefix + "invalidate"
        cache["k"] = {"v": 1}
        wait_until(lambda: raw.exists(prefix + "k"))
    assert json.loads(raw.get(prefix + "k")) == {"v": 1}
    assert cache.store._closed and not cache._coherence.connected  # closing the cache closed both
    cache.invalidate()
    with pytest.raises(RuntimeError, match="closed"):  # no read-through to the closed store
        cache["k"]
    plain = open_redis(redis_url(), prefix=prefix, coherence=False, implementation=impl)
    try:
        assert plain._coherence is None and plain["k"] == {"v": 1}
    finally:
        plain.close()
    with pytest.raises(TypeError, match="coherence"):
        open_redis(redis_url(), prefix=prefix, coherence="yes")


def test_the_default_channel_names_the_database(prefix) -> None:
    redis_url()
    url = "redis://127.0.0.1:6379/5"
    store = RedisStore(url, prefix)
    try:
        assert default_channel(store) == prefix + "invalidate@5"
        assert "127.0.0.1:6379/5" in repr(store) and prefix in repr(store)
    finally:
        store.close()


def test_without_redis_py_the_import_error_names_the_extra() -> None:
    for statement in (
        "import lazycache.stores.redis",
        "import lazycache.coherence.redis",
        "import lazycache; lazycache.open_redis('redis://127.0.0.1:6379/0')",
        "from lazycache.stores.redis_coherence import RedisCoherence",  # the old path
    ):
        code = f"import sys; sys.modules['redis'] = None\n{statement}"
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert run.returncode != 0
        assert "ImportError" in run.stderr and "lazywritercache[redis]" in run.stderr, run.stderr


def test_reading_after_close_answers_from_memory(make_store, redis_cache) -> None:
    store = make_store()
    cache = redis_cache(store, quiet=True)
    cache["a"] = 1
    cache.close()
    assert cache["a"] == 1
    assert store.load_many(["a"]) == {"a": 1}
    with pytest.raises(RuntimeError, match="closed"):  # a miss would need the store
        cache.get("missing", MISSING)
    time.sleep(0)
