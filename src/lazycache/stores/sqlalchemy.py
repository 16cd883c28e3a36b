"""SQLAlchemyStore: a write-behind cache over any SQL database SQLAlchemy 2.x speaks.

Two modes, chosen by what `table` is:

* **Key-value** (`table` is a name): a table `(key PRIMARY KEY, value)`, created if
  missing, whose values are serialised ("json" by default, "pickle", "msgpack" or your
  own pair; see `lazycache.serializers`). A persistent dict. With `expiry=True` the
  table has a third column, `expires_at` (milliseconds since the Unix epoch, NULL for
  never), set from an expiring cache's TTLs: reads ignore a row once it has passed,
  and `purge_expired()` deletes such rows.
* **Rows** (`table` is a `Table` or an ORM-mapped class): each cached value is one row,
  a dict of column values or an ORM instance, keyed by one column or several (a tuple
  key) that may be a secondary unique key while the database generates the primary key.
  After each batch the fields the database generated (autoincrement ids, server
  defaults, timestamps) are returned to the cache, which merges them into the values it
  holds (see `LazyWriterCache(merge_generated=...)`).

Every `write` is one transaction. Upserts use the dialect's own statement (PostgreSQL and
SQLite `INSERT ... ON CONFLICT DO UPDATE`, MySQL/MariaDB `INSERT ... ON DUPLICATE KEY
UPDATE`), a few statements per batch, never a SELECT per row; deletes are one `IN` per
chunk of keys, in the same transaction. On the key-value hot path the store talks to
the driver directly (it is where the time goes):

* PostgreSQL (psycopg 3): `INSERT ... SELECT * FROM unnest(keys, values) ON CONFLICT`
  with binary array parameters, in chunks sent in pipeline mode, so the server upserts
  one chunk while Python serialises the next.
* SQLite (sqlite3) and MySQL/MariaDB (PyMySQL, mysqlclient): the driver's `executemany`
  (PyMySQL and mysqlclient rewrite it into multi-row INSERTs).
* Any other dialect or driver: SQLAlchemy Core statements.

When the store is made it checks the table in the database (`UnusableTableError` for one
that every write would fail on) and learns which columns the database generates, which
it never writes. On MySQL/MariaDB a row larger than `max_allowed_packet` is refused
(`ValueTooLargeError`, naming its key) and statements are kept under that limit.

Driver errors are re-raised wrapped the way SQLAlchemy wraps them (`IntegrityError`,
`OperationalError`, ... with `.orig`), and a connection the driver lost is invalidated so
the pool never hands it out again. `is_recoverable` tells retryable failures (lost
connection, deadlock, serialization failure, lock timeout) from the data's fault.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import hashlib
import importlib.util
import logging
import math
import os
import queue
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Callable, Union

try:
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.dialects import mysql as _mysql
    from sqlalchemy.dialects import postgresql as _postgresql
    from sqlalchemy.dialects import sqlite as _sqlite
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Mapper, attributes, make_transient_to_detached
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "lazycache.stores.sqlalchemy needs SQLAlchemy 2.x, which is not installed: "
        "pip install 'lazywritercache[sqlalchemy]' (or 'lazywritercache[postgresql]' / 'lazywritercache[mysql]' for a driver too)"
    ) from exc

if int(sa.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"lazycache.stores.sqlalchemy needs SQLAlchemy 2.x, found {sa.__version__}: pip install 'lazywritercache[sqlalchemy]'"
    )

from .._checks import check_int
from .._pacing import GilPacer
from ..serializers import SerializationError, Serializer, SerializerSpec, get_serializer
from .base import GeneratedFields, Store

__all__ = [
    "DEFAULT_URL",
    "InDoubtSessionError",
    "KeyConflictError",
    "SQLAlchemyStore",
    "UnusableTableError",
    "ValueTooLargeError",
    "configure_sqlite",
    "hold_forks_while_in_use",
    "is_recoverable_error",
    "make_engine",
    "with_installed_driver",
]

_log = logging.getLogger("lazycache.store.sqlalchemy")

DEFAULT_URL = "sqlite:///lazycache.db"
"""The embedded default: a SQLite file in the current directory."""

EXPIRES_AT = "expires_at"
"""The expiry column of a key-value table made with `expiry=True` (ms since the epoch, NULL: never)."""

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite connection made by `make_engine` waits for a lock before "database is locked"."""

NETWORK_TIMEOUTS: dict[str, dict[str, Any]] = {
    # libpq (psycopg 3, psycopg2): seconds to connect; TCP keepalives (a connection waiting
    # for an answer that never comes is probed after 30 s idle, given up after 3 probes 10 s
    # apart), and milliseconds sent data may stay unacknowledged before the kernel drops
    # the connection. A statement that is merely slow is not cut: the server's TCP stack
    # still answers the probes and acknowledges the data.
    "postgresql": {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 60_000,
    },
    # PyMySQL, mysqlclient: seconds to connect, and to wait for each read or write on the socket.
    "mysql": {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60},
}
"""By backend: the DBAPI `connect_args` `make_engine` gives a networked engine unless told
otherwise, so that a server that stops answering (its packets black-holed, not refused)
fails a write after a while instead of hanging the writer thread for ever."""

_NETWORK_TIMEOUT_DRIVERS = {
    "postgresql": ("psycopg", "psycopg2"),
    "mysql": ("pymysql", "mysqldb"),
    "mariadb": ("pymysql", "mysqldb"),
}
"""The drivers that take the arguments of NETWORK_TIMEOUTS (by backend) as they are."""

_ENV_SETTINGS = {"connect_timeout": "PGCONNECT_TIMEOUT"}
"""libpq reads these from the environment: a default must not override what it says."""

_PG_SINGLE_STATEMENT = 64
"""PostgreSQL key-value batches up to this size go as one statement; larger ones are pipelined in chunks
(measured: one statement is faster below ~64 rows, chunks of 32+ rows above)."""

_MYSQL_SINGLE_STATEMENT = 250
"""PyMySQL key-value batches up to this size go through executemany; larger ones are pipelined."""

_MYSQL_CHUNK_ROWS = 250
_MYSQL_CHUNK_BYTES = 1_000_000
"""A pipelined MySQL statement holds at most this many rows and about this many bytes (PyMySQL's own limit)."""

_MYSQL_PACKET_MARGIN = 64 * 1024
"""Bytes of a MySQL statement's packet kept for its SQL around the values: a row whose values take more than
`max_allowed_packet` less this is refused (`ValueTooLargeError`), and multi-row statements stay this far under."""

IN_DOUBT_TIMEOUT = 5.0
"""Seconds a write waits for the server session of an earlier write whose connection was lost to end
(`InDoubtSessionError` after that, and the writer retries later)."""

_KeyType = Union[type, "sa.types.TypeEngine[Any]"]


# ----------------------------------------------------------------------------- engines


def _is_sqlite_file(url: sa.engine.URL) -> bool:
    database = url.database or ""
    return database not in ("", ":memory:") and url.query.get("mode") != "memory"


def configure_sqlite(engine: Engine, *, wal: bool = True) -> Engine:
    """Sets up every new connection of a SQLite `engine` for a write-behind store.

    A file database is switched to WAL (readers do not block the writer, the writer does
    not block readers; the mode is persistent in the file) with `synchronous=NORMAL`, the
    usual pairing: a commit is durable once the WAL is checkpointed, and the database is
    never corrupted by a crash. Returns `engine`.
    """
    if engine.dialect.name != "sqlite":
        raise ValueError(f"not a SQLite engine: {engine.url!r}")
    use_wal = wal and _is_sqlite_file(engine.url)
    hold_forks_while_in_use(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if use_wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return engine


FORK_WAIT = 10.0
"""Seconds `fork()` waits for the connections of a SQLite file engine in use to be returned
(see `hold_forks_while_in_use`) before it goes ahead anyway."""


class _ForkGuard:
    """Counts the connections of one SQLite file engine checked out of its pool, and holds a
    `fork()` back until there are none (and new ones until it is done).

    A connection in a transaction when the process forks leaves its locks in the child's copy
    of SQLite's per-process lock table (the unix VFS keeps one per file, shared by the
    process's connections). No one in the child ever releases them, so every connection the
    child opens on that file finds it locked, for good: "database is locked" on every write
    of a forked child whose parent was writing at the fork.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._in_use = 0
        self.forking = False  # a fork waits: connections are not handed out meanwhile

    def checkout(self, *_: Any) -> None:
        with self._cond:
            while self.forking:
                self._cond.wait()
            self._in_use += 1

    def checkin(self, *_: Any) -> None:
        with self._cond:
            self._in_use = max(0, self._in_use - 1)  # one checked out before a fork, in the child
            self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self.forking = True
            self._cond.notify_all()
            deadline = time.monotonic() + FORK_WAIT
            while self._in_use and self._cond.wait(max(0.0, deadline - time.monotonic())):
                pass
            busy = self._in_use
        if busy:
            _log.warning(
                "forking while %d connections to %s are in use (still after %gs): a forked "
                "child may find that database locked for good",
                busy,
                self.name,
                FORK_WAIT,
            )

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self.forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        self._reset()  # the child's only thread holds no connection; the lock may be a dead thread's


_FORK_GUARDS: weakref.WeakKeyDictionary[Engine, _ForkGuard] = weakref.WeakKeyDictionary()
_FORK_GUARDS_LOCK = threading.Lock()


def hold_forks_while_in_use(engine: Engine) -> None:
    """For a SQLite file engine: `fork()` waits (at most `FORK_WAIT` seconds) until none of its
    connections is in use, so that no transaction is open at the fork; see `_ForkGuard`.

    Done by `configure_sqlite` and by `SQLAlchemyStore` for the engine it uses. Connections
    to the same file made outside the engine (a `sqlite3.connect()` of your own) are not
    covered: do not fork while one of them is in a transaction.
    """
    if engine.dialect.name != "sqlite" or not _is_sqlite_file(engine.url):
        return
    with _FORK_GUARDS_LOCK:
        if engine in _FORK_GUARDS:
            return
        guard = _FORK_GUARDS[engine] = _ForkGuard(engine.url.render_as_string())
    event.listen(engine, "checkout", guard.checkout)
    event.listen(engine, "checkin", guard.checkin)


def _before_fork() -> None:
    for guard in list(_FORK_GUARDS.values()):
        guard.before_fork()


def _after_fork_in_parent() -> None:
    for guard in list(_FORK_GUARDS.values()):
        guard.after_fork_in_parent()


def _after_fork_in_child() -> None:
    for guard in list(_FORK_GUARDS.values()):
        guard.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    # Registered after the cache's own hooks (lazycache.cache is imported first), so run before
    # them: connections are returned before the cache's core lock is taken for the fork.
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


_EXTRA_DRIVERS = {
    "postgresql": ("psycopg", (), "postgresql"),
    "mysql": ("pymysql", ("MySQLdb",), "mysql"),
    "mariadb": ("pymysql", ("MySQLdb",), "mysql"),
}
"""Backend -> (the driver our extra installs, the modules that keep SQLAlchemy's own default when
importable, the extra). SQLAlchemy's default PostgreSQL driver is psycopg2 before 2.1 (psycopg from
2.1), its MySQL/MariaDB default mysqlclient (`MySQLdb`): neither is what our extras install."""


def _installed(module: str) -> bool:
    try:
        return module in sys.modules or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without __spec__
        return False


def with_installed_driver(url: str | sa.engine.URL) -> sa.engine.URL:
    """`url` with the driver our extras install named, when it names none.

    `postgresql://` becomes `postgresql+psycopg://` when psycopg 3 is installed; `mysql://`
    and `mariadb://` become `...+pymysql://` when PyMySQL is installed and mysqlclient is
    not. A URL that names its driver (`postgresql+psycopg2://`) is returned as it is.
    """
    url = sa.engine.make_url(url)
    backend, _, driver = url.drivername.partition("+")
    if driver or backend not in _EXTRA_DRIVERS:
        return url
    ours, preferred, _ = _EXTRA_DRIVERS[backend]
    if _installed(ours) and not any(_installed(module) for module in preferred):
        return url.set(drivername=f"{backend}+{ours}")
    return url


def make_engine(url: str | sa.engine.URL, **options: Any) -> Engine:
    """`sqlalchemy.create_engine(url, **options)`, set up for lazycache.

    A URL that names no driver gets the one lazycache's extra installed (see
    `with_installed_driver`): `postgresql://` uses psycopg 3, `mysql://` PyMySQL.
    PostgreSQL (psycopg, psycopg2) and MySQL/MariaDB (PyMySQL, mysqlclient) connections get
    the timeouts of `NETWORK_TIMEOUTS`, each unless `connect_args` or the URL's query sets
    it (None, or 0 for libpq's, turns one off).
    SQLite: a file database runs in WAL mode (see `configure_sqlite`) with a busy timeout of
    `SQLITE_BUSY_TIMEOUT` seconds unless `connect_args={"timeout": ...}` says otherwise; an
    in-memory database gets one connection shared by all threads (otherwise the writer
    thread and a reader would each see their own empty database).
    """
    given = sa.engine.make_url(url)
    url = with_installed_driver(given)
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if driver in _NETWORK_TIMEOUT_DRIVERS.get(backend, ()):
        defaults = NETWORK_TIMEOUTS["postgresql" if backend == "postgresql" else "mysql"]
        connect_args = dict(options.get("connect_args") or {})
        for name, value in defaults.items():
            # connect_args override the URL's query: a setting there must win over a default.
            env = _ENV_SETTINGS.get(name)
            if name in url.query or (env is not None and os.environ.get(env)):
                continue
            connect_args.setdefault(name, value)
        options["connect_args"] = connect_args
    if backend == "sqlite":
        connect_args = dict(options.get("connect_args") or {})
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        if not _is_sqlite_file(url):
            connect_args.setdefault("check_same_thread", False)
            options.setdefault("poolclass", sa.pool.StaticPool)
        options["connect_args"] = connect_args
        return configure_sqlite(sa.create_engine(url, **options))
    try:
        return sa.create_engine(url, **options)
    except ImportError as exc:
        if given.drivername not in _EXTRA_DRIVERS:  # a named driver: SQLAlchemy's error says it
            raise
        ours, _, extra = _EXTRA_DRIVERS[given.drivername]
        raise ImportError(
            f"{given.drivername}:// needs a driver ({exc}): pip install 'lazywritercache[{extra}]'"
            f" for {ours}, or name an installed one in the URL ({given.drivername}+DRIVER://)"
        ) from None


# ----------------------------------------------------------------------------- error classification

_PG_RECOVERABLE_STATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "40003",  # statement_completion_unknown
    "55P03",  # lock_not_available (lock_timeout, NOWAIT)
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown (pg_terminate_backend)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "57P05",  # idle_session_timeout
    "25P03",  # idle_in_transaction_session_timeout
    "53000",  # insufficient_resources
    "53200",  # out_of_memory
    "53300",  # too_many_connections
}
_PG_RECOVERABLE_CLASSES = {"08"}  # connection_exception

_MYSQL_RECOVERABLE_CODES = {
    1040,  # too many connections
    1053,  # server shutdown in progress
    1152,
    1153,
    1158,
    1159,
    1160,
    1161,  # aborted connection, network read/write errors
    1205,  # lock wait timeout exceeded
    1213,  # deadlock found when trying to get lock
    1317,  # query execution was interrupted
    1927,  # connection was killed (MariaDB)
    1969,  # max_statement_time exceeded (MariaDB)
    2002,
    2003,
    2006,
    2013,
    2014,
    2045,
    2055,  # cannot connect, server has gone away, lost connection
    3024,  # max_execution_time exceeded (MySQL)
    3572,  # NOWAIT lock not acquired (MySQL)
    4031,  # disconnected by the server for inactivity (MySQL)
}

_SQLITE_RECOVERABLE_CODES = {5, 6, 15}  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_PROTOCOL


def _driver_error_recoverable(orig: BaseException) -> bool | None:
    """What the driver's own error code says: True/False, or None when it says nothing."""
    module = type(orig).__module__.split(".")[0]
    if module in ("pymysql", "MySQLdb", "mysql", "mariadb", "asyncmy", "aiomysql"):
        code = _mysql_code(orig)  # (their sqlstate, when set, is mostly the catch-all HY000)
        return None if code is None else code in _MYSQL_RECOVERABLE_CODES
    if module in ("sqlite3", "pysqlite2", "aiosqlite"):
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return (code & 0xFF) in _SQLITE_RECOVERABLE_CODES
        message = str(orig).lower()
        return "database is locked" in message or "database table is locked" in message
    sqlstate = getattr(orig, "sqlstate", None) or getattr(
        orig, "pgcode", None
    )  # psycopg, psycopg2, asyncpg
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return sqlstate in _PG_RECOVERABLE_STATES or sqlstate[:2] in _PG_RECOVERABLE_CLASSES
    if module == "psycopg" and type(orig).__name__ == "OperationalError":
        return True  # raised by the client without a server error: the connection failed
    return None


def is_recoverable_error(exc: BaseException) -> bool:
    """Whether retrying the batch that raised `exc` later may succeed.

    Recoverable: a lost or refused connection, a deadlock, a serialization failure, a lock
    or statement timeout, a busy SQLite database. Not recoverable: integrity and data
    errors, a missing table, a value the serializer cannot encode (`SerializationError`).
    """
    if isinstance(exc, SerializationError):
        return False
    # A pool timeout, a pre-ping failure.
    if isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, BaseException):
            verdict = _driver_error_recoverable(exc.orig)
            if verdict is not None:
                return verdict
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    verdict = _driver_error_recoverable(exc)  # a driver error that escaped wrapping
    return bool(verdict)


# ----------------------------------------------------------------------------- table shapes


def _key_column_type(key_type: _KeyType, engine: Engine) -> sa.types.TypeEngine[Any]:
    if isinstance(key_type, sa.types.TypeEngine):
        return key_type
    if isinstance(key_type, type) and issubclass(key_type, sa.types.TypeEngine):
        return key_type()
    if key_type is str:
        if engine.dialect.name not in ("mysql", "mariadb"):
            return sa.String()
        # MySQL/MariaDB need a length for a key, and a binary collation so that keys
        # differing in case or accents stay different keys (the default collation is
        # case-insensitive); the no-pad variant also keeps "a" and "a " apart.
        version = engine.dialect.server_version_info or ()
        if getattr(engine.dialect, "is_mariadb", False):
            collation = "utf8mb4_nopad_bin" if version >= (10, 2) else "utf8mb4_bin"
        else:
            collation = "utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin"
        return _mysql.VARCHAR(255, charset="utf8mb4", collation=collation)
    if key_type is int:
        return sa.BigInteger()
    if key_type is uuid.UUID:
        return sa.Uuid()
    if key_type is bytes:
        return sa.LargeBinary().with_variant(_mysql.VARBINARY(255), "mysql", "mariadb")
    raise TypeError(
        f"key_type must be str, int, uuid.UUID, bytes or a SQLAlchemy type, not {key_type!r}"
    )


def _value_column_type(binary: bool) -> sa.types.TypeEngine[Any]:
    # TEXT and BLOB stop at 64 KiB on MySQL/MariaDB: use the LONG variants there.
    if binary:
        return sa.LargeBinary().with_variant(_mysql.LONGBLOB(), "mysql", "mariadb")
    return sa.Text().with_variant(
        _mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _unique_column_sets(table: sa.Table) -> list[frozenset[sa.Column[Any]]]:
    sets = [frozenset(table.primary_key.columns)]
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            sets.append(frozenset(constraint.columns))
    for index in table.indexes:
        if index.unique and all(isinstance(c, sa.Column) for c in index.expressions):
            sets.append(frozenset(index.columns))
    sets.extend(frozenset([column]) for column in table.columns if column.unique)
    return sets


def _unique_in_database(inspector: Any, table: sa.Table, columns: frozenset[str]) -> bool:
    """Whether the database keeps `columns` (names, lower case) unique in `table`: an upsert's conflict target.

    The primary key, a unique index (not a partial one) or a unique constraint, looked up
    in that order, each only if the one before did not match (catalog queries are slow).
    """
    name, schema = table.name, table.schema

    def lowered(names: Sequence[str | None]) -> frozenset[str | None]:
        return frozenset(None if column is None else column.lower() for column in names)

    primary = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    if lowered(primary) == columns:
        return True
    for index in inspector.get_indexes(name, schema=schema):
        partial = any(
            option.endswith("_where") and value is not None
            for option, value in (index.get("dialect_options") or {}).items()
        )  # a partial unique index is no conflict target for every row
        if index.get("unique") and not partial and lowered(index["column_names"]) == columns:
            return True
    try:
        constraints = inspector.get_unique_constraints(name, schema=schema)
    except NotImplementedError:
        return False
    return any(lowered(constraint["column_names"]) == columns for constraint in constraints)


def _is_generated(column: sa.Column[Any], table: sa.Table) -> bool:
    return bool(
        column is table.autoincrement_column
        or column.server_default is not None
        or column.server_onupdate is not None
        or column.default is not None
        or column.onupdate is not None
        or column.computed is not None
        or column.identity is not None
    )


def _never_written(column: sa.Column[Any]) -> bool:
    """Whether the database refuses any value for `column`: a computed column, an identity GENERATED ALWAYS."""
    return column.computed is not None or bool(
        column.identity is not None and column.identity.always
    )


def _python_type(type_: sa.types.TypeEngine[Any]) -> type | None:
    # None for a type that does not say (NullType: a SQLite column declared without a type).
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return None
    return python_type if isinstance(python_type, type) else None


def _same_kind(declared: sa.types.TypeEngine[Any], stored: sa.types.TypeEngine[Any]) -> bool:
    """Whether a column of type `stored` holds the values of `declared` (a key compares equal once read back)."""
    want, have = _python_type(declared), _python_type(stored)
    if want is None or have is None:
        return True  # nothing to go by: let the database judge
    if want is uuid.UUID and have is str:
        return True  # Uuid is CHAR(32) where the database has no UUID type
    return issubclass(have, want) or issubclass(want, have)


def _advisory_lock_id(name: str) -> int:
    """A PostgreSQL advisory lock id (a signed 64-bit int) for creating the table `name`."""
    digest = hashlib.blake2b(f"lazycache create {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class UnusableTableError(ValueError):
    """The table cannot take the store's writes; raised when the store is made (by `lazycache.open()` too).

    Raised for a table without a primary key or unique constraint on exactly the key
    columns, a key column of another type than the store's keys, a column the store writes
    that the table lacks, a key column the database generates, or a table the connection
    cannot write (a read-only SQLite file, a read-only transaction, no privilege).
    `table` is the table's name; `reason` says what is wrong.
    """

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(f"table {table!r} cannot be used: {reason}")
        self.table = table
        self.reason = reason


class ValueTooLargeError(SerializationError):
    """MySQL/MariaDB: a row larger than the server takes in one statement (`max_allowed_packet`).

    The server would drop the connection on it, so the store refuses the entry before
    sending anything; the writer reports it (it names its key) and writes the rest of the
    batch. Not recoverable: raise `max_allowed_packet` on the server to store such values.
    """

    def __init__(self, key: Any, size: int, limit: int) -> None:
        reason = (
            f"its row takes {size} bytes in a statement, more than the server's max_allowed_packet "
            f"({limit} bytes) less {_MYSQL_PACKET_MARGIN} for the SQL"
        )
        super().__init__(key, ValueError(reason))
        self.args = (f"the value of {key!r} is too large for the server: {reason}",)
        self.size = size
        self.limit = limit


# ----------------------------------------------------------------------------- the store


class SQLAlchemyStore(Store[Any, Any]):
    """A `Store` over a SQL table, through SQLAlchemy 2.x.

    Parameters
    ----------
    bind
        An SQLAlchemy URL (string or `URL`), or an `Engine`. A URL makes an engine with
        `make_engine(url, **engine_options)`, which the store owns and `close()` disposes
        of; an engine given is the caller's to dispose.
    table
        A name: the key-value mode, a table `(key, value)` created if missing (`schema`
        says where). A `Table` or an ORM-mapped class: the row mode.
    key
        Row mode: the column (or columns, for tuple keys) the cache key is made of; their
        values must be unique (the primary key, a unique constraint or a unique index).
        Default: the primary key. Names are attribute names for a mapped class.
    serializer
        Key-value mode: "json" (default, a text column), "pickle", "msgpack" (binary
        columns), a `Serializer`, or a `(dumps, loads)` pair.
    key_type
        Key-value mode: the type of the key column: `str` (default), `int`, `uuid.UUID`,
        `bytes`, or any SQLAlchemy type.
    generated
        Row mode: the fields to read back after each write and hand to the cache to merge
        into its values. Default: every non-key column the database or SQLAlchemy fills in
        (autoincrement primary key, server and client defaults, `onupdate`, computed and
        identity columns). `()` turns merging off. Computed columns and identities
        GENERATED ALWAYS (declared, or as the database reports them) are never written,
        whatever the value holds; a column the database or SQLAlchemy fills in is left
        out of a written row whose value for it is None (or absent).
    create
        Create the table if it does not exist (default True); safe when several
        processes open a new table at once.
    returning
        Row mode: read generated fields with RETURNING (default: where the dialect has
        it, otherwise a SELECT by key in the same transaction).
    chunk_size
        Keys per `IN (...)` list of a read or a delete.
    expiry
        Key-value mode: keep an `expires_at` column (BIGINT, milliseconds since the Unix
        epoch, NULL for never), written from the TTLs an expiring cache passes
        (`set(..., ttl=)`, `expire_after_write=`): reads ignore a row whose time has
        passed, and `purge_expired()` deletes those rows. An existing table needs the
        column added first (`ALTER TABLE t ADD COLUMN expires_at BIGINT`). Writes to such
        a table go through SQLAlchemy Core statements, not the drivers' fast paths.
    clock
        With `expiry`: the wall clock the deadlines are set and read by, in seconds since
        the epoch (default `time.time`; the processes sharing the table should agree on it).

    Raises
    ------
    UnusableTableError
        When the table in the database cannot take the store's writes: missing (with
        `create=False`), without a primary key or unique constraint on exactly the key
        columns, with a key column of another type, lacking a column the store writes,
        with a key column the database generates, or not writable by the connection (a
        read-only SQLite file: a write probe, rolled back, tells).

    Notes
    -----
    Values in row mode are dicts keyed by column key (a `Table`) or attribute name (a
    mapped class), or instances of the mapped class. Reads return the same shape: dicts,
    or detached instances (every column loaded; no session is held, so they are safe to
    keep in a cache and to use from any thread; relationships are not loaded).
    """

    def __init__(
        self,
        bind: str | sa.engine.URL | Engine = DEFAULT_URL,
        table: str | sa.Table | type = "lazycache",
        *,
        key: str | Sequence[str] | None = None,
        serializer: SerializerSpec = "json",
        key_type: _KeyType = str,
        schema: str | None = None,
        generated: Sequence[str] | None = None,
        create: bool = True,
        returning: bool | None = None,
        chunk_size: int = 1000,
        engine_options: Mapping[str, Any] | None = None,
        expiry: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_int("chunk_size", chunk_size)
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if expiry and not isinstance(table, str):
            raise ValueError(
                "expiry= is for the key-value mode: a row table's expiry is the cache's (memory only)"
            )
        self.expiry = bool(expiry)
        self.accepts_ttls = self.expiry
        """Whether `write` takes the cache's TTLs (an expiry column: `expiry=True`)."""
        self.clock = clock
        if isinstance(bind, Engine):
            if engine_options:
                raise ValueError("engine_options are for a URL; the engine given is already made")
            self.engine: Engine = bind
            self.owns_engine = False
            hold_forks_while_in_use(bind)
        else:
            self.engine = make_engine(bind, **dict(engine_options or {}))
            self.owns_engine = True
        self.chunk_size = chunk_size
        # MySQL: per column, what turns a value into what the driver gets (to size rows).
        self._bind_processors: dict[str, Any] | None = None
        self._pipelined_mysql = False
        self._key_class: type | None = None
        self._mapper: Mapper[Any] | None = None
        self.serializer: Serializer | None = None
        try:
            if isinstance(table, str):
                if key is not None or generated is not None:
                    raise ValueError(
                        "key= and generated= are for the row mode: pass a Table or a mapped class as table"
                    )
                self.serializer = get_serializer(serializer)
                self._init_kv(table, schema, key_type, create)
            else:
                if schema is not None:
                    raise ValueError(
                        "schema= is for the key-value mode: a Table carries its own schema"
                    )
                self._init_rows(table, key, generated, create, returning)
        except BaseException:
            self.close()
            raise
        self._dialect_name = self.engine.dialect.name
        # Server sessions of writes whose connection was lost mid-transaction: their outcome
        # is unknown until they end, and no write goes before they have (`_settle_in_doubt`).
        self._in_doubt: set[int] = set()
        self._in_doubt_lock = threading.Lock()
        self._settle_lock = threading.Lock()

    # ------------------------------------------------------------------ set-up
    @property
    def mode(self) -> str:
        """ "kv" (key-value table) or "rows"."""
        return "kv" if self.serializer is not None else "rows"

    def _init_kv(self, name: str, schema: str | None, key_type: _KeyType, create: bool) -> None:
        assert self.serializer is not None
        self._connect_once()
        self.table = sa.Table(
            name,
            sa.MetaData(),
            sa.Column(
                "key",
                _key_column_type(key_type, self.engine),
                primary_key=True,
                autoincrement=False,
            ),
            sa.Column("value", _value_column_type(self.serializer.binary), nullable=False),
            *([sa.Column(EXPIRES_AT, sa.BigInteger, nullable=True)] if self.expiry else []),
            schema=schema,
        )
        if create:
            self._create_table()
        self._key_columns: tuple[sa.Column[Any], ...] = (self.table.c.key,)
        self._check_table()
        self._check_kv_table()
        self._generated: tuple[sa.Column[Any], ...] = ()
        self._returning = False
        dialect = self.engine.dialect
        self._key_bind = self.table.c.key.type.dialect_impl(dialect).bind_processor(dialect)
        # Keys of the wrong type would be stored converted on one database and refused on
        # another (SQLite turns 1 into '1' in a text column; PostgreSQL will not compare
        # them): refuse them everywhere.
        self._key_class = key_type if key_type in (str, int, uuid.UUID, bytes) else None
        # The drivers' fast paths write two columns: an expiry table goes through Core.
        self._kv_sql = None if self.expiry else self._kv_upsert_sql()

    def _connect_once(self) -> None:
        """Initialises the dialect (server version, MariaDB or not); learns MySQL's `max_allowed_packet`."""
        self._max_packet: int | None = None
        with self.engine.connect() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                self._max_packet = int(
                    conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one()
                )

    def _create_table(self) -> None:
        """Creates the table and its indexes unless they exist, also when processes race to.

        Two processes opening a new table at once both see it missing; the second CREATE
        then fails ("already exists", or a unique violation in PostgreSQL's catalog). On
        PostgreSQL the creators take turns under an advisory lock; elsewhere a failure
        after which the table exists is another creator's success: go again, and the
        existence check now sees it (and creates the indexes if the other has not yet).
        """
        table = self.table
        attempts = 2 + len(table.indexes)
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        lock = _advisory_lock_id(table.fullname)
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
                    table.create(conn, checkfirst=True)
                    for index in table.indexes:  # table.create makes them only with the table
                        index.create(conn, checkfirst=True)
                return
            except sa.exc.DBAPIError:
                if attempt == attempts - 1 or not sa.inspect(self.engine).has_table(
                    table.name, schema=table.schema
                ):
                    raise

    def _check_table(self) -> None:
        """Checks the table in the database against the writes to come; learns what the database generates.

        Raises `UnusableTableError` for a table every write would fail on: missing,
        lacking a column the store writes, without a unique constraint on exactly the key
        columns (an upsert needs one), with a key column of another type, or read-only.
        """
        table = self.table
        inspector = sa.inspect(self.engine)
        try:
            stored = {
                column["name"].lower(): column
                for column in inspector.get_columns(table.name, schema=table.schema)
            }
        except sa.exc.NoSuchTableError:
            raise UnusableTableError(table.fullname, "it does not exist (create=False)") from None
        written = [
            column
            for column in table.columns
            if self.serializer is not None or column in self._field_of
        ]
        missing = [column.name for column in written if column.name.lower() not in stored]
        if missing:
            raise UnusableTableError(table.fullname, f"it has no column(s) {missing}")
        reflected = {column: stored[column.name.lower()] for column in written}
        self._reflected: dict[sa.Column[Any], Any] = reflected
        key_names = [column.name for column in self._key_columns]
        if not _unique_in_database(inspector, table, frozenset(n.lower() for n in key_names)):
            raise UnusableTableError(
                table.fullname,
                f"no primary key, unique constraint or unique index is on exactly its key column(s) "
                f"{key_names}, which an upsert needs",
            )
        for column in self._key_columns:
            stored_type = reflected[column]["type"]
            if not _same_kind(column.type, stored_type):
                raise UnusableTableError(
                    table.fullname,
                    f"its key column {column.name!r} is {stored_type!r}, which does not hold the "
                    f"store's {column.type!r} keys",
                )
        # What the database refuses values for (issue 12 #4): never written, whatever the
        # value holds; and what it fills in when a row leaves it out: left out when None.
        self._never_sent = frozenset(
            column
            for column, info in reflected.items()
            if _never_written(column)
            or info.get("computed") is not None
            or bool((info.get("identity") or {"always": False})["always"])
        )
        self._fills = frozenset(
            column
            for column, info in reflected.items()
            if _is_generated(column, table)
            or column in self._never_sent
            or info.get("default") is not None
            or info.get("autoincrement") is True
            or info.get("identity") is not None
        )
        # What the server sets on every update (MySQL's ON UPDATE CURRENT_TIMESTAMP, which
        # an explicit value, even the one merged back, would override): left to it.
        self._server_updated = frozenset(
            column
            for column, info in reflected.items()
            if column.server_onupdate is not None
            or "on update" in str(info.get("default") or "").lower()
        )
        self._check_writable()

    def _check_writable(self) -> None:
        """A write probe, rolled back: a read-only SQLite file or transaction, a missing privilege raise now."""
        try:
            with self.engine.connect() as conn, conn.begin() as transaction:
                conn.execute(sa.delete(self.table).where(sa.false()))
                transaction.rollback()
        except sa.exc.DBAPIError as exc:
            if is_recoverable_error(exc):
                return  # a busy database says nothing about whether this one can be written
            raise UnusableTableError(
                self.table.fullname, f"the connection cannot write to it ({exc.orig})"
            ) from exc

    def _check_kv_table(self) -> None:
        """An existing table must have key and value columns, the value column of the serializer's kind."""
        assert self.serializer is not None
        stored = self._reflected[self.table.c.value]["type"]
        binary_column = isinstance(stored, (sa.LargeBinary, sa.types._Binary))
        text_column = isinstance(stored, sa.String)
        if (self.serializer.binary and text_column) or (
            not self.serializer.binary and binary_column
        ):
            raise UnusableTableError(
                self.table.fullname,
                f"it keeps {'text' if text_column else 'binary'} values, but the "
                f"{self.serializer.name!r} serializer makes {'bytes' if self.serializer.binary else 'text'}",
            )

    def _kv_upsert_sql(self) -> str | None:
        """The driver-level upsert of the key-value hot path, or None to go through Core."""
        dialect = self.engine.dialect
        quote = dialect.identifier_preparer.quote
        table = dialect.identifier_preparer.format_table(self.table)
        key, value = quote("key"), quote("value")
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            key_sql = self.table.c.key.type.compile(dialect=dialect)
            value_sql = "BYTEA" if self.serializer and self.serializer.binary else "TEXT"
            return (
                f"INSERT INTO {table} ({key}, {value}) SELECT * FROM unnest(%b::{key_sql}[], %b::{value_sql}[]) "
                f"ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
            )
        if dialect.name == "sqlite" and dialect.driver == "pysqlite":
            return (
                f"INSERT INTO {table} ({key}, {value}) VALUES (?, ?) "
                f"ON CONFLICT ({key}) DO UPDATE SET {value} = excluded.{value}"
            )
        if dialect.name in ("mysql", "mariadb") and dialect.driver in ("pymysql", "mysqldb"):
            self._pipelined_mysql = dialect.driver == "pymysql"
            self._mysql_head_tail = (
                f"INSERT INTO {table} ({key}, {value}) VALUES ",
                f" ON DUPLICATE KEY UPDATE {value} = VALUES({value})",
            )
            return "{}(%s, %s){}".format(*self._mysql_head_tail)
        return None

    def _init_rows(
        self,
        table: sa.Table | type,
        key: str | Sequence[str] | None,
        generated: Sequence[str] | None,
        create: bool,
        returning: bool | None,
    ) -> None:
        if isinstance(table, sa.Table):
            self.table = table
            fields = {column.key: column for column in table.columns}
        else:
            mapper: Any = sa.inspect(table, raiseerr=False)
            if not isinstance(mapper, Mapper):
                raise TypeError(
                    f"table must be a table name, a Table or an ORM-mapped class, not {table!r}"
                )
            if not isinstance(mapper.local_table, sa.Table) or mapper.inherits is not None:
                raise TypeError(
                    f"{mapper.class_.__name__} must be mapped to one Table (no inheritance)"
                )
            self._mapper = mapper
            self.table = mapper.local_table
            fields = {}
            for prop in mapper.column_attrs:
                columns = [
                    c for c in prop.columns if isinstance(c, sa.Column) and c.table is self.table
                ]
                if len(columns) == 1:
                    fields[prop.key] = columns[0]
        self._fields: dict[str, sa.Column[Any]] = fields
        field_of = {column: name for name, column in fields.items()}
        self._field_of: dict[sa.Column[Any], str] = field_of
        if key is None:
            key_columns = tuple(self.table.primary_key.columns)
            if not key_columns:
                raise ValueError(
                    f"table {self.table.fullname!r} has no primary key: say which columns are the key with key="
                )
        else:
            names = (key,) if isinstance(key, str) else tuple(key)
            unknown = [name for name in names if name not in fields]
            if unknown or not names:
                raise ValueError(
                    f"key {unknown or names!r}: not columns of {self.table.fullname!r} (have {sorted(fields)})"
                )
            key_columns = tuple(fields[name] for name in names)
        if frozenset(key_columns) not in _unique_column_sets(self.table):
            raise ValueError(
                f"the key columns {[c.name for c in key_columns]} of {self.table.fullname!r} are not declared unique: "
                "make them the primary key, a UniqueConstraint or a unique Index"
            )
        missing = [column.name for column in key_columns if column not in field_of]
        if missing:
            raise ValueError(f"key columns {missing} are not mapped attributes")
        self._key_columns = key_columns
        self._key_fields = tuple(field_of[column] for column in key_columns)
        self._read_columns = [
            column for column in self.table.columns if column in field_of
        ]  # what a read selects
        self._read_names = [field_of[column] for column in self._read_columns]
        self._key_positions = [self._read_columns.index(column) for column in key_columns]
        if generated is not None:
            unknown = [name for name in generated if name not in fields]
            if unknown:
                raise ValueError(f"generated {unknown!r}: not columns of {self.table.fullname!r}")
            self._generated = tuple(
                fields[name] for name in generated if fields[name] not in key_columns
            )
        dialect = self.engine.dialect
        if dialect.name not in ("postgresql", "sqlite", "mysql", "mariadb"):
            raise NotImplementedError(
                f"row mode needs a native upsert: PostgreSQL, SQLite or MySQL/MariaDB, not {dialect.name}"
            )
        self._connect_once()
        if create:
            self._create_table()
        self._check_table()
        never_written = [column for column in key_columns if column in self._never_sent]
        if never_written:
            raise UnusableTableError(
                self.table.fullname,
                f"the database generates the key column(s) {[c.name for c in never_written]} and refuses "
                "values for them (computed, or an identity GENERATED ALWAYS): the cache key must be a value "
                "you give; key the cache by another unique column",
            )
        if generated is None:
            self._generated = tuple(
                column
                for column in self.table.columns
                if column not in key_columns
                and column in field_of
                and (
                    _is_generated(column, self.table)
                    or column in self._never_sent
                    or column in self._server_updated
                )
            )
        can_return = bool(dialect.insert_returning and dialect.insert_executemany_returning)
        if returning and not can_return:
            raise ValueError(
                f"{dialect.name} {dialect.server_version_info} has no INSERT ... RETURNING for an upsert"
            )
        self._returning = can_return if returning is None else bool(returning)
        self._upsert_statements: dict[tuple[str, ...], Any] = {}
        self._kv_sql = None

    # ------------------------------------------------------------------ reading
    def load_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        keys = list(keys)
        if not keys:
            return {}
        found: dict[Any, Any] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), self.chunk_size):
                chunk = keys[start : start + self.chunk_size]
                if self.serializer is not None:
                    self._load_kv(conn, chunk, found)
                else:
                    self._load_rows(conn, chunk, found)
        return found

    def _wrong_key(self, key: Any) -> str:
        assert self._key_class is not None
        return f"the keys of {self.table.fullname!r} are {self._key_class.__name__}, not {type(key).__name__}: {key!r}"

    def _load_kv(self, conn: Connection, chunk: list[Any], found: dict[Any, Any]) -> None:
        assert self.serializer is not None
        key_class = self._key_class
        if key_class is not None:
            for key in chunk:
                if not isinstance(key, key_class):
                    raise TypeError(self._wrong_key(key))
        loads = self.serializer.loads
        table = self.table
        query = sa.select(table.c.key, table.c.value).where(table.c.key.in_(chunk))
        if self.expiry:
            expires_at = table.c[EXPIRES_AT]
            query = query.where(sa.or_(expires_at.is_(None), expires_at > self._now_ms()))
        for key, data in conn.execute(query):
            try:
                found[key] = loads(data)
            except Exception as exc:
                raise SerializationError(key, exc) from exc

    def _load_rows(self, conn: Connection, chunk: list[Any], found: dict[Any, Any]) -> None:
        names = self._read_names
        positions = self._key_positions
        single = len(positions) == 1
        for row in conn.execute(sa.select(*self._read_columns).where(self._key_filter(chunk))):
            key = row[positions[0]] if single else tuple(row[p] for p in positions)
            found[key] = self._value_from_row(dict(zip(names, row)))

    def _value_from_row(self, values: dict[str, Any]) -> Any:
        if self._mapper is None:
            return values
        instance = self._mapper.class_manager.new_instance()
        for name, value in values.items():
            attributes.set_committed_value(instance, name, value)
        make_transient_to_detached(instance)  # as if loaded by a session that has since closed
        return instance

    def _key_filter(self, keys: Sequence[Any]) -> Any:
        if len(self._key_columns) == 1:
            return self._key_columns[0].in_(keys)
        for key in keys:
            if not isinstance(key, tuple) or len(key) != len(self._key_columns):
                raise TypeError(
                    f"the keys of {self.table.fullname!r} are tuples of {len(self._key_columns)} values, not {key!r}"
                )
        return sa.tuple_(*self._key_columns).in_(keys)

    # ------------------------------------------------------------------ expiry
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def purge_expired(self) -> int:
        """Deletes the rows whose `expires_at` has passed (key-value mode, `expiry=True`); returns how many.

        Reads already ignore them: this reclaims their space. Run it from a job of your own,
        as often as the table's churn asks for.
        """
        if not self.expiry:
            raise ValueError(
                "purge_expired() needs an expiry column: SQLAlchemyStore(..., expiry=True)"
            )
        expires_at = self.table.c[EXPIRES_AT]
        with self.engine.begin() as conn:
            result = conn.execute(sa.delete(self.table).where(expires_at <= self._now_ms()))
            return int(result.rowcount)

    # ------------------------------------------------------------------ writing
    def write(
        self,
        upserts: Sequence[tuple[Any, Any]],
        deletes: Sequence[Any],
        ttls: Mapping[Any, float] | None = None,
    ) -> GeneratedFields | None:
        """Deletes `deletes` and upserts `upserts` in one transaction; returns generated fields (row mode).

        A value that cannot be encoded raises `SerializationError` naming its key, and
        nothing of the batch is written. `ttls` (with `expiry=True`): per upserted key,
        the seconds it is kept; the others never expire.
        """
        if not upserts and not deletes:
            return None
        if ttls and not self.expiry:
            raise ValueError("this store keeps no TTLs: make it with expiry=True")
        rows = (
            None if self.serializer is not None else self._rows(upserts)
        )  # before the transaction
        if self.serializer is not None and self._key_class is not None:
            for key in deletes:
                if not isinstance(key, self._key_class):
                    raise SerializationError(key, TypeError(self._wrong_key(key)))
        if self._in_doubt:
            self._settle_in_doubt()
        session: int | None = None
        try:
            with self.engine.begin() as conn:
                session = _session_id(conn)
                return self._write_in(conn, upserts, deletes, rows, ttls)
        except BaseException as exc:
            if session is not None and _connection_lost(exc):
                # The server may still be running this transaction, its COMMIT included:
                # nothing is written until that session has ended (`_settle_in_doubt`).
                with self._in_doubt_lock:
                    self._in_doubt.add(session)
            raise

    def _write_in(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        deletes: Sequence[Any],
        rows: list[tuple[Any, dict[str, Any]]] | None,
        ttls: Mapping[Any, float] | None = None,
    ) -> GeneratedFields | None:
        """The statements of one `write`, in its transaction."""
        for start in range(0, len(deletes), self.chunk_size):
            conn.execute(
                sa.delete(self.table).where(
                    self._key_filter(deletes[start : start + self.chunk_size])
                )
            )
        if not upserts:
            return None
        if rows is None:
            self._write_kv(conn, upserts, ttls)
            return None
        return self._write_rows(conn, rows)

    def _settle_in_doubt(self) -> None:
        """Ends the server sessions of writes whose connection was lost, and waits until they are gone.

        Such a write's transaction may still be running on the server, its COMMIT
        included: a later write committed first (a delete that finds no row yet) would be
        undone when it completes. Ending the session settles it: a commit already under
        way completes or aborts as a whole. Raises `InDoubtSessionError` (recoverable: the
        writer retries the batch later) when a session is still there after
        `IN_DOUBT_TIMEOUT` seconds; connection errors propagate, recoverable too.
        """
        with self._settle_lock:  # one settler at a time; the others find nothing left
            with self._in_doubt_lock:
                sessions = sorted(self._in_doubt)
            if not sessions:
                return
            deadline = time.monotonic() + IN_DOUBT_TIMEOUT
            with self.engine.connect() as conn:
                for session in sessions:
                    _end_session(conn, session, deadline)
                    with self._in_doubt_lock:
                        self._in_doubt.discard(session)

    # key-value mode
    def _encode(self, pairs: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
        """(keys as the driver takes them, encoded values) of a slice of upserts."""
        assert self.serializer is not None
        dumps = self.serializer.dumps
        try:
            values = [dumps(value) for _, value in pairs]
        except Exception:
            for key, value in pairs:  # find the culprit: raises SerializationError naming it
                self.serializer.encode(key, value)
            raise
        keys = [key for key, _ in pairs]
        key_class = self._key_class
        if key_class is not None:
            for key in keys:
                if not isinstance(key, key_class):
                    raise SerializationError(key, TypeError(self._wrong_key(key)))
        if self._key_bind is not None:
            keys = [self._key_bind(key) for key in keys]
        return keys, values

    def _write_kv(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        ttls: Mapping[Any, float] | None = None,
    ) -> None:
        sql = self._kv_sql
        if sql is None:
            self._write_kv_core(conn, upserts, ttls)
            return
        if self._dialect_name == "postgresql":
            self._write_kv_postgresql(conn, sql, upserts)
            return
        if self._pipelined_mysql and len(upserts) > _MYSQL_SINGLE_STATEMENT:
            self._write_kv_mysql_pipelined(conn, sql, upserts)
            return
        keys, values = self._encode(upserts)
        with _driver_errors(conn, sql) as driver:
            if self._max_packet is not None:
                for (key, _), bound_key, value in zip(upserts, keys, values):
                    self._mysql_row_size(driver, key, (bound_key, value))
            cursor = driver.cursor()
            try:
                if self._max_packet is not None:
                    # The driver's multi-row INSERTs stop at max_stmt_length (1 MB for
                    # PyMySQL): stop them sooner if the server takes less.
                    budget = self._max_packet - _MYSQL_PACKET_MARGIN
                    cursor.max_stmt_length = min(cursor.max_stmt_length, budget)
                cursor.executemany(sql, list(zip(keys, values)))
            finally:
                cursor.close()

    def _write_kv_postgresql(
        self, conn: Connection, sql: str, upserts: Sequence[tuple[Any, Any]]
    ) -> None:
        count = len(upserts)
        with _driver_errors(conn, sql) as driver:
            with driver.cursor(binary=True) as cursor:
                if count <= _PG_SINGLE_STATEMENT:
                    cursor.execute(sql, self._encode(upserts))
                    return
                # Pipeline mode: each chunk is sent without waiting for the previous one's
                # result, so the server upserts chunk i while Python encodes chunk i + 1.
                # Nothing blocks between chunks: the pacer lets other threads (an event
                # loop) have the GIL every millisecond or so.
                chunk = max(32, min(256, count // 8))
                pacer = GilPacer()
                with driver.pipeline():
                    for start in range(0, count, chunk):
                        if start:
                            pacer.pace()
                        cursor.execute(sql, self._encode(upserts[start : start + chunk]))

    def _write_kv_mysql_pipelined(
        self, conn: Connection, sql: str, upserts: Sequence[tuple[Any, Any]]
    ) -> None:
        """PyMySQL: multi-row INSERTs sent by a helper thread while this one encodes the next.

        The client-side work (serialising, escaping) and the server's upserting take about
        as long as each other; a sender thread waiting on the socket releases the GIL, so
        the two overlap. Statements go in order, on the transaction's connection.
        """
        head, tail = self._mysql_head_tail
        with _driver_errors(conn, sql) as driver:
            escape = driver.escape
            statements: queue.Queue[str | None] = queue.Queue(maxsize=2)
            failures: list[BaseException] = []

            def send() -> None:
                cursor = driver.cursor()
                try:
                    while True:
                        statement = statements.get()
                        if statement is None:
                            return
                        if not failures:  # after a failure, drain the queue without executing
                            try:
                                cursor.execute(statement)
                            except BaseException as exc:
                                failures.append(exc)
                finally:
                    cursor.close()

            sender = threading.Thread(target=send, name="lazycache-sql-sender", daemon=True)
            sender.start()
            # A statement holds rows up to _MYSQL_CHUNK_BYTES characters, and at most a
            # quarter of the server's budget (a character is at most 4 bytes); a larger
            # row goes alone, if the server takes it at all (else ValueTooLargeError).
            assert self._max_packet is not None
            chunk_chars = min(_MYSQL_CHUNK_BYTES, (self._max_packet - _MYSQL_PACKET_MARGIN) // 4)
            pacer = GilPacer()  # this thread encodes without blocking: see _write_kv_postgresql
            try:
                for start in range(0, len(upserts), _MYSQL_CHUNK_ROWS):
                    if failures:
                        break
                    if start:
                        pacer.pace()
                    pairs = upserts[start : start + _MYSQL_CHUNK_ROWS]
                    keys, values = self._encode(pairs)
                    rows: list[str] = []
                    size = 0
                    for (original, _), key, value in zip(pairs, keys, values):
                        row = f"({escape(key)},{escape(value)})"
                        if size + len(row) > chunk_chars and rows:
                            statements.put(head + ",".join(rows) + tail)
                            rows, size = [], 0
                        if len(row) > chunk_chars:
                            self._check_mysql_size(
                                original, len(row.encode("utf-8", "surrogateescape"))
                            )
                            statements.put(head + row + tail)
                            continue
                        rows.append(row)
                        size += len(row)
                    if rows:
                        statements.put(head + ",".join(rows) + tail)
            finally:
                statements.put(None)
                sender.join()
            if failures:
                raise failures[0]

    def _check_mysql_size(self, key: Any, size: int) -> None:
        """Raises ValueTooLargeError for `key` if a row of `size` bytes cannot fit in a statement the server takes."""
        assert self._max_packet is not None
        if size > self._max_packet - _MYSQL_PACKET_MARGIN:
            raise ValueTooLargeError(key, size, self._max_packet)

    def _mysql_row_size(self, driver: Any, key: Any, values: Sequence[Any]) -> int:
        """The bytes the driver-bound `values` of one row take in a MySQL statement; ValueTooLargeError if too many.

        Exact for a value that may approach the limit (the driver escapes it), an upper
        bound otherwise (a character is at most 4 bytes, escaping at most doubles a byte).
        """
        assert self._max_packet is not None
        budget = self._max_packet - _MYSQL_PACKET_MARGIN
        total = 0
        for value in values:
            if isinstance(value, str):
                size = 4 * len(value) + 2
            elif isinstance(value, (bytes, bytearray)):
                size = 2 * len(value) + 10
            else:
                size = 64 if value is None or isinstance(value, _SMALL_VALUES) else budget + 1
            if size > budget // 4:
                size = _mysql_literal_size(driver, value)
            total += size + 1
        self._check_mysql_size(key, total)
        return total

    def _write_kv_core(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        ttls: Mapping[Any, float] | None = None,
    ) -> None:
        """Any dialect: the dialect's upsert if SQLAlchemy has one, else delete then insert."""
        assert self.serializer is not None
        encode = self.serializer.encode
        key_class = self._key_class
        params = []
        for key, value in upserts:
            if key_class is not None and not isinstance(key, key_class):
                raise SerializationError(key, TypeError(self._wrong_key(key)))
            params.append({"key": key, "value": encode(key, value)})
        if self.expiry:
            now = self._now_ms()
            for (key, _), row in zip(upserts, params):
                left = ttls.get(key) if ttls else None
                row[EXPIRES_AT] = None if left is None else now + max(1, math.ceil(left * 1000))
        table = self.table
        name = self.engine.dialect.name
        updated = ("value", EXPIRES_AT) if self.expiry else ("value",)
        if name in ("postgresql", "sqlite"):
            module = _postgresql if name == "postgresql" else _sqlite
            insert = module.insert(table)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[table.c.key],
                    set_={column: insert.excluded[column] for column in updated},
                ),
                params,
            )
        elif name in ("mysql", "mariadb"):
            insert = _mysql.insert(table)
            statement = insert.on_duplicate_key_update(
                {column: insert.inserted[column] for column in updated}
            )
            if self._max_packet is None:
                conn.execute(statement, params)
                return
            keyed = [(key, row) for (key, _), row in zip(upserts, params)]
            for part in self._mysql_parts(conn, keyed):
                conn.execute(statement, part)
        else:
            keys = [key for key, _ in upserts]
            for start in range(0, len(keys), self.chunk_size):
                conn.execute(
                    sa.delete(table).where(table.c.key.in_(keys[start : start + self.chunk_size]))
                )
            conn.execute(sa.insert(table), params)

    # row mode
    def _rows(self, upserts: Sequence[tuple[Any, Any]]) -> list[tuple[Any, dict[str, Any]]]:
        """(key, bind parameters by column key) per upsert; SerializationError for a value that is no row."""
        return [(key, self._row_params(key, value)) for key, value in upserts]

    def _row_params(self, key: Any, value: Any) -> dict[str, Any]:
        mapper = self._mapper
        if isinstance(value, Mapping):
            source: Mapping[str, Any] = value
            unknown = [name for name in source if name not in self._fields]
            if unknown:
                raise SerializationError(
                    key, ValueError(f"not columns of {self.table.fullname!r}: {unknown}")
                )
        elif mapper is not None and isinstance(value, mapper.class_):
            loaded = sa.inspect(value).dict  # the attributes set or loaded; never triggers a load
            source = {name: loaded[name] for name in self._fields if name in loaded}
        else:
            expected = (
                f"a dict or a {mapper.class_.__name__}"
                if mapper is not None
                else "a dict of column values"
            )
            raise SerializationError(
                key, TypeError(f"expected {expected}, got {type(value).__name__}")
            )
        key_values = key if len(self._key_fields) > 1 else (key,)
        if not isinstance(key_values, tuple) or len(key_values) != len(self._key_fields):
            raise SerializationError(
                key,
                TypeError(f"expected a key of {len(self._key_fields)} values {self._key_fields}"),
            )
        params: dict[str, Any] = {}
        for name, key_value in zip(self._key_fields, key_values):
            held = source.get(name)
            if held is not None and held != key_value:
                raise SerializationError(
                    key, ValueError(f"its {name}={held!r} contradicts its key {key!r}")
                )
            params[self._fields[name].key] = key_value
        generated, fills, never_sent = self._generated, self._fills, self._never_sent
        for name, item in source.items():
            column = self._fields[name]
            if (
                column in self._key_columns
                or column in never_sent
                or (item is None and (column in fills or column in generated))
            ):
                continue
            params[column.key] = item
        return params

    def _write_rows(
        self, conn: Connection, rows: list[tuple[Any, dict[str, Any]]]
    ) -> GeneratedFields | None:
        groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = {}
        for key, params in rows:  # executemany needs the same columns in every row of a statement
            groups.setdefault(tuple(sorted(params)), []).append((key, params))
        calls = [  # every row is sized before any is sent
            (columns, part)
            for columns, group in groups.items()
            for part in (
                self._mysql_parts(conn, group)
                if self._max_packet is not None
                else [[params for _, params in group]]
            )
        ]
        generated: dict[Any, dict[str, Any]] = {}
        for columns, group in calls:
            try:
                result = conn.execute(self._upsert_statement(columns), group)
            except sa.exc.DBAPIError as exc:
                if (
                    self._dialect_name in ("mysql", "mariadb")
                    and _mysql_code(exc.orig) == _MYSQL_SUBQUERY_ROWS
                ):
                    raise KeyConflictError(
                        exc, [column.name for column in self._key_columns]
                    ) from exc
                raise
            if self._returning and self._generated:
                self._collect(result, generated)
        if self._generated and not self._returning:
            keys = [key for key, _ in rows]
            selected = (*self._key_columns, *self._generated)
            for start in range(0, len(keys), self.chunk_size):
                chunk = keys[start : start + self.chunk_size]
                self._collect(
                    conn.execute(sa.select(*selected).where(self._key_filter(chunk))), generated
                )
        return generated or None

    def _mysql_parts(
        self, conn: Connection, rows: list[tuple[Any, dict[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        """`rows` in executemany calls whose statements the server takes (`max_allowed_packet`).

        A row too large for any statement raises ValueTooLargeError naming its key.
        """
        assert self._max_packet is not None
        driver = conn.connection.driver_connection
        budget = self._max_packet - _MYSQL_PACKET_MARGIN
        processors = self._bind_processors
        if processors is None:
            dialect = self.engine.dialect
            processors = self._bind_processors = {
                column.key: column.type.dialect_impl(dialect).bind_processor(dialect)
                for column in self.table.columns
            }
        parts: list[list[dict[str, Any]]] = []
        part: list[dict[str, Any]] = []
        size = 0
        for key, params in rows:
            values = []
            for name, value in params.items():
                processor = processors.get(name)
                if processor is not None and not isinstance(value, (str, bytes, bytearray)):
                    value = processor(value)  # what the driver gets: a JSON column's text, say
                values.append(value)
            row = self._mysql_row_size(driver, key, values)
            if part and size + row > budget:
                parts.append(part)
                part, size = [], 0
            part.append(params)
            size += row
        if part:
            parts.append(part)
        return parts

    def _collect(self, result: Any, generated: dict[Any, dict[str, Any]]) -> None:
        width = len(self._key_columns)
        names = [self._field_of[column] for column in self._generated]
        for row in result:
            key = row[0] if width == 1 else tuple(row[:width])
            generated[key] = dict(zip(names, row[width:]))

    def _upsert_statement(self, columns: tuple[str, ...]) -> Any:
        statement = self._upsert_statements.get(columns)
        if statement is not None:
            return statement
        table = self.table
        key_names = {column.key for column in self._key_columns}
        name = self.engine.dialect.name
        if name in ("mysql", "mariadb"):
            insert: Any = _mysql.insert(table)
            proposed = insert.inserted
        else:
            module = _postgresql if name == "postgresql" else _sqlite
            insert = module.insert(table)
            proposed = insert.excluded
        # On a conflict every written column takes the proposed value, except the columns the
        # database or SQLAlchemy maintains on update: a server_onupdate (ON UPDATE
        # CURRENT_TIMESTAMP, declared or in the database; a trigger) is left to the server, an `onupdate` is applied, as
        # SQLAlchemy would on an UPDATE (it does not on an upsert's). The cached value's copy
        # of such a column is what the last write returned, so writing it back would freeze it.
        updates: dict[str, Any] = {}
        for column in table.columns:
            if column.key in key_names:
                continue
            default: Any = column.onupdate  # a ColumnDefault: its `arg` is what to write
            if default is not None:
                if default.is_callable:
                    updates[column.key] = sa.bindparam(
                        f"lazycache_onupdate_{column.key}",
                        callable_=partial(default.arg, None),
                        type_=column.type,
                    )
                else:
                    updates[column.key] = default.arg
            elif column.key in columns and column not in self._server_updated:
                updates[column.key] = proposed[column.key]
        if not updates:  # only the key: a no-op update, so that the row is still returned
            first_key = self._key_columns[0].key
            updates[first_key] = proposed[first_key]
        if name in ("mysql", "mariadb"):
            # ON DUPLICATE KEY UPDATE fires on a conflict with ANY unique key: a row that
            # collides with another row on, say, a unique email would silently update that
            # other row. The first assignment checks that the conflicting row has our key,
            # and fails the statement otherwise (raising KeyConflictError), as PostgreSQL and
            # SQLite do. MySQL evaluates IF lazily: the failing subquery runs only then.
            first = self._key_columns[0]
            same_row = sa.and_(
                *[column.is_not_distinct_from(proposed[column.key]) for column in self._key_columns]
            )
            own = self.engine.dialect.identifier_preparer.quote(first.name)
            fail = sa.literal_column(
                f"(SELECT {own} UNION ALL SELECT {own})", type_=first.type
            )  # two rows: error 1242
            guarded = [(first.key, sa.func.IF(same_row, first, fail))]
            statement = insert.on_duplicate_key_update(
                guarded + [(k, v) for k, v in updates.items() if k != first.key]
            )
        else:
            statement = insert.on_conflict_do_update(
                index_elements=list(self._key_columns), set_=updates
            )
        if self._returning and self._generated:
            statement = statement.returning(*self._key_columns, *self._generated)
        self._upsert_statements[columns] = statement
        return statement

    # ------------------------------------------------------------------ errors, lifecycle
    def is_recoverable(self, exc: BaseException) -> bool:
        """Lost connection, deadlock, serialization failure, lock timeout: True. Data errors: False."""
        return is_recoverable_error(exc)

    def close(self) -> None:
        """Disposes of the engine if the store made it; an engine it was given is left alone."""
        if self.owns_engine:
            self.engine.dispose()

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        if self.serializer is not None:
            what = f"key-value, {self.serializer.name}"
        else:
            key = ", ".join(self._key_fields)
            what = f"rows of {self._mapper.class_.__name__ if self._mapper is not None else 'Table'} by ({key})"
        return f"SQLAlchemyStore({url}, {self.table.fullname!r}: {what})"

    def after_fork_in_child(self) -> None:
        """In a forked child: a new, empty connection pool; the parent's connections are left alone.

        `engine.dispose(close=False)`, SQLAlchemy's way for a forked process: the old pool
        is dropped without closing its connections (closing would end the parent's
        sessions), and the child connects afresh on next use. Done for an engine passed in
        too: its other users in the child must not use the parent's connections either. An
        in-memory SQLite database is the exception: its one connection is the child's own
        copy of the database, which a new connection would not see.
        """
        engine = self.engine
        if engine.dialect.name == "sqlite" and not _is_sqlite_file(engine.url):
            return
        engine.dispose(close=False)


class InDoubtSessionError(TimeoutError):
    """A write is held back: the server session of an earlier write whose connection was lost has not ended yet.

    That write's transaction may still commit; writing before it has ended could be
    undone by it. Recoverable: the writer retries the batch later.
    """

    def __init__(self, session: int, timeout: float) -> None:
        super().__init__(
            f"the server session {session} of an earlier write whose connection was lost is still "
            f"there after {timeout:g}s; no write is made until it has ended"
        )
        self.session = session


def _session_id(conn: Connection) -> int | None:
    """The server's id of the session behind `conn`, as the driver knows it (no round trip).

    None for SQLite (its file locks settle a failed write at once) and for drivers not known.
    """
    name = conn.dialect.name
    driver = conn.connection.driver_connection
    if name == "postgresql":  # psycopg 3, psycopg2
        pid = getattr(getattr(driver, "info", None), "backend_pid", None)
        return pid if isinstance(pid, int) and pid else None
    if name in ("mysql", "mariadb"):  # PyMySQL, mysqlclient
        thread_id = getattr(driver, "thread_id", None)
        session = thread_id() if callable(thread_id) else None
        return session if isinstance(session, int) and session else None
    return None


def _connection_lost(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from) says the write's connection was lost."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


_SESSION_ALIVE = {
    "postgresql": "SELECT pid FROM pg_stat_activity "
    "WHERE pid = :session AND usename = current_user AND datname = current_database()",
    "mysql": "SELECT ID FROM information_schema.PROCESSLIST "
    "WHERE ID = :session AND USER = SUBSTRING_INDEX(USER(), '@', 1)",
}
"""A row while the server session `:session` of this user (and database) is still there."""

_MYSQL_UNKNOWN_THREAD = 1094


def _end_session(conn: Connection, session: int, deadline: float) -> None:
    """Ends the server session `session` (if it is still there) and waits until it is gone, up to `deadline`."""
    name = conn.dialect.name
    alive = _SESSION_ALIVE.get("mysql" if name == "mariadb" else name)
    if alive is None:
        return
    query = sa.text(alive)
    if conn.execute(query, {"session": session}).first() is not None:
        if name == "postgresql":
            conn.execute(sa.text("SELECT pg_terminate_backend(:session)"), {"session": session})
        else:
            try:
                conn.exec_driver_sql(f"KILL {int(session)}")
            except sa.exc.DBAPIError as exc:
                if _mysql_code(exc.orig) != _MYSQL_UNKNOWN_THREAD:  # it ended meanwhile
                    raise
    conn.rollback()
    pause = 0.005
    while True:
        # A new transaction each time: PostgreSQL keeps one snapshot of pg_stat_activity per transaction.
        gone = conn.execute(query, {"session": session}).first() is None
        conn.rollback()
        if gone:
            return
        if time.monotonic() >= deadline:
            raise InDoubtSessionError(session, IN_DOUBT_TIMEOUT)
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


_MYSQL_SUBQUERY_ROWS = 1242
"""MySQL's "Subquery returns more than 1 row": how the row-mode upsert reports a conflict on another unique key."""


_SMALL_VALUES = (
    bool,
    int,
    float,
    decimal.Decimal,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
)
"""Values whose literal takes a few bytes in a statement (an int of thousands of digits is no key or column value)."""


def _mysql_literal_size(driver: Any, value: Any) -> int:
    """The bytes `value` takes in a statement PyMySQL or mysqlclient builds; its UTF-8 size for another driver."""
    escape = getattr(driver, "escape", None)  # PyMySQL: a str, bytes in surrogate escapes
    if escape is not None and type(driver).__module__.startswith("pymysql"):
        return len(str(escape(value)).encode("utf-8", "surrogateescape"))
    literal = getattr(driver, "literal", None)  # mysqlclient: bytes
    if literal is not None and type(driver).__module__.startswith("MySQLdb"):
        return len(literal(value))
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return len(str(value).encode("utf-8", "surrogateescape"))


def _mysql_code(orig: Any) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class KeyConflictError(sa.exc.IntegrityError):
    """MySQL/MariaDB, row mode: a written row collided with a different row on a unique key other than the cache key.

    Raised instead of letting ON DUPLICATE KEY UPDATE overwrite that other row. Not recoverable.
    """

    def __init__(self, cause: sa.exc.DBAPIError, key_columns: Sequence[str]) -> None:
        # A DBAPIError raised by a driver call always has the driver's exception as orig.
        super().__init__(cause.statement, None, cause.orig, hide_parameters=True)  # type: ignore[arg-type]
        self.key_columns = tuple(key_columns)

    def __str__(self) -> str:
        return (
            f"a row of the batch conflicts with an existing row whose key ({', '.join(self.key_columns)}) differs, "
            f"on another unique key; nothing was written ({self.orig!r})"
        )


@contextlib.contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[Any]:
    """Yields the driver's connection; its errors come out wrapped as SQLAlchemy wraps them.

    A connection the driver lost is invalidated, so the pool replaces it.
    """
    dialect = conn.dialect
    dbapi_connection = conn.connection.dbapi_connection
    try:
        yield conn.connection.driver_connection
    except dialect.loaded_dbapi.Error as exc:
        invalidated = bool(dialect.is_disconnect(exc, dbapi_connection, None))
        if invalidated:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            statement,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=dialect,
        ) from exc
