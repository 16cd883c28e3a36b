"""SQLAlchemyStore: a write-behind cache over any SQL database SQLAlchemy 2.x speaks.

Two modes, chosen by what `table` is:

* **Key-value** (`table` is a name): a table `(key PRIMARY KEY, value)`, created if
  missing, whose values are serialised ("json" by default, "pickle", "msgpack" or your
  own pair; see `lazycache.serializers`). A persistent dict.
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

Driver errors are re-raised wrapped the way SQLAlchemy wraps them (`IntegrityError`,
`OperationalError`, ... with `.orig`), and a connection the driver lost is invalidated so
the pool never hands it out again. `is_recoverable` tells retryable failures (lost
connection, deadlock, serialization failure, lock timeout) from the data's fault.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Union

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

from ..serializers import SerializationError, Serializer, SerializerSpec, get_serializer
from .base import GeneratedFields, Store

__all__ = [
    "DEFAULT_URL",
    "KeyConflictError",
    "SQLAlchemyStore",
    "configure_sqlite",
    "is_recoverable_error",
    "make_engine",
]

DEFAULT_URL = "sqlite:///lazycache.db"
"""The embedded default: a SQLite file in the current directory."""

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite connection made by `make_engine` waits for a lock before "database is locked"."""

_PG_SINGLE_STATEMENT = 64
"""PostgreSQL key-value batches up to this size go as one statement; larger ones are pipelined in chunks
(measured: one statement is faster below ~64 rows, chunks of 32+ rows above)."""

_MYSQL_SINGLE_STATEMENT = 250
"""PyMySQL key-value batches up to this size go through executemany; larger ones are pipelined."""

_MYSQL_CHUNK_ROWS = 250
_MYSQL_CHUNK_BYTES = 1_000_000
"""A pipelined MySQL statement holds at most this many rows and about this many bytes (PyMySQL's own limit)."""

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


def make_engine(url: str | sa.engine.URL, **options: Any) -> Engine:
    """`sqlalchemy.create_engine(url, **options)`, set up for lazycache.

    SQLite: a file database runs in WAL mode (see `configure_sqlite`) with a busy timeout of
    `SQLITE_BUSY_TIMEOUT` seconds unless `connect_args={"timeout": ...}` says otherwise; an
    in-memory database gets one connection shared by all threads (otherwise the writer
    thread and a reader would each see their own empty database).
    """
    url = sa.engine.make_url(url)
    if url.get_backend_name() == "sqlite":
        connect_args = dict(options.get("connect_args") or {})
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        if not _is_sqlite_file(url):
            connect_args.setdefault("check_same_thread", False)
            options.setdefault("poolclass", sa.pool.StaticPool)
        options["connect_args"] = connect_args
        return configure_sqlite(sa.create_engine(url, **options))
    return sa.create_engine(url, **options)


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
        identity columns). `()` turns merging off. In a written row, a generated field
        whose value is None (or absent) is left out, so the database keeps or makes it.
    create
        Create the table if it does not exist (default True).
    returning
        Row mode: read generated fields with RETURNING (default: where the dialect has
        it, otherwise a SELECT by key in the same transaction).
    chunk_size
        Keys per `IN (...)` list of a read or a delete.

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
    ) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if isinstance(bind, Engine):
            if engine_options:
                raise ValueError("engine_options are for a URL; the engine given is already made")
            self.engine: Engine = bind
            self.owns_engine = False
        else:
            self.engine = make_engine(bind, **dict(engine_options or {}))
            self.owns_engine = True
        self.chunk_size = chunk_size
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

    # ------------------------------------------------------------------ set-up
    @property
    def mode(self) -> str:
        """ "kv" (key-value table) or "rows"."""
        return "kv" if self.serializer is not None else "rows"

    def _init_kv(self, name: str, schema: str | None, key_type: _KeyType, create: bool) -> None:
        assert self.serializer is not None
        with self.engine.connect():  # initialises the dialect (server version, MariaDB or not)
            pass
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
            schema=schema,
        )
        if create:
            self.table.create(self.engine, checkfirst=True)
        self._check_kv_table()
        self._key_columns: tuple[sa.Column[Any], ...] = (self.table.c.key,)
        self._generated: tuple[sa.Column[Any], ...] = ()
        self._returning = False
        dialect = self.engine.dialect
        self._key_bind = self.table.c.key.type.dialect_impl(dialect).bind_processor(dialect)
        # Keys of the wrong type would be stored converted on one database and refused on
        # another (SQLite turns 1 into '1' in a text column; PostgreSQL will not compare
        # them): refuse them everywhere.
        self._key_class = key_type if key_type in (str, int, uuid.UUID, bytes) else None
        self._kv_sql = self._kv_upsert_sql()

    def _check_kv_table(self) -> None:
        """An existing table must have key and value columns, the value column of the serializer's kind."""
        assert self.serializer is not None
        columns = {
            c["name"].lower(): c
            for c in sa.inspect(self.engine).get_columns(self.table.name, self.table.schema)
        }
        missing = {"key", "value"} - set(columns)
        if missing:
            raise ValueError(
                f"table {self.table.fullname!r} exists without the column(s) {sorted(missing)} of a key-value table"
            )
        stored = columns["value"]["type"]
        binary_column = isinstance(stored, (sa.LargeBinary, sa.types._Binary))
        text_column = isinstance(stored, sa.String)
        if (self.serializer.binary and text_column) or (
            not self.serializer.binary and binary_column
        ):
            raise ValueError(
                f"table {self.table.fullname!r} keeps {'text' if text_column else 'binary'} values, but the "
                f"{self.serializer.name!r} serializer makes {'bytes' if self.serializer.binary else 'text'}"
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
        if generated is None:
            self._generated = tuple(
                column
                for column in self.table.columns
                if column not in key_columns
                and column in field_of
                and _is_generated(column, self.table)
            )
        else:
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
        if create:
            self.table.create(self.engine, checkfirst=True)  # also initialises the dialect
        else:
            with self.engine.connect():
                pass
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
        for key, data in conn.execute(
            sa.select(table.c.key, table.c.value).where(table.c.key.in_(chunk))
        ):
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

    # ------------------------------------------------------------------ writing
    def write(
        self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]
    ) -> GeneratedFields | None:
        """Deletes `deletes` and upserts `upserts` in one transaction; returns generated fields (row mode).

        A value that cannot be encoded raises `SerializationError` naming its key, and
        nothing of the batch is written.
        """
        if not upserts and not deletes:
            return None
        rows = (
            None if self.serializer is not None else self._rows(upserts)
        )  # before the transaction
        if self.serializer is not None and self._key_class is not None:
            for key in deletes:
                if not isinstance(key, self._key_class):
                    raise SerializationError(key, TypeError(self._wrong_key(key)))
        with self.engine.begin() as conn:
            for start in range(0, len(deletes), self.chunk_size):
                conn.execute(
                    sa.delete(self.table).where(
                        self._key_filter(deletes[start : start + self.chunk_size])
                    )
                )
            if not upserts:
                return None
            if rows is None:
                self._write_kv(conn, upserts)
                return None
            return self._write_rows(conn, rows)

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

    def _write_kv(self, conn: Connection, upserts: Sequence[tuple[Any, Any]]) -> None:
        sql = self._kv_sql
        if sql is None:
            self._write_kv_core(conn, upserts)
            return
        if self._dialect_name == "postgresql":
            self._write_kv_postgresql(conn, sql, upserts)
            return
        if self._pipelined_mysql and len(upserts) > _MYSQL_SINGLE_STATEMENT:
            self._write_kv_mysql_pipelined(conn, sql, upserts)
            return
        keys, values = self._encode(upserts)
        with _driver_errors(conn, sql) as driver:
            cursor = driver.cursor()
            try:
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
                chunk = max(32, min(256, count // 8))
                with driver.pipeline():
                    for start in range(0, count, chunk):
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
            try:
                for start in range(0, len(upserts), _MYSQL_CHUNK_ROWS):
                    if failures:
                        break
                    keys, values = self._encode(upserts[start : start + _MYSQL_CHUNK_ROWS])
                    rows: list[str] = []
                    size = 0
                    for key, value in zip(keys, values):
                        row = f"({escape(key)},{escape(value)})"
                        rows.append(row)
                        size += len(row)
                        if size >= _MYSQL_CHUNK_BYTES:
                            statements.put(head + ",".join(rows) + tail)
                            rows, size = [], 0
                    if rows:
                        statements.put(head + ",".join(rows) + tail)
            finally:
                statements.put(None)
                sender.join()
            if failures:
                raise failures[0]

    def _write_kv_core(self, conn: Connection, upserts: Sequence[tuple[Any, Any]]) -> None:
        """Any dialect: the dialect's upsert if SQLAlchemy has one, else delete then insert."""
        assert self.serializer is not None
        encode = self.serializer.encode
        key_class = self._key_class
        params = []
        for key, value in upserts:
            if key_class is not None and not isinstance(key, key_class):
                raise SerializationError(key, TypeError(self._wrong_key(key)))
            params.append({"key": key, "value": encode(key, value)})
        table = self.table
        name = self.engine.dialect.name
        if name in ("postgresql", "sqlite"):
            module = _postgresql if name == "postgresql" else _sqlite
            insert = module.insert(table)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[table.c.key], set_={"value": insert.excluded.value}
                ),
                params,
            )
        elif name in ("mysql", "mariadb"):
            insert = _mysql.insert(table)
            conn.execute(insert.on_duplicate_key_update(value=insert.inserted.value), params)
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
        generated = self._generated
        for name, item in source.items():
            column = self._fields[name]
            if column in self._key_columns or (item is None and column in generated):
                continue
            params[column.key] = item
        return params

    def _write_rows(
        self, conn: Connection, rows: list[tuple[Any, dict[str, Any]]]
    ) -> GeneratedFields | None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for _, params in rows:  # executemany needs the same columns in every row of a statement
            groups.setdefault(tuple(sorted(params)), []).append(params)
        generated: dict[Any, dict[str, Any]] = {}
        for columns, group in groups.items():
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
        # CURRENT_TIMESTAMP, a trigger) is left to the server, an `onupdate` is applied, as
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
            elif column.key in columns and column.server_onupdate is None:
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


_MYSQL_SUBQUERY_ROWS = 1242
"""MySQL's "Subquery returns more than 1 row": how the row-mode upsert reports a conflict on another unique key."""


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
