"""MySQL and MariaDB: statements kept under `max_allowed_packet`, the key-value fast path (PyMySQL,
mysqlclient), the column types a key and a long value need, and the row upsert's guard.

A statement larger than the server's `max_allowed_packet` makes it drop the connection: every
row is sized before anything is sent (`PacketLimit`), a row that cannot fit in any statement
is refused (`ValueTooLargeError`, naming its key) and multi-row statements stay under the
limit.
"""

from __future__ import annotations

import datetime
import decimal
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_types
from sqlalchemy.engine import Connection

from ..._pacing import GilPacer
from ...serializers import SerializationError
from . import fastpath
from .errors import driver_errors, mysql_code
from .fastpath import Encode, Expiries

NAMES = ("mysql", "mariadb")
"""The SQLAlchemy dialect names this module serves."""

_SINGLE_STATEMENT = 250
"""PyMySQL key-value batches up to this size go through executemany; larger ones are pipelined."""

_CHUNK_ROWS = 250
_CHUNK_BYTES = 1_000_000
"""A pipelined statement holds at most this many rows and about this many bytes (PyMySQL's own limit)."""

_PACKET_MARGIN = 64 * 1024
"""Bytes of a statement's packet kept for its SQL around the values: a row whose values take more than
`max_allowed_packet` less this is refused (`ValueTooLargeError`), and multi-row statements stay this far under."""

_SUBQUERY_ROWS = 1242
"""MySQL's "Subquery returns more than 1 row": how the row upsert's guard reports a conflict on another unique key."""


class ValueTooLargeError(SerializationError):
    """MySQL/MariaDB: a row larger than the server takes in one statement (`max_allowed_packet`).

    The server would drop the connection on it, so the store refuses the entry before
    sending anything; the writer reports it (it names its key) and writes the rest of the
    batch. Not recoverable: raise `max_allowed_packet` on the server to store such values.
    """

    def __init__(self, key: Any, size: int, limit: int) -> None:
        reason = (
            f"its row takes {size} bytes in a statement, more than the server's max_allowed_packet "
            f"({limit} bytes) less {_PACKET_MARGIN} for the SQL"
        )
        super().__init__(key, ValueError(reason))
        self.args = (f"the value of {key!r} is too large for the server: {reason}",)
        self.size = size
        self.limit = limit


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


# ----------------------------------------------------------------------------- column types


def string_key_type(dialect: sa.engine.Dialect) -> sa.types.TypeEngine[Any]:
    """A column type for `str` keys: a length, and a binary collation.

    The default collation is case-insensitive: keys differing in case or accents must stay
    different keys. The no-pad variant also keeps "a" and "a " apart.
    """
    version = dialect.server_version_info or ()
    if getattr(dialect, "is_mariadb", False):
        collation = "utf8mb4_nopad_bin" if version >= (10, 2) else "utf8mb4_bin"
    else:
        collation = "utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin"
    return mysql_types.VARCHAR(255, charset="utf8mb4", collation=collation)


def bytes_key_type() -> sa.types.TypeEngine[Any]:
    """A column type for `bytes` keys (a key needs a length)."""
    return mysql_types.VARBINARY(255)


def long_value_type(binary: bool) -> sa.types.TypeEngine[Any]:
    """A column type for serialised values: TEXT and BLOB stop at 64 KiB, so the LONG variants."""
    if binary:
        return mysql_types.LONGBLOB()
    return mysql_types.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin")


# ----------------------------------------------------------------------------- statement sizes


def max_allowed_packet(conn: Connection) -> int:
    """The server's `max_allowed_packet`, in bytes."""
    return int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())


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


def _literal_size(driver: Any, value: Any) -> int:
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


class PacketLimit:
    """What one statement to the server may hold: `max_allowed_packet` less `_PACKET_MARGIN`.

    `max_packet` is the server's limit as the store learned it when it connected.
    """

    def __init__(self, max_packet: int) -> None:
        self.max_packet = max_packet

    @property
    def budget(self) -> int:
        """Bytes the values of one statement may take."""
        return self.max_packet - _PACKET_MARGIN

    def check(self, key: Any, size: int) -> None:
        """Raises ValueTooLargeError for `key` if a row of `size` bytes cannot fit in a statement the server takes."""
        if size > self.budget:
            raise ValueTooLargeError(key, size, self.max_packet)

    def row_size(self, driver: Any, key: Any, values: Sequence[Any]) -> int:
        """The bytes the driver-bound `values` of one row take in a statement; ValueTooLargeError if too many.

        Exact for a value that may approach the limit (the driver escapes it), an upper
        bound otherwise (a character is at most 4 bytes, escaping at most doubles a byte).
        """
        budget = self.budget
        total = 0
        for value in values:
            if isinstance(value, str):
                size = 4 * len(value) + 2
            elif isinstance(value, (bytes, bytearray)):
                size = 2 * len(value) + 10
            else:
                size = 64 if value is None or isinstance(value, _SMALL_VALUES) else budget + 1
            if size > budget // 4:
                size = _literal_size(driver, value)
            total += size + 1
        self.check(key, total)
        return total

    def parts(
        self,
        conn: Connection,
        rows: list[tuple[Any, dict[str, Any]]],
        processors: Mapping[str, Callable[[Any], Any] | None],
    ) -> list[list[dict[str, Any]]]:
        """`rows` (key, bind parameters by column key) in executemany calls whose statements the server takes.

        `processors`: per column key, what turns a value into what the driver gets (the
        column type's bind processor). A row too large for any statement raises
        ValueTooLargeError naming its key.
        """
        driver = conn.connection.driver_connection
        budget = self.budget
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
            row = self.row_size(driver, key, values)
            if part and size + row > budget:
                parts.append(part)
                part, size = [], 0
            part.append(params)
            size += row
        if part:
            parts.append(part)
        return parts


# ----------------------------------------------------------------------------- key-value fast path


class KeyValueUpsert(fastpath.KeyValueUpsert):
    """PyMySQL, mysqlclient: a key-value batch as `INSERT ... ON DUPLICATE KEY UPDATE`.

    Through the driver's `executemany` (both rewrite it into multi-row INSERTs), kept under
    the server's packet limit; a larger PyMySQL batch is pipelined (`_write_pipelined`).
    """

    drivers = ("pymysql", "mysqldb")

    def __init__(
        self,
        table: sa.Table,
        dialect: sa.engine.Dialect,
        encode: Encode,
        expires_at: str | None = None,
        *,
        limit: PacketLimit,
    ) -> None:
        super().__init__(table, dialect, encode, expires_at)
        self._head = f"{self._insert} VALUES "
        self._tail = " ON DUPLICATE KEY UPDATE " + self._assignments("{c} = VALUES({c})")
        self.sql = f"{self._head}({', '.join(['%s'] * len(self._columns))}){self._tail}"
        self._pipelined = dialect.driver == "pymysql"
        self._limit = limit

    def write(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        expiries: Expiries | None = None,
    ) -> None:
        if self._pipelined and len(upserts) > _SINGLE_STATEMENT:
            self._write_pipelined(conn, upserts, expiries)
            return
        rows = list(zip(*self._rows(upserts, expiries)))
        limit = self._limit
        with driver_errors(conn, self.sql) as driver:
            for (key, _), row in zip(upserts, rows):
                limit.row_size(driver, key, row)
            cursor = driver.cursor()
            try:
                # The driver's multi-row INSERTs stop at max_stmt_length (1 MB for
                # PyMySQL): stop them sooner if the server takes less.
                cursor.max_stmt_length = min(cursor.max_stmt_length, limit.budget)
                cursor.executemany(self.sql, rows)
            finally:
                cursor.close()

    def _write_pipelined(
        self, conn: Connection, upserts: Sequence[tuple[Any, Any]], expiries: Expiries | None
    ) -> None:
        """PyMySQL: multi-row INSERTs sent by a helper thread while this one encodes the next.

        The client-side work (serialising, escaping) and the server's upserting take about
        as long as each other; a sender thread waiting on the socket releases the GIL, so
        the two overlap. Statements go in order, on the transaction's connection.
        """
        head, tail = self._head, self._tail
        with driver_errors(conn, self.sql) as driver:
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
            # A statement holds rows up to _CHUNK_BYTES characters, and at most a quarter
            # of the server's budget (a character is at most 4 bytes); a larger row goes
            # alone, if the server takes it at all (else ValueTooLargeError).
            chunk_chars = min(_CHUNK_BYTES, self._limit.budget // 4)
            # This thread encodes without blocking: paced, as postgresql.KeyValueUpsert is.
            pacer = GilPacer()
            try:
                for start in range(0, len(upserts), _CHUNK_ROWS):
                    if failures:
                        break
                    if start:
                        pacer.pace()
                    end = start + _CHUNK_ROWS
                    pairs = upserts[start:end]
                    columns = self._rows(pairs, None if expiries is None else expiries[start:end])
                    rows: list[str] = []
                    size = 0
                    for (original, _), row in zip(pairs, _escaped_rows(escape, columns)):
                        if size + len(row) > chunk_chars and rows:
                            statements.put(head + ",".join(rows) + tail)
                            rows, size = [], 0
                        if len(row) > chunk_chars:
                            self._limit.check(original, len(row.encode("utf-8", "surrogateescape")))
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


def _escaped_rows(escape: Callable[[Any], str], columns: list[list[Any]]) -> Iterator[str]:
    """Each row of `columns` (two or three: key, value, expires_at) as SQL: `(k,v)` or `(k,v,e)`."""
    # Spelled out per width: joining the fields of each row costs this loop 10-30% more.
    if len(columns) == 2:
        return (f"({escape(k)},{escape(v)})" for k, v in zip(*columns))
    return (f"({escape(k)},{escape(v)},{escape(e)})" for k, v, e in zip(*columns))


# ----------------------------------------------------------------------------- row upserts


def guarded_upsert(
    insert: Any,
    key_columns: Sequence[sa.Column[Any]],
    updates: dict[str, Any],
    dialect: sa.engine.Dialect,
) -> Any:
    """`insert` (MySQL's INSERT) `ON DUPLICATE KEY UPDATE updates`, failing on a conflict with another row.

    ON DUPLICATE KEY UPDATE fires on a conflict with ANY unique key: a row that collides
    with another row on, say, a unique email would silently update that other row. The
    first assignment checks that the conflicting row has our key, and fails the statement
    otherwise (`is_key_conflict` tells that failure), as PostgreSQL and SQLite do. MySQL
    evaluates IF lazily: the failing subquery runs only then. `updates` are by column key,
    on `insert.inserted` (the values it proposed).
    """
    first = key_columns[0]
    same_row = sa.and_(
        *[column.is_not_distinct_from(insert.inserted[column.key]) for column in key_columns]
    )
    own = dialect.identifier_preparer.quote(first.name)
    fail = sa.literal_column(
        f"(SELECT {own} UNION ALL SELECT {own})", type_=first.type
    )  # two rows: error 1242
    guarded = [(first.key, sa.func.IF(same_row, first, fail))]
    return insert.on_duplicate_key_update(
        guarded + [(k, v) for k, v in updates.items() if k != first.key]
    )


def is_key_conflict(exc: sa.exc.DBAPIError) -> bool:
    """Whether `exc` is the failure of `guarded_upsert`'s guard: a row collided with another row."""
    return mysql_code(exc.orig) == _SUBQUERY_ROWS
