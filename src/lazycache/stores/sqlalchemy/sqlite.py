"""SQLite: engine set-up (WAL, busy timeout), the fork guard, and the key-value fast path (sqlite3)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from . import fastpath
from .errors import driver_errors
from .fastpath import Encode, Expiries

_log = logging.getLogger("lazycache.store.sqlalchemy")

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite connection made by `make_engine` waits for a lock before "database is locked"."""

FORK_WAIT = 10.0
"""Seconds `fork()` waits for the connections of a SQLite file engine in use to be returned
(see `hold_forks_while_in_use`) before it goes ahead anyway."""


def is_sqlite_file(url: sa.engine.URL) -> bool:
    """Whether a SQLite URL names a file (not an in-memory database)."""
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
    use_wal = wal and is_sqlite_file(engine.url)
    hold_forks_while_in_use(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if use_wal:
                _enter_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return engine


def _enter_wal(cursor: Any) -> None:
    """Switches a connection's file to WAL mode unless it is in it, retrying while the file is busy.

    Changing the journal mode needs the file to itself, and SQLite may answer "database is
    locked" at once, without waiting the busy timeout, while another process opens the same
    new file (processes starting together on a fresh database). The mode is persistent:
    once one of them has switched, the others find WAL and have nothing to do. So: look
    first, and retry a busy switch until the connection's own busy timeout has passed.
    """
    (timeout_ms,) = cursor.execute("PRAGMA busy_timeout").fetchone()
    deadline = time.monotonic() + timeout_ms / 1000
    pause = 0.001
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# ----------------------------------------------------------------------------- the fork guard


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
    if engine.dialect.name != "sqlite" or not is_sqlite_file(engine.url):
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


# ----------------------------------------------------------------------------- key-value fast path


class KeyValueUpsert(fastpath.KeyValueUpsert):
    """sqlite3: a key-value batch as one `executemany` of `INSERT ... ON CONFLICT DO UPDATE`."""

    drivers = ("pysqlite",)

    def __init__(
        self,
        table: sa.Table,
        dialect: sa.engine.Dialect,
        encode: Encode,
        expires_at: str | None = None,
    ) -> None:
        super().__init__(table, dialect, encode, expires_at)
        self.sql = (
            f"{self._insert} VALUES ({', '.join(['?'] * len(self._columns))}) "
            f"ON CONFLICT ({self._key}) DO UPDATE SET " + self._assignments("{c} = excluded.{c}")
        )

    def write(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        expiries: Expiries | None = None,
    ) -> None:
        rows = list(zip(*self._rows(upserts, expiries)))
        with driver_errors(conn, self.sql) as driver:
            cursor = driver.cursor()
            try:
                cursor.executemany(self.sql, rows)
            finally:
                cursor.close()
