"""Expiry in the stores: Redis keys get the cache's TTLs (PX); a SQL key-value table keeps an
expires_at column that reads ignore once passed and purge_expired() clears.

The cache's clock and the SQL store's wall clock are fakes the tests move; Redis expires
keys by its own clock, so the Redis tests read PTTL, and wait (polling, bounded) only for
a key written with PX 1.
"""

from __future__ import annotations

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
