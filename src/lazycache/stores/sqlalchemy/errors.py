"""How the SQL store sees a database error: wrapped as SQLAlchemy wraps it, and classified.

`is_recoverable_error` tells a failure worth retrying later (a lost connection, a deadlock,
a lock or statement timeout, a busy SQLite file) from the data's fault, by the driver's
own error code: a table per database below. `driver_errors` gives an error raised by a
driver called directly (the stores' fast paths) the same shape as one raised through
SQLAlchemy, so that the same classification applies to both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...serializers import SerializationError

# ----------------------------------------------------------------------------- PostgreSQL

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

# ----------------------------------------------------------------------------- MySQL, MariaDB

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


def mysql_code(orig: Any) -> int | None:
    """The error number of a MySQL/MariaDB driver's exception (its first argument), or None."""
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


# ----------------------------------------------------------------------------- SQLite

_SQLITE_RECOVERABLE_CODES = {5, 6, 15}  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_PROTOCOL

# ----------------------------------------------------------------------------- classification


def _driver_error_recoverable(orig: BaseException) -> bool | None:
    """What the driver's own error code says: True/False, or None when it says nothing."""
    module = type(orig).__module__.split(".")[0]
    if module in ("pymysql", "MySQLdb", "mysql", "mariadb", "asyncmy", "aiomysql"):
        code = mysql_code(orig)  # (their sqlstate, when set, is mostly the catch-all HY000)
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


# ----------------------------------------------------------------------------- wrapping


@contextlib.contextmanager
def driver_errors(conn: Connection, statement: str) -> Iterator[Any]:
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
