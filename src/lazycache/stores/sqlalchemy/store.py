"""`SQLAlchemyStore`: what both modes do around their table's reads and writes.

The store owns the engine (or is lent one), runs every read in one connection and every
write in one transaction, deletes in chunks of keys, holds writes back while an earlier
write's outcome is in doubt (`sessions`), and follows the process through a fork. What the
table holds, and how its rows are read and written, is its layout's (`kv`, `rows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..._checks import check_int
from ...serializers import Serializer, SerializerSpec, get_serializer
from ..base import GeneratedFields, Store
from .engine import DEFAULT_URL, make_engine
from .errors import is_recoverable_error
from .kv import KeyType, KeyValueLayout
from .layout import TableLayout
from .rows import RowLayout
from .sessions import InDoubtSessions, connection_lost, session_id
from .sqlite import hold_forks_while_in_use, is_sqlite_file


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
        key_type: KeyType = str,
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
        self.reports_ttls = self.expiry
        """Whether loads say how long each row is kept (an expiry column: `expiry=True`)."""
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
        try:
            layout: TableLayout[Any]
            if isinstance(table, str):
                if key is not None or generated is not None:
                    raise ValueError(
                        "key= and generated= are for the row mode: pass a Table or a mapped class as table"
                    )
                layout = KeyValueLayout(
                    self.engine,
                    table,
                    serializer=get_serializer(serializer),
                    key_type=key_type,
                    schema=schema,
                    create=create,
                    chunk_size=chunk_size,
                    expiry=self.expiry,
                    clock=clock,
                )
            else:
                if schema is not None:
                    raise ValueError(
                        "schema= is for the key-value mode: a Table carries its own schema"
                    )
                layout = RowLayout(
                    self.engine,
                    table,
                    key=key,
                    generated=generated,
                    create=create,
                    returning=returning,
                    chunk_size=chunk_size,
                )
        except BaseException:
            self.close()
            raise
        self._layout: TableLayout[Any] = layout
        self.table: sa.Table = layout.table
        self.serializer: Serializer | None = layout.serializer
        """Key-value mode: the serializer of the value column; None in row mode."""
        # Server sessions of writes whose connection was lost mid-transaction: their outcome
        # is unknown until they end, and no write goes before they have.
        self._in_doubt = InDoubtSessions(self.engine)

    @property
    def mode(self) -> str:
        """ "kv" (key-value table) or "rows"."""
        return self._layout.mode

    @property
    def chunk_size(self) -> int:
        """Keys per `IN (...)` list of a read or a delete."""
        return self._layout.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        check_int("chunk_size", value)
        self._layout.chunk_size = value

    # ------------------------------------------------------------------ reading
    def load_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        found, _ = self.load_many_with_ttls(keys)
        return found

    def load_many_with_ttls(self, keys: Sequence[Any]) -> tuple[dict[Any, Any], dict[Any, float]]:
        """`load_many`, with the seconds left to each found row whose `expires_at` is set (`expiry=True`)."""
        keys = list(keys)
        found: dict[Any, Any] = {}
        ttls: dict[Any, float] = {}
        if not keys:
            return found, ttls
        size = self.chunk_size
        with self.engine.connect() as conn:
            for start in range(0, len(keys), size):
                self._layout.load(conn, keys[start : start + size], found, ttls)
        return found, ttls

    def purge_expired(self) -> int:
        """Deletes the rows whose `expires_at` has passed (key-value mode, `expiry=True`); returns how many.

        Reads already ignore them: this reclaims their space. Run it from a job of your own,
        as often as the table's churn asks for.
        """
        return self._layout.purge_expired()

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
        layout = self._layout
        batch = layout.prepare(upserts, deletes)  # before the transaction
        if self._in_doubt:
            self._in_doubt.settle()
        session: int | None = None
        try:
            with self.engine.begin() as conn:
                session = session_id(conn)
                size = self.chunk_size
                for start in range(0, len(deletes), size):
                    conn.execute(
                        sa.delete(layout.table).where(
                            layout.key_filter(deletes[start : start + size])
                        )
                    )
                if not upserts:
                    return None
                return layout.upsert(conn, batch, ttls)
        except BaseException as exc:
            if session is not None and connection_lost(exc):
                # The server may still be running this transaction, its COMMIT included:
                # nothing is written until that session has ended (`InDoubtSessions`).
                self._in_doubt.add(session)
            raise

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
        return f"SQLAlchemyStore({url}, {self.table.fullname!r}: {self._layout.describe()})"

    def after_fork_in_child(self) -> None:
        """In a forked child: a new, empty connection pool; the parent's connections are left alone.

        `engine.dispose(close=False)`, SQLAlchemy's way for a forked process: the old pool
        is dropped without closing its connections (closing would end the parent's
        sessions), and the child connects afresh on next use. Done for an engine passed in
        too: its other users in the child must not use the parent's connections either. An
        in-memory SQLite database is the exception: its one connection is the child's own
        copy of the database, which a new connection would not see.
        """
        self._in_doubt.after_fork_in_child()
        engine = self.engine
        if engine.dialect.name == "sqlite" and not is_sqlite_file(engine.url):
            return
        engine.dispose(close=False)
