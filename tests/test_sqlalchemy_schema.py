"""SQLAlchemyStore and the table in the database: what it never writes, what it refuses, how it creates.

* Columns the database generates (identity GENERATED ALWAYS, computed columns) are never
  sent, even once their values are merged back into the cached value; a column the
  database fills in is left out when the value holds None.
* A table every write would fail on is refused when the store is made, naming the table.
* Processes opening a new table at the same moment all succeed.

Every test runs on SQLite, PostgreSQL and MariaDB; those that go through a cache also run
on each core.
"""

from __future__ import annotations

import datetime
import multiprocessing
import traceback
from typing import Any

import pytest
import services
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import lazycache
from lazycache.stores.sqlalchemy import SQLAlchemyStore, UnusableTableError

database = services.database  # the fixtures the tests below request
db_cache = services.db_cache

SPAWN = multiprocessing.get_context("spawn")

ROUNDS = 20
"""New tables opened at once by every process of the race test (main failed about 1 round in 4)."""

RACERS = 3
"""Processes opening each new table at once."""

START_TIMEOUT = 120.0
"""Seconds a spawned process may take to import everything (the machine is shared)."""


def counters_table(database) -> sa.Table:
    """A table whose id the database makes (GENERATED ALWAYS where there are identities; AUTO_INCREMENT
    on MariaDB, an INTEGER PRIMARY KEY on SQLite), with a computed column and a server default."""
    return sa.Table(
        database.table_name("counters"),
        sa.MetaData(),
        sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("double", sa.Integer, sa.Computed("n * 2", persisted=True)),
        sa.Column("label", sa.String(20), nullable=False, server_default="fresh"),
    )


def rows_of(database, table: sa.Table) -> list[dict]:
    with database.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(table).order_by(table.c.id))]


# ----------------------------------------------------------------------------- never written (issue 12 #4)


def test_an_object_with_generated_columns_merged_back_is_written_again_and_again(
    database, db_cache
) -> None:
    table = counters_table(database)
    cache = db_cache(SQLAlchemyStore(database.engine, table, key="name"), quiet=True)
    cache["a"] = {"n": 1}
    cache.flush()
    first = cache["a"]
    assert isinstance(first["id"], int) and first["double"] == 2 and first["label"] == "fresh"
    for n in range(2, 6):  # the merged id, double and label travel with the value from now on
        cache["a"] = {**cache["a"], "n": n}
        result = cache.flush()
        assert (result.written, result.poisoned_keys) == (1, ())
        assert cache["a"]["id"] == first["id"] and cache["a"]["double"] == 2 * n
    assert rows_of(database, table) == [
        {"id": first["id"], "name": "a", "n": 5, "double": 10, "label": "fresh"}
    ]


def test_columns_the_database_reports_as_generated_are_never_written_though_undeclared(
    database, db_cache
) -> None:
    created = counters_table(database)  # the migration's table...
    created.create(database.engine)
    plain = sa.Table(  # ...and a model that does not say what the database generates
        created.name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("double", sa.Integer),
        sa.Column("label", sa.String(20), nullable=False),
    )
    cache = db_cache(SQLAlchemyStore(database.engine, plain, key="name"), quiet=True)
    cache["b"] = {"n": 3}
    cache.flush()
    assert cache["b"]["double"] == 6  # merged back by default, as the database generates it
    cache["b"] = {**cache["b"], "n": 4, "double": 999}  # never sent: the database computes it
    result = cache.flush()
    assert result.poisoned_keys == ()
    assert cache["b"]["double"] == 8
    assert [(row["n"], row["double"]) for row in rows_of(database, plain)] == [(4, 8)]


def test_orm_instances_with_an_always_identity_are_written_again_after_merge_back(
    database, db_cache
) -> None:
    class Base(DeclarativeBase):
        pass

    class Counter(Base):
        __tablename__ = database.table_name("counter")
        id: Mapped[int] = mapped_column(sa.Identity(always=True), primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50), unique=True)
        n: Mapped[int]
        double: Mapped[int] = mapped_column(sa.Computed("n * 2", persisted=True), nullable=True)

    Base.metadata.create_all(database.engine)
    cache = db_cache(SQLAlchemyStore(database.engine, Counter, key="name"), quiet=True)
    counter = Counter(name="c", n=1)
    cache["c"] = counter
    cache.flush()
    first_id = counter.id
    assert isinstance(first_id, int) and counter.double == 2
    for n in range(2, 5):
        counter.n = n
        cache["c"] = counter
        assert cache.flush().poisoned_keys == ()
        assert (counter.id, counter.double) == (first_id, 2 * n)
    with database.engine.connect() as conn:
        assert conn.execute(sa.select(Counter.id, Counter.n, Counter.double)).all() == [
            (first_id, 4, 8)
        ]


def test_none_in_a_server_default_column_is_left_to_the_database_with_merging_off(
    database,
) -> None:
    table = counters_table(database)
    store = SQLAlchemyStore(database.engine, table, key="name", generated=())
    assert store.write([("d", {"n": 1, "label": None})], []) is None
    store.write([("e", {"n": 2, "label": "mine"})], [])
    assert [row["label"] for row in rows_of(database, table)] == ["fresh", "mine"]


@pytest.mark.parametrize("database", ["mariadb"], indirect=True)  # MySQL's idiom
def test_a_timestamp_the_server_sets_on_update_is_left_to_it_though_merged_back(
    database,
) -> None:
    name = database.table_name("stamped")
    with database.engine.begin() as conn:  # the usual MySQL idiom, made by a migration
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL UNIQUE, "
            "n INT NOT NULL, updated TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)"
        )
    table = sa.Table(name, sa.MetaData(), autoload_with=database.engine)
    store = SQLAlchemyStore(database.engine, table, key="name")
    first = store.write([("a", {"n": 1})], [])
    assert first is not None and first["a"]["updated"] is not None
    old = datetime.datetime(2001, 1, 1)  # a stale copy in the cached value is not written back
    again = store.write([("a", {**first["a"], "n": 2, "updated": old})], [])
    assert again is not None and again["a"]["updated"] >= first["a"]["updated"]
    with database.engine.connect() as conn:
        assert conn.execute(sa.select(table.c.n, table.c.updated)).one() == (
            2,
            again["a"]["updated"],
        )


def test_a_key_column_the_database_generates_is_refused(database) -> None:
    table = counters_table(database)
    table.append_constraint(sa.UniqueConstraint("double"))
    with pytest.raises(UnusableTableError, match="generates the key column") as caught:
        SQLAlchemyStore(database.engine, table, key="double")
    assert caught.value.table == table.name


# ----------------------------------------------------------------------------- unusable tables (issue 12 #8)


def make_table(database, *columns: sa.Column) -> str:
    name = database.table_name("existing")
    sa.Table(name, sa.MetaData(), *columns).create(database.engine)
    return name


def test_open_refuses_a_table_without_a_unique_key_naming_it(database) -> None:
    name = make_table(
        database, sa.Column("key", sa.String(100), nullable=False), sa.Column("value", sa.Text)
    )
    with pytest.raises(UnusableTableError, match="unique") as caught:
        lazycache.open(database.engine, name)
    assert caught.value.table == name and isinstance(caught.value, ValueError)
    assert name in str(caught.value)


def test_open_refuses_a_key_column_of_another_type(database) -> None:
    name = make_table(
        database,
        sa.Column("key", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("value", sa.Text),
    )
    with pytest.raises(UnusableTableError, match="key column 'key'") as caught:
        lazycache.open(database.engine, name)  # str keys, the default
    assert caught.value.table == name
    lazycache.open(database.engine, name, key_type=int).close()  # int keys are fine


def test_row_store_refuses_a_table_whose_key_is_not_unique_in_the_database(database) -> None:
    name = make_table(
        database,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    declared = sa.Table(  # the model says unique; the table in the database does not
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
    )
    with pytest.raises(UnusableTableError, match=r"unique .* \['name'\]"):
        SQLAlchemyStore(database.engine, declared, key="name")


def test_row_store_refuses_a_key_column_of_another_type_or_a_missing_column(database) -> None:
    name = make_table(
        database,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.Integer, nullable=False, unique=True),
    )

    def declared(*extra: sa.Column) -> sa.Table:
        return sa.Table(
            name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("code", sa.String(20), nullable=False, unique=True),
            *extra,
        )

    with pytest.raises(UnusableTableError, match="key column 'code'"):
        SQLAlchemyStore(database.engine, declared(), key="code")
    with pytest.raises(UnusableTableError, match=r"no column\(s\) \['note'\]"):
        SQLAlchemyStore(database.engine, declared(sa.Column("note", sa.Text)), key="id")


def test_a_missing_table_is_refused_when_creating_is_off(database) -> None:
    name = database.table_name("absent")
    with pytest.raises(UnusableTableError, match="does not exist"):
        SQLAlchemyStore(database.engine, name, create=False)


def test_open_refuses_a_read_only_sqlite_file(tmp_path, impl) -> None:
    path = tmp_path / "ro.db"
    with lazycache.open(f"sqlite:///{path}", implementation=impl) as cache:
        cache["a"] = 1
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    with pytest.raises(UnusableTableError, match="cannot write") as caught:
        lazycache.open(url, implementation=impl)
    assert caught.value.table == "lazycache"
    reader = SQLAlchemyStore(f"sqlite:///{path}", create=False)  # the same file, writable, is fine
    try:
        assert reader.load_many(["a"]) == {"a": 1}
    finally:
        reader.close()


# ----------------------------------------------------------------------------- racing creators (issue 12 #7)


def _open_new_tables(url: str, names: list[str], mode: str, barrier: Any) -> str | None:
    """A racer: opens each new table the moment every racer is ready; the traceback of a failure, or None."""
    try:
        for name in names:
            barrier.wait(START_TIMEOUT)
            if mode == "kv":
                lazycache.open(url, name, write_interval=3600).close()
            else:
                table = sa.Table(
                    name,
                    sa.MetaData(),
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.String(50), nullable=False),
                    sa.Index(f"ix_{name}", "name", unique=True),
                )
                SQLAlchemyStore(url, table, key="name").close()
        return None
    except BaseException:
        barrier.abort()  # release the others: the test fails with this traceback
        return traceback.format_exc()


def _race(racer: Any, *args: Any) -> None:
    """Runs `racer(*args, barrier)` in RACERS spawned processes at once; fails with the first traceback."""
    manager = SPAWN.Manager()
    try:
        barrier = manager.Barrier(RACERS)
        with SPAWN.Pool(RACERS) as pool:
            outcomes = [pool.apply_async(racer, (*args, barrier)) for _ in range(RACERS)]
            failures = [
                failure
                for failure in (outcome.get(START_TIMEOUT + ROUNDS * 30) for outcome in outcomes)
                if failure is not None
            ]
    finally:
        manager.shutdown()
    assert not failures, failures[0]


def _open_new_files(urls: list[str], barrier: Any) -> str | None:
    """A racer: opens a cache on each new SQLite file the moment every racer is ready."""
    try:
        for url in urls:
            barrier.wait(START_TIMEOUT)
            with lazycache.open(url, write_interval=3600) as cache:
                cache["racer"] = 1
        return None
    except BaseException:
        barrier.abort()
        return traceback.format_exc()


def test_processes_opening_a_new_sqlite_file_at_the_same_moment_all_succeed(tmp_path) -> None:
    # Switching a new file to WAL needs it to itself, and SQLite answered "database is
    # locked" at once, busy timeout or not, to the racers that lost (about 1 race in 6).
    urls = [f"sqlite:///{tmp_path / f'new-{round_}.db'}" for round_ in range(ROUNDS)]
    _race(_open_new_files, urls)
    for url in urls:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("SELECT value FROM lazycache").scalar() is not None
        finally:
            engine.dispose()


@pytest.mark.parametrize("mode", ["kv", "rows"])
def test_processes_opening_a_new_table_at_the_same_moment_all_succeed(database, mode) -> None:
    names = [database.table_name("race") for _ in range(ROUNDS)]
    _race(_open_new_tables, database.url, names, mode)
    inspector = sa.inspect(database.engine)
    assert all(inspector.has_table(name) for name in names)
