"""Writes in doubt: the server sessions of writes whose connection was lost mid-transaction.

Such a write's transaction may still be running on the server, its COMMIT included: a
later write committed first (a delete that finds no row yet) would be undone when it
completes. `InDoubtSessions` remembers those sessions and, before the next write, ends
them and waits until they are gone: a commit already under way completes or aborts as a
whole. PostgreSQL and MySQL/MariaDB; SQLite's file locks settle a failed write at once.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import mysql_code

IN_DOUBT_TIMEOUT = 5.0
"""Seconds a write waits for the server session of an earlier write whose connection was lost to end
(`InDoubtSessionError` after that, and the writer retries later)."""


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


def session_id(conn: Connection) -> int | None:
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


def connection_lost(exc: BaseException) -> bool:
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
                if mysql_code(exc.orig) != _MYSQL_UNKNOWN_THREAD:  # it ended meanwhile
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


class InDoubtSessions:
    """The server sessions of one engine's writes whose connection was lost; true while there are any."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions: set[int] = set()
        self._lock = threading.Lock()
        self._settle_lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._sessions)

    def after_fork_in_child(self) -> None:
        """In a forked child: locks of its own (a parent thread may have held them at the fork,
        settling); the sessions stay, so that the child too ends them before it writes."""
        self._lock = threading.Lock()
        self._settle_lock = threading.Lock()

    def add(self, session: int) -> None:
        """Remembers `session`: no write goes before it has ended (`settle`)."""
        with self._lock:
            self._sessions.add(session)

    def settle(self) -> None:
        """Ends the sessions remembered, and waits until they are gone.

        Raises `InDoubtSessionError` (recoverable: the writer retries the batch later) when
        a session is still there after `IN_DOUBT_TIMEOUT` seconds; connection errors
        propagate, recoverable too.
        """
        with self._settle_lock:  # one settler at a time; the others find nothing left
            with self._lock:
                sessions = sorted(self._sessions)
            if not sessions:
                return
            deadline = time.monotonic() + IN_DOUBT_TIMEOUT
            with self._engine.connect() as conn:
                for session in sessions:
                    _end_session(conn, session, deadline)
                    with self._lock:
                        self._sessions.discard(session)
