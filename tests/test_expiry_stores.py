"""Expiry in the stores: Redis keys get the cache's TTLs (PX); a SQL key-value table keeps an
expires_at column that reads ignore once passed and purge_expired() clears. And back: an
entry read through from either expires from memory when the store would drop it (or sooner,
by the cache's own expire_after_write), whoever gave it its TTL.

The cache's clock and the SQL store's wall clock are fakes the tests move; Redis expires
keys by its own clock, so the Redis tests read PTTL, and wait (polling, bounded) only for
a key written with PX 1.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import FakeClock, wait_until
from services import database, db_cache  # noqa: F401  (fixtures)
from test_redis_store import make_store, prefix, raw, redis_cache  # noqa: F401  (fixtures)

from lazycache.stores.sqlalchemy import EXPIRES_AT, SQLAlchemyStore, UnusableTableError

WALL = 1_800_000_000.0
"""The SQL stores' fake wall clock starts here (seconds since the epoch)."""


def expires_at(database: Any, table: str) -> dict[str, Any]:
    """{key: expires_at} as the table holds it, read on a separate connection."""
    kv = sa.table(table, sa.column("key"), sa.column(EXPIRES_AT))
    with database.engine.connect() as conn:
        return dict(conn.execute(sa.select(kv.c.key, kv.c[EXPIRES_AT])).all())


# ----------------------------------------------------------------------------- SQL


def test_sql_expiry_column_takes_the_caches_ttls(database, db_cache) -> None:
    wall = FakeClock(WALL)
    clock = FakeClock()
    store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    assert store.accepts_ttls
    cache = db_cache(store, quiet=True, expire_after_write=3600, clock=clock)
    cache.set("short", {"v": 1}, ttl=10)
    cache["long"] = {"v": 2}
    clock.advance(4)
    cache.flush()
    assert expires_at(database, store.table.name) == {
        "short": int(WALL * 1000) + 6_000,
        "long": int(WALL * 1000) + 3_596_000,
    }


def test_sql_reads_ignore_expired_rows_and_purge_deletes_them(database, db_cache) -> None:
    wall = FakeClock(WALL)
    store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    cache = db_cache(store, quiet=True, clock=FakeClock())
    cache.set("brief", 1, ttl=30)
    cache["forever"] = 2
    cache.flush()
    reader = db_cache(
        SQLAlchemyStore(database.new_engine(), store.table.name, expiry=True, clock=wall),
        quiet=True,
    )
    assert reader.get_many(["brief", "forever"]) == {"brief": 1, "forever": 2}
    wall.advance(30)
    fresh = db_cache(
        SQLAlchemyStore(database.new_engine(), store.table.name, expiry=True, clock=wall),
        quiet=True,
    )
    assert fresh.get("brief") is None  # the row is there, past its time: not read
    assert fresh["forever"] == 2
    assert set(expires_at(database, store.table.name)) == {"brief", "forever"}
    assert store.purge_expired() == 1
    assert set(expires_at(database, store.table.name)) == {"forever"}
    assert store.purge_expired() == 0


def test_sql_a_rewrite_without_ttl_clears_the_expiry(database, db_cache) -> None:
    wall = FakeClock(WALL)
    store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    cache = db_cache(store, quiet=True, clock=FakeClock())
    cache.set("k", 1, ttl=5)
    cache.flush()
    cache["k"] = 2
    cache.flush()
    assert expires_at(database, store.table.name) == {"k": None}
    wall.advance(10)
    assert store.load_many(["k"]) == {"k": 2}


def test_sql_a_late_write_still_replaces_the_older_row(database, db_cache) -> None:
    wall = FakeClock(WALL)
    clock = FakeClock()
    store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    store.write([("k", "older")], [])
    cache = db_cache(store, quiet=True, clock=clock)
    cache.set("k", "newer", ttl=1)
    clock.advance(60)  # the write reaches the table after its deadline
    cache.flush()
    assert expires_at(database, store.table.name) == {"k": int(WALL * 1000) + 1}
    wall.advance(0.002)
    assert store.load_many(["k"]) == {}  # not the older value


@pytest.mark.parametrize("count", [3, 700], ids=["one-statement", "in-chunks"])
def test_sql_each_rows_deadline_goes_through_the_drivers_fast_path(database, count) -> None:
    wall = FakeClock(WALL)
    store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    assert store._layout.fast_path is not None  # psycopg, sqlite3 and PyMySQL each have one
    keys = [f"k{i}" for i in range(count)]
    # A deadline of its own for each key (a row given another's would show), every third none.
    ttls = {key: 1 + i / 4 for i, key in enumerate(keys) if i % 3}
    store.write([(key, {"i": i}) for i, key in enumerate(keys)], [], ttls)
    now = int(WALL * 1000)
    assert expires_at(database, store.table.name) == {
        key: now + math.ceil(ttls[key] * 1000) if key in ttls else None for key in keys
    }
    # Rewritten without TTLs, a batch whose deadlines are all NULL: every deadline cleared.
    store.write([(key, {"i": -1}) for key in keys], [])
    assert set(expires_at(database, store.table.name).values()) == {None}
    wall.advance(3600)
    assert store.load_many(keys) == {key: {"i": -1} for key in keys}


def test_sql_expiry_needs_the_column_and_the_key_value_mode(database) -> None:
    plain = SQLAlchemyStore(database.engine, database.table_name())
    assert not plain.accepts_ttls
    with pytest.raises(UnusableTableError, match=EXPIRES_AT):
        SQLAlchemyStore(database.engine, plain.table.name, expiry=True)
    with pytest.raises(ValueError, match="expiry=True"):
        plain.purge_expired()
    with pytest.raises(ValueError, match="expiry=True"):
        plain.write([("k", 1)], [], ttls={"k": 5})
    rows = sa.Table(
        database.table_name(), sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    with pytest.raises(ValueError, match="key-value mode"):
        SQLAlchemyStore(database.engine, rows, expiry=True)


def test_sql_a_row_read_through_expires_from_memory_with_the_row(database, db_cache) -> None:
    wall = FakeClock(WALL)
    writer_store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    writer = db_cache(writer_store, quiet=True, clock=FakeClock())
    writer.set("brief", 1, ttl=30)
    writer.set("other", 3, ttl=30)
    writer["forever"] = 2
    writer.flush()
    store = SQLAlchemyStore(database.new_engine(), writer_store.table.name, expiry=True, clock=wall)
    assert store.reports_ttls
    found, ttls = store.load_many_with_ttls(["brief", "forever", "absent"])
    assert found == {"brief": 1, "forever": 2} and ttls == {"brief": 30.0}
    clock = FakeClock()
    reader = db_cache(store, quiet=True, clock=clock)  # a cache with no expiry of its own
    assert reader["brief"] == 1 and reader.get_many(["other", "forever"]) == {
        "other": 3,
        "forever": 2,
    }
    assert reader.stats.loads == 3
    clock.advance(29.9)
    wall.advance(29.9)
    assert (reader["brief"], reader["other"], reader["forever"]) == (1, 3, 2)
    assert reader.stats.loads == 3  # all from memory
    clock.advance(0.2)
    wall.advance(0.2)  # past the rows' deadline, in the table and in memory
    assert reader.get("brief") is None and reader.get("other") is None
    assert reader["forever"] == 2
    assert reader.stats.loads == 3  # the two expired ones were looked for, and not found


def test_sql_the_caches_own_expire_after_write_comes_first_when_sooner(database, db_cache) -> None:
    wall = FakeClock(WALL)
    store = SQLAlchemyStore(database.engine, database.table_name(), expiry=True, clock=wall)
    store.write([("k", 1)], [], ttls={"k": 3600})
    clock = FakeClock()
    reader = db_cache(store, quiet=True, expire_after_write=10, clock=clock)
    assert reader["k"] == 1
    clock.advance(10)
    assert reader["k"] == 1 and reader.stats.loads == 2  # read through again after 10 s


# ----------------------------------------------------------------------------- Redis


def test_redis_keys_get_the_time_left_as_px(make_store, redis_cache, raw, prefix) -> None:
    clock = FakeClock()
    store = make_store(ttl=999)  # the store's own TTL: for keys the cache gives none
    cache = redis_cache(store, quiet=True, expire_after_access=30, clock=clock)
    cache.set("short", 1, ttl=20)
    cache["plain"] = 2
    clock.advance(5)
    cache.flush()
    assert 14_000 < raw.pttl(prefix + "short") <= 15_000
    assert 998_000 < raw.pttl(prefix + "plain") <= 999_000


def test_redis_expire_after_write_reaches_redis(make_store, redis_cache, raw, prefix) -> None:
    cache = redis_cache(make_store(), quiet=True, expire_after_write=60, clock=FakeClock())
    cache["k"] = 1
    cache.flush()
    assert 59_000 < raw.pttl(prefix + "k") <= 60_000


def test_redis_a_late_write_lands_and_expires_at_once(make_store, redis_cache, raw, prefix) -> None:
    store = make_store()
    store.write([("k", "older")], [])
    clock = FakeClock()
    cache = redis_cache(store, quiet=True, clock=clock)
    cache.set("k", "newer", ttl=1)
    clock.advance(30)
    assert cache["k"] == "newer"  # pending: never the older value
    cache.flush()  # written with PX 1: it replaces "older", then Redis drops it
    wait_until(lambda: raw.exists(prefix + "k") == 0, message="Redis never expired the key")
    assert cache.get("k") is None  # expired in memory, gone from Redis


def test_redis_an_expired_entry_reads_through_to_what_redis_holds(
    make_store, redis_cache, raw, prefix
) -> None:
    clock = FakeClock()
    cache = redis_cache(make_store(), quiet=True, expire_after_write=10, clock=clock)
    cache["k"] = "mine"
    cache.flush()
    raw.set(prefix + "k", b'"theirs"')  # another process wrote it (no coherence here)
    assert cache["k"] == "mine"
    clock.advance(10)
    assert cache["k"] == "theirs"


def test_redis_a_key_read_through_expires_from_memory_when_redis_would_drop_it(
    make_store, redis_cache, raw, prefix
) -> None:
    raw.set(prefix + "brief", b'"v"', px=20_000)  # another process set it, with its TTL
    raw.set(prefix + "other", b'"w"', px=20_000)
    raw.set(prefix + "forever", b'"f"')
    store = make_store()
    assert store.reports_ttls
    found, ttls = store.load_many_with_ttls(["brief", "forever", "absent"])
    assert found == {"brief": "v", "forever": "f"}
    assert set(ttls) == {"brief"} and 19 < ttls["brief"] <= 20
    clock = FakeClock()
    cache = redis_cache(store, quiet=True, clock=clock)  # no expiry of its own
    assert cache["brief"] == "v" and cache.get_many(["other", "forever"]) == {
        "other": "w",
        "forever": "f",
    }
    assert cache.stats.loads == 3
    clock.advance(18)
    assert (cache["brief"], cache["other"], cache["forever"]) == ("v", "w", "f")
    assert cache.stats.loads == 3  # all from memory
    clock.advance(2.1)  # past the time Redis gave them when they were read
    assert cache["brief"] == "v"  # read through again: Redis (on its own clock) still has it
    assert cache.stats.loads == 4
    clock.advance(10**6)
    assert cache["forever"] == "f" and cache.stats.loads == 4  # kept for good, as Redis keeps it
