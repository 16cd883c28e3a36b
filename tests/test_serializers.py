"""Serializers: a value reads back the same whether it came from memory or from the store.

The "json" and "msgpack" serializers accept a value only if decoding its encoding gives it
back with the same types (a tuple that would come back as a list, a dict key that would
come back as another type, are refused with a SerializationError naming the cache key and
where in the value the trouble is). Properties over generated nested values, and end to
end: set, evict, read through, on both cores, over SQL key-value tables and Redis.
"""

from __future__ import annotations

import collections
import datetime
import enum
import math
from typing import Any

import pytest
from helpers import close_caches, recording, run_threads
from hypothesis import given, settings
from hypothesis import strategies as st
from services import (  # noqa: F401  (fixtures)
    database,
    db_cache,
    delete_redis_keys,
    redis_client,
    redis_url,
    unique_name,
)

from lazycache import FlushError
from lazycache.serializers import JSON, SerializationError, Serializer, get_serializer
from lazycache.stores.redis import RedisStore
from lazycache.stores.sqlalchemy import SQLAlchemyStore

msgpack = pytest.importorskip("msgpack")
MSGPACK = get_serializer("msgpack")


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Items(list):  # type: ignore[type-arg]
    pass


# ----------------------------------------------------------------------------- what "the same" means


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (dict keys included): what a reader notices."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return repr(a) == repr(b)  # -0.0 is not 0.0; nan is nan
    if type(a) is list:
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is dict:
        b_keys = {key: key for key in b}
        return len(a) == len(b) and all(
            key in b_keys and same(key, b_keys[key]) and same(value, b[key])
            for key, value in a.items()
        )
    return bool(a == b)


MSGPACK_INTS = (-(2**63), 2**64)


def json_shallow_ok(value: Any) -> bool:
    """Whether JSON gives this node back as it is (its type, its dict keys); children not looked at."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(type(key) is str for key in value)
    return kind in (str, int, bool, type(None), list)


def msgpack_shallow_ok(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return MSGPACK_INTS[0] <= value < MSGPACK_INTS[1]
    if kind is dict:
        return all(
            type(key) is not dict and type(key) is not list and msgpack_shallow_ok(key)
            for key in value
        )
    return kind in (str, bytes, float, bool, type(None), list)


def faithful(value: Any, shallow_ok: Any) -> bool:
    """The reference: every node of value is one the format gives back as it is."""
    if not shallow_ok(value):
        return False
    if type(value) is list:
        return all(faithful(item, shallow_ok) for item in value)
    if type(value) is dict:
        return all(faithful(item, shallow_ok) for item in value.values())
    return True


FORMATS = {
    "json": (JSON, json_shallow_ok),
    "msgpack": (MSGPACK, msgpack_shallow_ok),
}


# ----------------------------------------------------------------------------- generated values

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)

msgpack_keys = (
    st.none()
    | st.booleans()
    | st.integers(*MSGPACK_INTS).filter(lambda i: i < MSGPACK_INTS[1])
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=4)
)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MSGPACK_INTS[0], MSGPACK_INTS[1] - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(msgpack_keys, children, max_size=4)
    ),
    max_leaves=20,
)

# Anything a user might put in a cache: the faithful values, and the ones a format changes
# (tuples, non-str keys, subclasses, non-finite floats, bytes, sets, other objects).
odd_scalars = (
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not math.isfinite(f))
    | st.binary(max_size=4)
    | st.binary(max_size=4).map(bytearray)
    | st.frozensets(st.integers(), max_size=3)
    | st.sets(st.integers(), max_size=3)
    | st.just(Colour.RED)
    | st.text(max_size=4).map(Name)
    | st.integers(min_value=2**64, max_value=2**70)
    | st.datetimes()
    | st.just(object())
    | st.complex_numbers(allow_nan=False)
)
any_keys = (
    st.text(max_size=4)
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.binary(max_size=4)
    | st.tuples(st.integers())
)
any_values = st.recursive(
    json_scalars | odd_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(any_keys, children, max_size=4)
        | st.tuples(children, children)
        | st.lists(children, max_size=3).map(Items)
        | st.dictionaries(st.text(max_size=4), children, max_size=3).map(collections.OrderedDict)
    ),
    max_leaves=20,
)

PROPERTY = settings(max_examples=300, deadline=None)


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@PROPERTY
@given(json_values)
def test_json_gives_back_every_value_made_of_json_types(value: Any) -> None:
    assert same(JSON.loads(JSON.encode("k", value)), value)


@PROPERTY
@given(msgpack_values)
def test_msgpack_gives_back_every_value_made_of_msgpack_types(value: Any) -> None:
    assert same(MSGPACK.loads(MSGPACK.encode("k", value)), value)


@pytest.mark.parametrize("name", ["json", "msgpack"])
@PROPERTY
@given(value=any_values, key=st.text(max_size=4) | st.integers())
def test_a_value_is_given_back_the_same_or_refused_naming_key_and_place(
    name: str, value: Any, key: Any
) -> None:
    serializer, shallow_ok = FORMATS[name]
    try:
        data = serializer.encode(key, value)
    except SerializationError as exc:
        assert not faithful(value, shallow_ok), f"refused a value it gives back: {exc}"
        assert exc.key == key and repr(key) in str(exc)
        path = exc.cause.path  # type: ignore[attr-defined]
        # The place named is where the trouble is: that node itself is not given back.
        assert not shallow_ok(at(value, path)), (path, exc)
        assert "value" + "".join(f"[{step!r}]" for step in path) in str(exc)
    else:
        assert faithful(value, shallow_ok), (
            f"accepted {value!r}, reads back {serializer.loads(data)!r}"
        )
        assert same(serializer.loads(data), value)


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "value, place, words",
    [
        ({"a": [0, 1, 2, (3, 4)]}, "value['a'][3]", "tuple, which JSON reads back as a list"),
        ({1: "a"}, "value has the key 1 (int)", "reads back as the str '1'"),
        ({"n": {None: 0}}, "value['n'] has the key None", "reads back as the str 'null'"),
        ([float("nan")], "value[0]", "nan, which JSON cannot represent"),
        ({"s": {1, 2}}, "value['s']", "set, which JSON cannot represent"),
        (collections.OrderedDict(a=1), "value", "OrderedDict, which JSON reads back as a dict"),
        ({"c": Colour.RED}, "value['c']", "Colour, which JSON reads back as an int"),
        ([Name("x")], "value[0]", "Name, which JSON reads back as a str"),
        ({"when": datetime.date(2024, 1, 1)}, "value['when']", "date, which JSON cannot represent"),
    ],
)
def test_json_refusal_says_where_and_what(value: Any, place: str, words: str) -> None:
    with pytest.raises(SerializationError) as info:
        JSON.encode("the-key", value)
    message = str(info.value)
    assert info.value.key == "the-key"
    assert message.startswith("cannot serialize the value of 'the-key': ")
    assert place in message and words in message


def test_json_refuses_a_value_that_contains_itself() -> None:
    value: list[Any] = [1]
    value.append({"again": value})
    with pytest.raises(SerializationError, match=r"value\[1\]\['again'\] contains itself"):
        JSON.encode("k", value)


def test_msgpack_keeps_int_keys_and_bytes_but_refuses_tuples_and_bytearrays() -> None:
    value = {1: b"\x00", "n": [1.5, None, True], b"k": {-1: "x"}}
    assert same(MSGPACK.loads(MSGPACK.encode("k", value)), value)
    with pytest.raises(SerializationError, match=r"value\['t'\] is a tuple"):
        MSGPACK.encode("k", {"t": (1, 2)})
    with pytest.raises(SerializationError, match=r"value\[0\] is a bytearray"):
        MSGPACK.encode("k", [bytearray(b"x")])


def test_msgpack_encodes_from_many_threads_at_once() -> None:
    # Each thread packs with a Packer of its own: no thread sees another's buffer.
    def encode(n: int) -> None:
        for i in range(300):
            value = {"n": n, "i": i, "blob": bytes([n]) * (i % 50), "list": [n] * (i % 7)}
            assert same(MSGPACK.loads(MSGPACK.encode(n, value)), value)
            with pytest.raises(SerializationError):
                MSGPACK.encode(n, {"t": (n, i)})

    run_threads(encode, [(n,) for n in range(4)])


def test_a_custom_pair_is_used_as_given() -> None:
    import json

    lenient = get_serializer((json.dumps, json.loads))
    assert lenient.loads(lenient.encode("k", {1: (2,)})) == {"1": [2]}
    assert isinstance(lenient, Serializer) and lenient.name == "custom"


# ----------------------------------------------------------------------------- end to end

ORIGINALS: dict[str, Any] = {
    "int-key": {1: "a"},
    "tuple": (1, 2),
    "nested-tuple": {"a": [1, (2, 3)]},
    "ordered": collections.OrderedDict(b=1, a=2),
    "plain": {"a": [1, 2.0, None, True, "x"], "b": {}, "c": -0.0},
}
CHANGED = {
    "json": {"int-key", "tuple", "nested-tuple", "ordered"},
    "msgpack": {"tuple", "nested-tuple", "ordered"},  # msgpack keeps int keys
}


def read_after_eviction_equals_write_or_was_reported(
    make: Any, store: Any, serializer: str
) -> None:
    """Sets every original, evicts everything, reads through: the same value, or the write was reported."""
    reported: dict[Any, BaseException] = {}
    cache = make(
        store, quiet=True, on_write_error=lambda key, value, exc: reported.setdefault(key, exc)
    )
    for key, value in ORIGINALS.items():
        cache[key] = value
        assert same(cache[key], value)  # from memory: the original object
    try:
        cache.flush()
    except FlushError as exc:
        assert set(exc.result.poisoned_keys) == set(reported)
    cache.invalidate()
    assert len(cache) == 0
    for key, value in ORIGINALS.items():
        if key in reported:
            assert isinstance(reported[key], SerializationError) and reported[key].key == key
            assert key in cache.write_errors
            assert key not in cache  # the store never had it
        else:
            assert same(cache[key], value), (key, cache[key])
    assert set(reported) == CHANGED[serializer]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_sql_read_through_after_eviction_gives_the_value_written_or_its_refusal(
    database,  # noqa: F811  (the fixture imported from services)
    db_cache,  # noqa: F811
    serializer: str,
) -> None:
    store = SQLAlchemyStore(database.engine, database.table_name(), serializer=serializer)
    read_after_eviction_equals_write_or_was_reported(db_cache, store, serializer)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_redis_read_through_after_eviction_gives_the_value_written_or_its_refusal(
    make_cache, serializer: str
) -> None:
    prefix = unique_name() + ":"
    store = RedisStore(redis_url(), prefix, cluster=False, serializer=serializer)
    make, made = recording(make_cache)
    try:
        read_after_eviction_equals_write_or_was_reported(make, store, serializer)
    finally:
        close_caches(made)
        store.close()
        client = redis_client()
        delete_redis_keys(client, prefix)
        client.close()
