"""SQLAlchemyStore failures: real errors induced on real servers, and how `is_recoverable` classifies them.

Recoverable (retrying the batch later may work): a killed connection, a deadlock, a
serialization failure, a lock timeout or a busy SQLite file. Not recoverable (the data's
fault): integrity and data errors, a missing table, a value the serializer cannot encode.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from helpers import TIMEOUT, wait_until
from services import database, db_cache  # noqa: F401  (fixtures)

from lazycache.serializers import SerializationError
from lazycache.stores.sqlalchemy import SQLAlchemyStore, is_recoverable_error

SERVERS = pytest.mark.parametrize("database", ["postgresql", "mariadb"], indirect=True)


def run_in_thread(fn, *args):
    """Starts fn(*args) in a thread; returns (thread, outcome) where outcome gets "error" or "result"."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fn(*args)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def waiting_for_a_lock(database, table: str) -> int:
    """How many sessions are blocked on a row lock in a statement on `table`."""
    with database.engine.connect() as conn:
        if database.kind == "postgresql":
            sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %(pattern)s"
            return conn.exec_driver_sql(sql, {"pattern": f"%{table}%"}).scalar()
        sql = "SELECT count(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE %(pattern)s"
        return conn.exec_driver_sql(sql, {"pattern": f"%{table}%"}).scalar()


def update_sql(database, table: str) -> str:
    quote = database.engine.dialect.identifier_preparer.quote
    mark = "?" if database.kind == "sqlite" else "%s"
    return f"UPDATE {quote(table)} SET {quote('value')} = '0' WHERE {quote('key')} = {mark}"


# ----------------------------------------------------------------------------- not recoverable


def test_read_through_error_surfaces_as_an_exception_not_a_miss(database, db_cache) -> None:
    store = SQLAlchemyStore(database.engine, database.table_name())
    cache = db_cache(store, quiet=True, close_may_fail=True)
    store.write([("there", 1)], [])
    assert cache["there"] == 1
    with database.engine.begin() as conn:
        conn.exec_driver_sql(
            f"DROP TABLE {database.engine.dialect.identifier_preparer.quote(store.table.name)}"
        )
    for read in (
        lambda: cache["elsewhere"],
        lambda: cache.get("elsewhere"),
        lambda: "elsewhere" in cache,
    ):
        with pytest.raises(sa.exc.DBAPIError) as caught:
            read()
        assert store.is_recoverable(caught.value) is False  # a missing table will still be missing
    assert cache["there"] == 1  # memory still answers


def test_integrity_error_is_not_recoverable(database) -> None:
    table = sa.Table(
        database.table_name("people"),
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("email", sa.String(50), unique=True),
    )
    store = SQLAlchemyStore(database.engine, table, key="name")
    store.write([("a", {"email": "same@example.com"})], [])
    with pytest.raises(sa.exc.IntegrityError) as caught:
        store.write(
            [("b", {"email": "other@example.com"}), ("c", {"email": "same@example.com"})], []
        )
    assert store.is_recoverable(caught.value) is False
    # Nothing of the batch; "a" untouched (MySQL would have updated it).
    with database.engine.connect() as conn:
        assert conn.execute(sa.select(table.c.name, table.c.email)).all() == [
            ("a", "same@example.com")
        ]


@pytest.mark.parametrize(
    "size", [pytest.param(2, id="small-batch"), pytest.param(700, id="pipelined-batch")]
)
def test_a_key_the_column_cannot_hold_is_not_recoverable(database, size) -> None:
    store = SQLAlchemyStore(database.engine, database.table_name(), key_type=int)
    upserts = [(i, "fine") for i in range(1, size)]
    upserts.insert(
        size * 2 // 3, (2**70, "too big for BIGINT")
    )  # in a later statement of a pipelined batch
    with pytest.raises(Exception) as caught:  # DataError on the servers, OverflowError from sqlite3
        store.write(upserts, [])
    assert store.is_recoverable(caught.value) is False
    assert store.load_many([1]) == {}
    store.write([(1, "fine")], [])  # the store carries on
    assert store.load(1) == "fine"


def test_is_recoverable_without_a_database() -> None:
    assert is_recoverable_error(ConnectionError("reset")) is True
    assert is_recoverable_error(TimeoutError()) is True
    assert is_recoverable_error(SerializationError("k", TypeError("no"))) is False
    assert is_recoverable_error(ValueError("bad")) is False
    assert is_recoverable_error(sa.exc.TimeoutError("pool exhausted")) is True


def test_missing_sqlalchemy_raises_import_error_naming_the_extra() -> None:
    code = "import sys; sys.modules['sqlalchemy'] = None\nimport lazycache.stores.sqlalchemy"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "lazywritercache[sqlalchemy]" in proc.stderr


# ----------------------------------------------------------------------------- recoverable


@SERVERS
def test_killed_connection_is_recoverable_and_the_next_write_reconnects(database) -> None:
    store = SQLAlchemyStore(
        database.url, database.table_name()
    )  # its own engine: one pooled connection
    try:
        store.write([("a", 1)], [])
        with store.engine.connect() as conn:
            session = conn.exec_driver_sql(
                "SELECT pg_backend_pid()"
                if database.kind == "postgresql"
                else "SELECT CONNECTION_ID()"
            ).scalar()
        with database.engine.connect() as admin:
            if database.kind == "postgresql":
                admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(session)})")
            else:
                admin.exec_driver_sql(f"KILL {int(session)}")
        with pytest.raises(sa.exc.DBAPIError) as caught:
            store.write([("b", 2)], [])
        assert store.is_recoverable(caught.value) is True
        store.write([("b", 2)], [])  # the pool replaced the dead connection
        assert store.load_many(["a", "b"]) == {"a": 1, "b": 2}
    finally:
        store.close()


@SERVERS
def test_deadlock_is_recoverable(database) -> None:
    name = database.table_name()
    if database.kind == "postgresql":
        # The store checks for a deadlock 300 ms into its wait (by then the cycle is closed),
        # the other session only after 10 s: the store is the one PostgreSQL aborts.
        options = {"connect_args": {"options": "-c deadlock_timeout=300"}}
    else:
        options = {}  # InnoDB detects the cycle at once and aborts the smaller transaction: the store's
    store = SQLAlchemyStore(database.url, name, engine_options=options)
    try:
        store.write([(f"k{i}", i) for i in range(50)] + [("a", 0), ("b", 0)], [])
        with database.engine.connect() as other:
            if database.kind == "postgresql":
                other.exec_driver_sql("SET deadlock_timeout = '10s'")
            else:
                for i in range(50):  # make the other transaction the larger one
                    other.exec_driver_sql(update_sql(database, name), (f"k{i}",))
            other.exec_driver_sql(update_sql(database, name), ("b",))
            thread, outcome = run_in_thread(
                store.write, [("a", 1), ("b", 1)], []
            )  # locks a, waits for b
            wait_until(
                lambda: waiting_for_a_lock(database, name) >= 1,
                message="the store never waited for the lock",
            )
            other.exec_driver_sql(
                update_sql(database, name), ("a",)
            )  # closes the cycle; returns once the store gave up
            other.rollback()
        thread.join(TIMEOUT)
        error = outcome.get("error")
        assert isinstance(error, sa.exc.DBAPIError), outcome
        code = error.orig.sqlstate if database.kind == "postgresql" else error.orig.args[0]
        assert code in ("40P01", 1213)
        assert store.is_recoverable(error) is True
    finally:
        store.close()


def test_lock_timeout_or_busy_database_is_recoverable(database) -> None:
    name = database.table_name()
    if database.kind == "postgresql":
        options = {"connect_args": {"options": "-c lock_timeout=100"}}
    elif database.kind == "mariadb":
        options = {"connect_args": {"init_command": "SET innodb_lock_wait_timeout = 1"}}
    else:
        options = {"connect_args": {"timeout": 0.05}}  # SQLite's busy timeout, in seconds
    store = SQLAlchemyStore(database.url, name, engine_options=options)
    try:
        store.write([("a", 0)], [])
        with database.engine.connect() as other:
            if database.kind == "sqlite":
                other.exec_driver_sql("BEGIN IMMEDIATE")  # takes the database's write lock
            other.exec_driver_sql(update_sql(database, name), ("a",))
            with pytest.raises(sa.exc.OperationalError) as caught:
                store.write([("a", 1)], [])
            other.rollback()
        assert store.is_recoverable(caught.value) is True
        store.write([("a", 1)], [])  # the lock is gone: the retry succeeds
        assert store.load("a") == 1
    finally:
        store.close()


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_serialization_failure_is_recoverable(database) -> None:
    name = database.table_name()
    store = SQLAlchemyStore(
        database.url, name, engine_options={"isolation_level": "REPEATABLE READ"}
    )
    try:
        store.write([("a", 0)], [])
        with database.engine.connect() as other:
            other.exec_driver_sql(update_sql(database, name), ("a",))
            thread, outcome = run_in_thread(
                store.write, [("a", 1)], []
            )  # its snapshot predates the commit below
            wait_until(
                lambda: waiting_for_a_lock(database, name) >= 1,
                message="the store never waited for the lock",
            )
            other.commit()
        thread.join(TIMEOUT)
        error = outcome.get("error")
        assert isinstance(error, sa.exc.DBAPIError) and error.orig.sqlstate == "40001", outcome
        assert store.is_recoverable(error) is True
    finally:
        store.close()
