"""SQLAlchemyStore, key-value mode: a persistent dict on SQLite, PostgreSQL and MariaDB.

Every test runs on each database; those that go through a cache also run on each core.
"""

from __future__ import annotations

import json
import random
import threading
import uuid

import pytest
import sqlalchemy as sa
from helpers import TIMEOUT
from services import HeldStore, database, db_cache  # noqa: F401  (fixtures)

from lazycache import FlushError
from lazycache.serializers import PICKLE, SerializationError, Serializer
from lazycache.stores.sqlalchemy import SQLAlchemyStore


def kv_store(database, **options) -> SQLAlchemyStore:
    return SQLAlchemyStore(database.engine, database.table_name(), **options)


def stored(database, table: str, engine=None) -> dict:
    """What the table holds, read with a separate connection: {key: decoded JSON value}."""
    engine = engine or database.engine
    kv = sa.table(table, sa.column("key"), sa.column("value"))
    with engine.connect() as conn:
        return {
            key: json.loads(value) for key, value in conn.execute(sa.select(kv.c.key, kv.c.value))
        }


# ----------------------------------------------------------------------------- through the cache


def test_values_written_by_one_cache_are_read_through_by_a_new_one(database, db_cache) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True)
    values = {
        "alice": {"age": 30, "tags": ["a", "b"], "nested": {"x": 1.5, "none": None}},
        "ключ 🔑": "значение",
        "empty": {},
        "list": [1, 2, 3],
        "int": 7,
    }
    cache.update(values)
    result = cache.flush()
    assert (result.written, result.batches) == (len(values), 1)
    assert stored(database, store.table.name) == values

    fresh = db_cache(SQLAlchemyStore(database.new_engine(), store.table.name), quiet=True)
    for key, value in values.items():
        assert fresh[key] == value
    assert "missing" not in fresh
    assert fresh.stats.loads == len(values)


def test_put_then_delete_in_one_flush_ends_deleted(database, db_cache) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True)
    cache["kept"] = 1
    cache["gone"] = 2
    cache.flush()
    cache["gone"] = 3
    del cache["gone"]
    cache["new-then-deleted"] = 4
    del cache["new-then-deleted"]
    result = cache.flush()
    assert result.deleted == 2 and result.written == 0
    assert stored(database, store.table.name) == {"kept": 1}


def test_delete_then_put_across_flushes_ends_present(database, db_cache) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True)
    cache["k"] = "first"
    cache.flush()
    del cache["k"]
    cache.flush()
    assert stored(database, store.table.name) == {}
    cache["k"] = "second"
    cache.flush()
    assert stored(database, store.table.name) == {"k": "second"}
    assert cache["k"] == "second"


def test_many_deletes_and_upserts_go_in_one_transaction(database, db_cache) -> None:
    store = kv_store(database, chunk_size=100)  # deletes in several IN lists
    cache = db_cache(store, quiet=True, batch_size=5000)
    cache.update({f"k{i}": i for i in range(1200)})
    cache.flush()
    for i in range(0, 1200, 2):
        del cache[f"k{i}"]
    cache.update({f"n{i}": {"i": i} for i in range(1500)})  # a pipelined upsert on PostgreSQL
    result = cache.flush()
    assert (result.written, result.deleted, result.batches) == (1500, 600, 1)
    expected = {f"k{i}": i for i in range(1, 1200, 2)}
    expected.update({f"n{i}": {"i": i} for i in range(1500)})
    assert stored(database, store.table.name) == expected


@pytest.mark.parametrize(
    "serializer",
    [
        pytest.param("json", id="json"),
        pytest.param("pickle", id="pickle"),
        pytest.param("msgpack", id="msgpack"),
        pytest.param((lambda v: repr(v), lambda s: eval(s)), id="custom-text-pair"),
        pytest.param(
            Serializer(PICKLE.dumps, PICKLE.loads, binary=True, name="mine"), id="custom-binary"
        ),
    ],
)
def test_each_serializer_round_trips(database, db_cache, serializer) -> None:
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    store = kv_store(database, serializer=serializer)
    cache = db_cache(store, quiet=True)
    value = {"name": "zoë", "n": [1, 2, 3], "blob": "x" * 1000}
    cache["a"] = value
    cache.flush()
    fresh = SQLAlchemyStore(database.new_engine(), store.table.name, serializer=serializer)
    assert fresh.load_many(["a", "b"]) == {"a": value}
    column = sa.inspect(database.engine).get_columns(store.table.name)[1]["type"]
    assert (
        isinstance(column, sa.String) != store.serializer.binary
    )  # TEXT for text, a BLOB kind for bytes


@pytest.mark.parametrize(
    "size", [pytest.param(3, id="small-batch"), pytest.param(600, id="pipelined-batch")]
)
def test_unencodable_value_raises_serialization_error_naming_its_key_and_writes_nothing(
    database, size
) -> None:
    store = kv_store(database)
    store.write([("before", 0)], [])
    upserts = [(f"k{i}", i) for i in range(size)]
    upserts.insert(size // 2 + 1, ("bad", {1, 2}))  # a set: not JSON
    with pytest.raises(SerializationError) as caught:
        store.write(upserts, ["before"])
    assert caught.value.key == "bad"
    assert store.is_recoverable(caught.value) is False
    assert stored(database, store.table.name) == {
        "before": 0
    }  # the batch was not partially committed
    store.write([("after", 1)], [])  # the connection is fine
    assert stored(database, store.table.name) == {"before": 0, "after": 1}


def test_cache_rejects_only_the_unencodable_entry(database, db_cache) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True)
    cache.update({"good": 1, "bad": {1, 2}, "also-good": 2})
    with pytest.raises(FlushError) as caught:
        cache.flush()
    assert caught.value.result.poisoned_keys == ("bad",)
    assert isinstance(cache.write_errors["bad"], SerializationError)
    assert stored(database, store.table.name) == {"good": 1, "also-good": 2}
    assert cache["bad"] == {1, 2}  # still readable in memory


def test_int_and_uuid_keys_keep_their_type(database, db_cache) -> None:
    ints = db_cache(kv_store(database, key_type=int), quiet=True)
    ints.update({1: "one", 2**40: "big", -5: "negative"})
    ints.flush()
    assert SQLAlchemyStore(database.engine, ints.store.table.name, key_type=int).load_many(
        [1, 2**40, -5, 3]
    ) == {
        1: "one",
        2**40: "big",
        -5: "negative",
    }
    uuids = db_cache(kv_store(database, key_type=uuid.UUID), quiet=True)
    keys = [uuid.uuid4() for _ in range(60)]  # above the single-statement size on PostgreSQL
    uuids.update({key: str(key) for key in keys})
    uuids.flush()
    fresh = db_cache(
        SQLAlchemyStore(database.engine, uuids.store.table.name, key_type=uuid.UUID), quiet=True
    )
    assert all(fresh[key] == str(key) for key in keys)
    assert fresh.store.load_many([uuid.uuid4()]) == {}


def test_keys_of_another_type_than_the_column_are_refused_the_same_way_everywhere(
    database, db_cache
) -> None:
    store = kv_store(database)  # str keys
    with pytest.raises(SerializationError) as caught:
        store.write([("a", 1), (2, "an int key")], [])
    assert caught.value.key == 2 and "str, not int" in str(caught.value)
    with pytest.raises(TypeError, match="str, not int"):
        store.load_many(["a", 2])
    cache = db_cache(store, quiet=True)
    cache.update({"a": 1, 3: "three"})
    with pytest.raises(FlushError) as flush_error:
        cache.flush()
    assert flush_error.value.result.poisoned_keys == (3,)
    assert stored(database, store.table.name) == {"a": 1}


def test_unicode_keys_differing_in_case_accents_or_trailing_space_are_distinct(
    database, db_cache
) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True)
    keys = ["a", "A", "á", "a ", "ä", "日本", "🔑"]
    cache.update({key: i for i, key in enumerate(keys)})
    cache.flush()
    assert stored(database, store.table.name) == {key: i for i, key in enumerate(keys)}


def test_large_values_round_trip(database, db_cache) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True)
    big = {"text": "λ" * 1_000_000, "numbers": list(range(50_000))}  # ~2.3 MB of JSON
    cache["big"] = big
    cache.flush()
    assert SQLAlchemyStore(database.new_engine(), store.table.name).load("big") == big


def test_a_batch_of_many_sizable_values_round_trips(database, db_cache) -> None:
    store = kv_store(database)
    cache = db_cache(store, quiet=True, batch_size=1000)
    values = {
        f"doc{i}": {"body": f"{i}:" + "ü\\'\"\n" * 3000} for i in range(400)
    }  # 400 x ~15 KB, quotes and escapes
    cache.update(values)
    cache.flush()
    assert stored(database, store.table.name) == values


def test_value_set_during_a_flush_is_kept_in_memory_and_written_by_the_next_flush(
    database, db_cache
) -> None:
    store = HeldStore(database.engine, database.table_name())
    cache = db_cache(store, quiet=True)
    cache["k"] = "old"
    store.holding = True
    flusher = threading.Thread(target=cache.flush, daemon=True)
    flusher.start()
    assert store.entered.wait(TIMEOUT)
    cache["k"] = "new"  # while "old" is being written
    store.release.set()
    flusher.join(TIMEOUT)
    assert cache["k"] == "new"
    assert stored(database, store.table.name) == {"k": "old"}
    assert cache.pending == 1
    cache.flush()
    assert stored(database, store.table.name) == {"k": "new"}


def test_a_fresh_engine_sees_exactly_the_last_value_of_every_key_after_close(
    database, db_cache
) -> None:
    rng = random.Random(4)
    store = kv_store(database)
    cache = db_cache(store, batch_size=50)  # background writer running, small batches
    model: dict = {}
    for step in range(2000):
        key = f"k{rng.randrange(150)}"
        if rng.random() < 0.25:
            cache.discard(key)
            model.pop(key, None)
        else:
            cache[key] = {"step": step}
            model[key] = {"step": step}
    cache.close()
    assert stored(database, store.table.name, engine=database.new_engine()) == model


@pytest.mark.parametrize("key_type", [str, uuid.UUID])
def test_sqlalchemy_core_fallback_writes_the_same(database, key_type) -> None:
    """The path taken for drivers without a hand-tuned one (e.g. psycopg2, mysql-connector)."""
    store = kv_store(database, key_type=key_type)
    store._layout.fast_path = None  # as for such a driver
    keys = [key_type(f"{i:032x}") for i in range(300)]
    store.write([(key, {"n": i}) for i, key in enumerate(keys)], [])
    store.write([(keys[0], "changed")], keys[1:100])
    loaded = store.load_many(keys)
    assert len(loaded) == 201 and loaded[keys[0]] == "changed" and loaded[keys[200]] == {"n": 200}


def test_existing_table_with_values_of_the_other_kind_is_refused(database) -> None:
    name = database.table_name()
    SQLAlchemyStore(database.engine, name, serializer="json")
    with pytest.raises(ValueError, match="text values"):
        SQLAlchemyStore(database.engine, name, serializer="pickle")


def test_sqlite_file_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:
    store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'wal.db'}", "kv")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        store.close()


def test_store_made_from_a_url_owns_and_disposes_its_engine(database) -> None:
    store = SQLAlchemyStore(database.url, database.table_name())
    assert store.owns_engine
    store.write([("a", 1)], [])
    assert store.engine.pool.checkedin() == 1
    store.close()
    assert store.engine.pool.checkedin() == 0
    given = kv_store(database)
    given.close()  # not its engine: still usable
    assert not given.owns_engine
    given.write([("b", 2)], [])
    assert given.load("b") == 2
