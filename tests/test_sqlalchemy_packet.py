"""MariaDB's max_allowed_packet: one oversized value is refused alone; statements stay under the limit.

The server drops the connection on a statement larger than `max_allowed_packet` (16 MiB
by default, which these tests use): the store refuses such a row before sending anything,
naming its key (`ValueTooLargeError`), so the writer writes the rest of the batch; and it
cuts multi-row statements to fit. Runs on the local MariaDB, on each core.
"""

from __future__ import annotations

import json

import pytest
import services
import sqlalchemy as sa
from services import Database
from sqlalchemy.dialects import mysql

from lazycache import FlushError
from lazycache.stores.sqlalchemy import SQLAlchemyStore, ValueTooLargeError

MIB = 1024 * 1024


database = services.database  # the fixtures the tests below request, on MariaDB only
db_cache = services.db_cache
pytestmark = pytest.mark.parametrize("database", ["mariadb"], indirect=True)


def server_limit(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())


def documents_table(database: Database) -> sa.Table:
    table = sa.Table(
        database.table_name("docs"),
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("body", mysql.LONGTEXT(), nullable=False),
    )
    table.create(database.engine)
    return table


def oversized(database: Database) -> str:
    return "x" * (server_limit(database) + MIB)


@pytest.mark.parametrize("mode", ["kv", "kv-core", "rows"])
def test_only_the_oversized_value_is_rejected_and_the_rest_of_its_batch_is_written(
    database, db_cache, mode
) -> None:
    if mode.startswith("kv"):
        store = SQLAlchemyStore(database.engine, database.table_name())
        if mode == "kv-core":
            store._layout.fast_path = None  # as for a driver the store has no fast path for
        good = {f"k{i}": f"value {i}" for i in range(20)}
    else:
        store = SQLAlchemyStore(database.engine, documents_table(database), key="name")
        good = {f"k{i}": {"body": f"value {i}"} for i in range(20)}
    huge = oversized(database) if mode != "rows" else {"body": oversized(database)}
    cache = db_cache(
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
    with database.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(key, value)).all())
    if mode == "rows":
        good = {key: row["body"] for key, row in good.items()}
    else:
        good = {key: json.dumps(value) for key, value in good.items()}
    assert stored == good


def test_values_near_a_full_statement_and_one_near_the_limit_go_in_statements_the_server_takes(
    database,
) -> None:
    store = SQLAlchemyStore(database.engine, database.table_name())
    near = "y" * (server_limit(database) - MIB // 4)  # fits alone, not after 0.9 MiB of neighbours
    upserts = [(f"k{i:03}", "z" * 3600) for i in range(249)] + [("near", near)]
    upserts += [(f"m{i:03}", "z" * 3600) for i in range(50)]  # more than one statement's worth
    store.write(upserts, [])
    fresh = SQLAlchemyStore(database.new_engine(), store.table.name)
    try:
        loaded = fresh.load_many([key for key, _ in upserts])
    finally:
        fresh.close()
    assert loaded == dict(upserts)


def test_rows_adding_up_to_more_than_the_limit_go_in_statements_the_server_takes(
    database,
) -> None:
    table = documents_table(database)
    store = SQLAlchemyStore(database.engine, table, key="name")
    rows = {f"d{i:02}": {"body": f"{i:02}" + "b" * MIB} for i in range(24)}  # 24 MiB in all
    generated = store.write(list(rows.items()), [])
    assert generated is not None and sorted(generated) == sorted(rows)
    with database.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(table.c.name, table.c.body)).all())
    assert stored == {name: row["body"] for name, row in rows.items()}
