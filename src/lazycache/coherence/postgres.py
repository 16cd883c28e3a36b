"""`PostgresNotifyCoherence`: invalidations over PostgreSQL LISTEN/NOTIFY.

For caches over a `SQLAlchemyStore` on PostgreSQL (or any store, with a PostgreSQL
server to carry the messages):

    >>> store = SQLAlchemyStore("postgresql+psycopg://app@db/app", "users")
    >>> cache = LazyWriterCache(store, coherence=PostgresNotifyCoherence(store, "users_invalidate"))

Needs psycopg 3.2 or later (`pip install 'lazywritercache[postgresql]'`). The channel holds two
connections of its own, outside the store's pool: one in autocommit mode that
`LISTEN`s, watched by a thread that waits for notifications (and runs `SELECT 1`
every `ping_interval` seconds, so that a dead connection is noticed; TCP keepalives
are on), and one that publishes: the keys of each committed batch are sent with
`pg_notify(channel, payload)`, several notifications in one transaction when they
do not fit in one payload (PostgreSQL's limit is 8000 bytes), so they are delivered
together. Notifications are sent after the store's own transaction committed, on a
different connection: a reader can see the new value before the notification, never
the notification before the new value.

PostgreSQL queues a notification for every listening session (up to 8 GB by default)
and delivers it when the listener reads; a listener whose connection is lost misses
what was sent meanwhile, which is why the cache then drops every clean entry and
reads through until it listens again (see the consistency model in
`lazycache.coherence.channel`, which applies unchanged; so do the message format and
the key encodings, `lazycache.coherence.message`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .channel import ChannelCoherence, ChannelOptions, ChannelSettings
from .message import all_message, encode_keys, envelope

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from 3.11 on; only the type checker needs it

__all__ = ["MAX_PAYLOAD", "PostgresNotifyCoherence", "conninfo_of"]

MAX_PAYLOAD = 7900
"""Bytes per notification payload (PostgreSQL refuses 8000 or more)."""

_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def conninfo_of(target: Any) -> str:
    """A libpq connection string for a SQLAlchemyStore, an Engine, a SQLAlchemy URL or a conninfo string."""
    engine = getattr(target, "engine", None)  # a SQLAlchemyStore
    if engine is not None:
        target = engine
    url = getattr(target, "url", None)  # an Engine
    if url is not None and not isinstance(target, str):
        target = url
    if hasattr(target, "render_as_string") and hasattr(target, "drivername"):  # a SQLAlchemy URL
        if not target.drivername.startswith("postgresql"):
            raise ValueError(
                f"PostgresNotifyCoherence needs a PostgreSQL database, not {target.drivername}"
            )
        return str(target.set(drivername="postgresql").render_as_string(hide_password=False))
    if not isinstance(target, str):
        raise TypeError(
            f"expected a SQLAlchemyStore, an Engine, a URL or a conninfo string, not {type(target).__name__}"
        )
    scheme, sep, rest = target.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return f"postgresql://{rest}"  # a SQLAlchemy URL string: drop the driver
    if sep and scheme not in ("postgresql", "postgres"):
        raise ValueError(f"PostgresNotifyCoherence needs a PostgreSQL URL, not {scheme}://")
    return target


class PostgresNotifyCoherence(ChannelCoherence):
    """Invalidations over PostgreSQL `LISTEN`/`NOTIFY` on `channel`.

    `target`: a `SQLAlchemyStore` (its engine's database), a SQLAlchemy `Engine` or URL,
    or a libpq conninfo / `postgresql://` URL. `channel` is a PostgreSQL identifier, used
    as given (case-sensitive, quoted). `settings` (a `ChannelSettings`), or its fields as
    keywords (`keys`, `ping_interval`, `ping_timeout`, `reconnect_initial`,
    `reconnect_max`, `max_backlog`), tune the channel; `connect_timeout` bounds each
    connection attempt, in whole seconds.
    """

    kind = "postgresql"

    def __init__(
        self,
        target: Any,
        channel: str = "lazycache_invalidate",
        *,
        settings: ChannelSettings | None = None,
        connect_timeout: int = 5,
        **options: Unpack[ChannelOptions],
    ) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
            raise ImportError(
                "PostgresNotifyCoherence needs psycopg 3.2 or later: pip install 'lazywritercache[postgresql]'"
            ) from exc
        if tuple(int(part) for part in psycopg.__version__.split(".")[:2] if part.isdigit()) < (
            3,
            2,
        ):
            raise ImportError(  # notifies(timeout=..., stop_after=...) arrived in 3.2
                f"PostgresNotifyCoherence needs psycopg 3.2 or later, found {psycopg.__version__}: "
                "pip install -U 'psycopg[binary]>=3.2'"
            )
        super().__init__(settings=settings, **options)
        if not isinstance(channel, str) or not channel or len(channel.encode("utf-8")) > 63:
            raise ValueError(
                f"channel must be a PostgreSQL identifier (1 to 63 bytes), got {channel!r}"
            )
        self.channel = channel
        self.conninfo = conninfo_of(target)
        self.connect_timeout = connect_timeout
        self._listener: Any = None
        self._publisher: Any = None
        self._ping_pending = False

    def _open(self) -> Any:
        import psycopg

        return psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=self.connect_timeout,
            application_name=f"lazycache-coherence-{self.id[:12]}",
            **_KEEPALIVES,
        )

    # ------------------------------------------------------------------ the listener connection
    def _connect(self) -> None:
        from psycopg import sql

        conn = self._open()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        self._ping_pending = False
        self._listener = conn

    def _receive(self, timeout: float) -> list[Any]:
        conn = self._listener
        if conn is None:
            raise ConnectionError("the listener connection is closed")
        payloads = [
            n.payload
            for n in conn.notifies(timeout=timeout, stop_after=1)
            if n.channel == self.channel
        ]
        if self._ping_pending:
            # A round trip on the listener itself: raises if the connection is dead.
            conn.execute("SELECT 1")
            self._ping_pending = False
        return payloads

    def _ping(self) -> None:
        self._ping_pending = True  # run by the next _receive, on the listener's thread

    def _pong_pending(self) -> bool:
        return self._ping_pending

    def _subscriber_fileno(self) -> int | None:
        conn = self._listener
        try:
            return conn.fileno() if conn is not None and not conn.closed else None
        except Exception:
            return None

    def _disconnect(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ publishing
    def _split(self, keys: list[Any], message: str) -> list[str]:
        if len(message) <= MAX_PAYLOAD // 4 or len(message.encode("utf-8")) <= MAX_PAYLOAD:
            return [message]
        encoded = encode_keys(keys, self.settings.keys)
        overhead = len(envelope(self.id, [], self.settings.keys).encode("utf-8"))
        messages: list[str] = []
        chunk: list[str] = []
        size = overhead
        for item in encoded:
            length = len(item.encode("utf-8")) + 1
            if overhead + length > MAX_PAYLOAD:
                return [
                    all_message(self.id)
                ]  # a key too long to name: drop everything clean instead
            if size + length > MAX_PAYLOAD:
                messages.append(envelope(self.id, chunk, self.settings.keys))
                chunk, size = [], overhead
            chunk.append(item)
            size += length
        if chunk:
            messages.append(envelope(self.id, chunk, self.settings.keys))
        return messages

    def _send(self, payloads: list[str]) -> None:
        conn = self._publisher
        if conn is None or conn.closed:
            conn = self._publisher = self._open()
        with conn.transaction():  # delivered together, at commit
            with conn.cursor() as cursor:
                cursor.executemany(
                    "SELECT pg_notify(%s, %s)", [(self.channel, payload) for payload in payloads]
                )

    def _close_publisher(self) -> None:
        conn, self._publisher = self._publisher, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _forget_connections(self) -> None:
        # psycopg ends a session (libpq's PQfinish) only on close() or when a connection
        # made in this very process is freed: a dropped inherited one is left to the parent.
        self._listener = None
        self._publisher = None

    def __repr__(self) -> str:
        state = "up" if self.connected else "down"
        return f"PostgresNotifyCoherence({self.channel!r}, {state}, id={self.id[:12]})"
