"""What a table holds for the SQL store, and what both of its layouts share.

A layout is one mode of `SQLAlchemyStore`: `KeyValueLayout` (`kv`: a key and a serialised
value per row) or `RowLayout` (`rows`: a cached value is a row). `TableLayout`, their base,
is what both do to their table: create it (also when processes race to), check it against
the writes to come (`UnusableTableError` for one every write would fail on), pick the rows
of a set of keys, and keep MySQL statements under the server's packet limit.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_types
from sqlalchemy.dialects import postgresql as postgresql_types
from sqlalchemy.dialects import sqlite as sqlite_types
from sqlalchemy.engine import Connection, Engine

from ...serializers import Serializer
from ..base import GeneratedFields
from . import mysql, postgresql
from .errors import is_recoverable_error

Batch = TypeVar("Batch")
"""A layout's batch of upserts, made ready before the write's transaction (`TableLayout.prepare`)."""


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


class TableLayout(ABC, Generic[Batch]):
    """One mode of the SQL store: how its table holds the cache's entries, and how they are read and written.

    Made by `SQLAlchemyStore`, which runs each read and write in a connection or transaction
    of its own and hands it over: a layout never begins or ends one.
    """

    mode: ClassVar[str]
    """ "kv" (key-value table) or "rows"."""

    serializer: Serializer | None = None
    """Key-value mode: what turns values into the value column's contents."""

    expiry = False
    """Whether the table has an expiry column (key-value mode, `expiry=True`)."""

    table: sa.Table
    key_columns: tuple[sa.Column[Any], ...]
    """The columns the cache key is made of (their values, a tuple of them for several)."""

    def __init__(self, engine: Engine, chunk_size: int) -> None:
        self.engine = engine
        self.chunk_size = chunk_size
        """Keys per `IN (...)` list of a read or a delete."""
        self.packets: mysql.PacketLimit | None = None
        """MySQL/MariaDB: what one statement may hold (learned when connecting); None elsewhere."""
        self._bind_processors: dict[str, Callable[[Any], Any] | None] | None = None

    # ------------------------------------------------------------------ what each mode does
    @abstractmethod
    def load(
        self,
        conn: Connection,
        keys: Sequence[Any],
        found: dict[Any, Any],
        ttls: dict[Any, float],
    ) -> None:
        """Adds to `found` the stored value of each of `keys` (one chunk) that the table holds,
        and to `ttls` the seconds left to each found row that expires."""

    @abstractmethod
    def prepare(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Batch:
        """Checks a batch before its transaction begins (`SerializationError` naming a bad entry's key)."""

    @abstractmethod
    def upsert(
        self, conn: Connection, batch: Batch, ttls: Mapping[Any, float] | None
    ) -> GeneratedFields | None:
        """Writes the upserts of a batch in `conn`'s transaction; returns the fields generated (row mode)."""

    @abstractmethod
    def describe(self) -> str:
        """What the table holds, for the store's repr."""

    def purge_expired(self) -> int:
        """Deletes the rows whose expiry has passed; returns how many (a table with an expiry column)."""
        raise ValueError(
            "purge_expired() needs an expiry column: SQLAlchemyStore(..., expiry=True)"
        )

    # ------------------------------------------------------------------ set-up
    def _connect_once(self) -> None:
        """Initialises the dialect (server version, MariaDB or not); learns MySQL's `max_allowed_packet`."""
        with self.engine.connect() as conn:
            if conn.dialect.name in mysql.NAMES:
                self.packets = mysql.PacketLimit(mysql.max_allowed_packet(conn))

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
                        postgresql.lock_table_creation(conn, table.fullname)
                    table.create(conn, checkfirst=True)
                    for index in table.indexes:  # table.create makes them only with the table
                        index.create(conn, checkfirst=True)
                return
            except sa.exc.DBAPIError:
                if attempt == attempts - 1 or not sa.inspect(self.engine).has_table(
                    table.name, schema=table.schema
                ):
                    raise

    def _check_table(self, written: Sequence[sa.Column[Any]]) -> dict[sa.Column[Any], Any]:
        """Checks the table in the database against the writes to come; returns what it reflected of `written`.

        Raises `UnusableTableError` for a table every write would fail on: missing,
        lacking one of the `written` columns, without a unique constraint on exactly the
        key columns (an upsert needs one), with a key column of another type, or
        read-only. Returns, per written column, the database's description of it (as
        `Inspector.get_columns` gives it).
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
        missing = [column.name for column in written if column.name.lower() not in stored]
        if missing:
            raise UnusableTableError(table.fullname, f"it has no column(s) {missing}")
        reflected = {column: stored[column.name.lower()] for column in written}
        key_names = [column.name for column in self.key_columns]
        if not _unique_in_database(inspector, table, frozenset(n.lower() for n in key_names)):
            raise UnusableTableError(
                table.fullname,
                f"no primary key, unique constraint or unique index is on exactly its key column(s) "
                f"{key_names}, which an upsert needs",
            )
        for column in self.key_columns:
            stored_type = reflected[column]["type"]
            if not _same_kind(column.type, stored_type):
                raise UnusableTableError(
                    table.fullname,
                    f"its key column {column.name!r} is {stored_type!r}, which does not hold the "
                    f"store's {column.type!r} keys",
                )
        self._check_writable()
        return reflected

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

    # ------------------------------------------------------------------ reading and writing
    def key_filter(self, keys: Sequence[Any]) -> Any:
        """The WHERE clause picking the rows of `keys`; TypeError for a key of the wrong shape."""
        if len(self.key_columns) == 1:
            return self.key_columns[0].in_(keys)
        for key in keys:
            if not isinstance(key, tuple) or len(key) != len(self.key_columns):
                raise TypeError(
                    f"the keys of {self.table.fullname!r} are tuples of {len(self.key_columns)} values, not {key!r}"
                )
        return sa.tuple_(*self.key_columns).in_(keys)

    def _native_insert(self) -> tuple[Any, Any]:
        """The dialect's own INSERT of the table (with its upsert clause), and the values it proposes.

        PostgreSQL and SQLite: `ON CONFLICT DO UPDATE`, proposing `excluded`; MySQL and
        MariaDB: `ON DUPLICATE KEY UPDATE`, proposing `inserted`.
        """
        name = self.engine.dialect.name
        if name in mysql.NAMES:
            insert: Any = mysql_types.insert(self.table)
            return insert, insert.inserted
        module = postgresql_types if name == "postgresql" else sqlite_types
        insert = module.insert(self.table)
        return insert, insert.excluded

    def _statement_parts(
        self, conn: Connection, rows: list[tuple[Any, dict[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        """MySQL/MariaDB: `rows` (key, bind parameters) in executemany calls the server takes (see `PacketLimit`)."""
        assert self.packets is not None
        processors = self._bind_processors
        if processors is None:
            dialect = self.engine.dialect
            processors = self._bind_processors = {
                column.key: column.type.dialect_impl(dialect).bind_processor(dialect)
                for column in self.table.columns
            }
        return self.packets.parts(conn, rows, processors)


# ----------------------------------------------------------------------------- table checks


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
