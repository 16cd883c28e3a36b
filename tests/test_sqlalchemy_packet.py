"""MariaDB's max_allowed_packet: one oversized value is refused alone; statements stay under the limit.

The server drops the connection on a statement larger than `max_allowed_packet` (16 MiB
by default, which these tests use): the store refuses such a row before sending anything,
naming its key (`ValueTooLargeError`), so the writer writes the rest of the batch; and it
cuts multi-row statements to fit. Runs on the local MariaDB, on each core.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import close_caches, recording
from services import Database, mariadb_url
from sqlalchemy.dialects import mysql

from lazycache import FlushError
from lazycache.stores.sqlalchemy import SQLAlchemyStore, ValueTooLargeError

MIB = 1024 * 1024


@pytest.fixture
def mariadb() -> Any:
    db = Database("mariadb", mariadb_url())
    yield db
    db.teardown()


@pytest.fixture
def maria_cache(mariadb: Database, make_cache: Any) -> Any:
    """make_cache for caches over `mariadb`: closed before its tables are dropped."""
    make, made = recording(make_cache)
    yield make
    try:
        close_caches(made)
    finally:
        for cache, _ in made:
            cache.store.close()


def server_limit(mariadb: Database) -> int:
    with mariadb.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())


def documents_table(mariadb: Database) -> sa.Table:
    table = sa.Table(
        mariadb.table_name("docs"),
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("body", mysql.LONGTEXT(), nullable=False),
    )
    table.create(mariadb.engine)
    return table


def oversized(mariadb: Database) -> str:
    return "x" * (server_limit(mariadb) + MIB)


@pytest.mark.parametrize("mode", ["kv", "kv-core", "rows"])
def test_only_the_oversized_value_is_rejected_and_the_rest_of_its_batch_is_written(
    mariadb, maria_cache, mode
) -> None:
    if mode.startswith("kv"):
        store = SQLAlchemyStore(mariadb.engine, mariadb.table_name())
        if mode == "kv-core":
            store._kv_sql = None  # as for a driver the store has no fast path for
        good = {f"k{i}": f"value {i}" for i in range(20)}
    else:
        store = SQLAlchemyStore(mariadb.engine, documents_table(mariadb), key="name")
        good = {f"k{i}": {"body": f"value {i}"} for i in range(20)}
    huge = oversized(mariadb) if mode != "rows" else {"body": oversized(mariadb)}
    cache = maria_cache(
        store, quiet=True, close_may_fail=True, max_retries=1, retry_initial=0.01
    )  # on a connection error, the batch gives up after one retry: no test waits for ever
    cache.update(good)
    cache["huge"] = huge
    with pytest.raises(FlushError) as caught:
        cache.flush()
    assert caught.value.result.poisoned_keys == ("huge",)
    assert list(cache.write_errors) == ["huge"]
    error = cache.write_errors["huge"]
    assert isinstance(error, ValueTooLargeError) and error.key == "huge"
    assert "max_allowed_packet" in str(error)
    assert cache.pending == 0 and cache["huge"] == huge  # still readable from memory
    table = store.table
    key, value = (table.c.name, table.c.body) if mode == "rows" else (table.c.key, table.c.value)
    with mariadb.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(key, value)).all())
    if mode == "rows":
        good = {key: row["body"] for key, row in good.items()}
    else:
        good = {key: json.dumps(value) for key, value in good.items()}
    assert stored == good


def test_values_near_a_full_statement_and_one_near_the_limit_go_in_statements_the_server_takes(
    mariadb,
) -> None:
    store = SQLAlchemyStore(mariadb.engine, mariadb.table_name())
    near = "y" * (server_limit(mariadb) - MIB // 4)  # fits alone, not after 0.9 MiB of neighbours
    upserts = [(f"k{i:03}", "z" * 3600) for i in range(249)] + [("near", near)]
    upserts += [(f"m{i:03}", "z" * 3600) for i in range(50)]  # more than one statement's worth
    store.write(upserts, [])
    fresh = SQLAlchemyStore(mariadb.new_engine(), store.table.name)
    try:
        loaded = fresh.load_many([key for key, _ in upserts])
    finally:
        fresh.close()
    assert loaded == dict(upserts)


def test_rows_adding_up_to_more_than_the_limit_go_in_statements_the_server_takes(
    mariadb,
) -> None:
    table = documents_table(mariadb)
    store = SQLAlchemyStore(mariadb.engine, table, key="name")
    rows = {f"d{i:02}": {"body": f"{i:02}" + "b" * MIB} for i in range(24)}  # 24 MiB in all
    generated = store.write(list(rows.items()), [])
    assert generated is not None and sorted(generated) == sorted(rows)
    with mariadb.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(table.c.name, table.c.body)).all())
    assert stored == {name: row["body"] for name, row in rows.items()}
