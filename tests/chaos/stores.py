"""One scenario per store: how to reach it through the fault proxy, and how to read it directly.

Every store is the real one: SQLite (a WAL file), PostgreSQL, MariaDB and Redis on loopback,
in key-value mode (JSON values) or, for the SQL stores, row mode (a table with a unique column
and a server-generated one). The *oracle* is a second store on the same table or prefix that
bypasses the proxy: the checker reads the truth through it, even while the proxy is cut.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from proxy import CuttableProxy

from lazycache import Store

STORES = ("sqlite", "postgresql", "mariadb", "redis")
SERVER_PORTS = {"postgresql": 5432, "mariadb": 3306, "redis": 6379}

MARIADB_MAX_PACKET = 16 * 1024 * 1024
"""The server's max_allowed_packet here (checked at start): a larger value cannot be written."""


def _url(kind: str, port: int) -> str:
    if kind == "postgresql":
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
    if kind == "mariadb":
        return f"mysql+pymysql://root@127.0.0.1:{port}/test?charset=utf8mb4"
    return f"redis://127.0.0.1:{port}/0"


def _engine_options(kind: str) -> dict[str, Any]:
    if kind == "postgresql":
        return {"connect_args": {"connect_timeout": 3}}
    if kind == "mariadb":
        return {"connect_args": {"connect_timeout": 3, "read_timeout": 30, "write_timeout": 30}}
    return {}


def row_table(name: str) -> Any:
    """The row-mode table: key, the write's id, a unique email, a number, a server-generated column."""
    import sqlalchemy as sa

    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("k", sa.String(64), primary_key=True),
        sa.Column("w", sa.String(64), nullable=False),
        sa.Column("email", sa.String(128), nullable=False, unique=True),
        sa.Column("n", sa.Integer),
        sa.Column("stamp", sa.Integer, server_default=sa.text("7")),
    )


def same_kv(observed: Any, expected: Any) -> bool:
    return bool(observed == expected and type(observed) is type(expected))


def same_row(observed: Any, expected: Any) -> bool:
    """A row matches if it holds every field the model's value set (it may hold generated ones too)."""
    if not isinstance(expected, dict):  # a value that is no row (rejected): only itself matches
        return bool(observed == expected)
    if not isinstance(observed, dict):
        return False
    return all(name in observed and observed[name] == value for name, value in expected.items())


@dataclass
class Env:
    """One store for one run: a factory of stores through the proxy, the oracle, the faults it offers."""

    kind: str
    mode: str
    make_store: Callable[[], Store[Any, Any]]
    oracle: Store[Any, Any]
    same: Callable[[Any, Any], bool]
    proxy: CuttableProxy | None = None
    sqlite_path: str | None = None
    oversize: int = 2 * 1024 * 1024
    child_spec: dict[str, Any] = field(default_factory=dict)
    """How a child process (the crash scenario) builds the same store (key-value mode only)."""
    _cleanup: list[Callable[[], None]] = field(default_factory=list)

    def hold_sqlite_lock(self, seconds: float, stop: threading.Event) -> None:
        """SQLite's fault: another connection holds the write lock (writers wait, then get 'locked')."""
        assert self.sqlite_path is not None
        conn = sqlite3.connect(self.sqlite_path, timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            stop.wait(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    slow_commit: Callable[[bool], None] | None = None
    """PostgreSQL: while on, every COMMIT that inserted a row takes SLOW_COMMIT s on the server."""

    def close(self) -> None:
        for step in reversed(self._cleanup):
            try:
                step()
            except Exception:
                pass


def open_env(kind: str, mode: str, tmpdir: str) -> Env:
    """The store `kind` ("sqlite", "postgresql", "mariadb", "redis") in `mode` ("kv" or "rows")."""
    if kind == "redis":
        if mode != "kv":
            raise ValueError("Redis has no row mode")
        return _open_redis(tmpdir)
    return _open_sql(kind, mode, tmpdir)


def _open_sql(kind: str, mode: str, tmpdir: str) -> Env:
    from lazycache.stores.sqlalchemy import SQLAlchemyStore, make_engine

    name = f"chaos_{uuid.uuid4().hex[:12]}"
    proxy = None
    sqlite_path = None
    if kind == "sqlite":
        sqlite_path = os.path.join(tmpdir, f"{name}.db")
        url = direct = f"sqlite:///{sqlite_path}"
    else:
        proxy = CuttableProxy(SERVER_PORTS[kind])
        url = _url(kind, proxy.port)
        direct = _url(kind, SERVER_PORTS[kind])
    options = _engine_options(kind)

    if mode == "rows":

        def make_store() -> Store[Any, Any]:
            return SQLAlchemyStore(url, row_table(name), engine_options=options)

        oracle_engine = make_engine(direct)
        first = make_store()  # creates the table
        first.close()
        oracle: Store[Any, Any] = SQLAlchemyStore(oracle_engine, row_table(name), create=False)
        same = same_row
    else:

        def make_store() -> Store[Any, Any]:
            return SQLAlchemyStore(url, name, engine_options=options)

        oracle_engine = make_engine(direct)
        oracle = SQLAlchemyStore(oracle_engine, name)
        same = same_kv
    env = Env(kind, mode, make_store, oracle, same, proxy, sqlite_path)
    env.child_spec = {"kind": kind, "url": url, "table": name, "options": options}
    if kind == "postgresql" and mode == "kv":
        env.slow_commit = _slow_commits(oracle_engine, name)
    if kind == "mariadb":
        env.oversize = MARIADB_MAX_PACKET + 1024 * 1024

    def drop() -> None:
        with oracle_engine.begin() as conn:
            quote = conn.dialect.identifier_preparer.quote
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")
            if kind == "postgresql" and mode == "kv":
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}_slow"')
                conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{name}_slow_fn"()')
        oracle_engine.dispose()

    env._cleanup.append(drop)
    if proxy is not None:
        env._cleanup.append(proxy.close)
    return env


SLOW_COMMIT = 0.3
"""Seconds a slowed COMMIT takes on the server (a deferred trigger's sleep)."""


def _slow_commits(engine: Any, name: str) -> Callable[[bool], None]:
    """A deferred constraint trigger that makes COMMIT sleep while a flag row says so: the window in
    which a connection can die with its COMMIT received but not finished (the outcome in doubt)."""
    flag = f"{name}_slow"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE TABLE "{flag}" (slow boolean NOT NULL)')
        conn.exec_driver_sql(f'INSERT INTO "{flag}" VALUES (false)')
        conn.exec_driver_sql(
            f'CREATE FUNCTION "{flag}_fn"() RETURNS trigger AS $$ BEGIN '
            f'IF (SELECT slow FROM "{flag}") THEN PERFORM pg_sleep({SLOW_COMMIT}); END IF; '
            "RETURN NULL; END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            f'CREATE CONSTRAINT TRIGGER "{flag}_t" AFTER INSERT ON "{name}" '
            f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{flag}_fn"()'
        )

    def switch(on: bool) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'UPDATE "{flag}" SET slow = {"true" if on else "false"}')

    return switch


def _open_redis(tmpdir: str) -> Env:
    from lazycache.stores.redis import RedisStore

    prefix = f"chaos-{uuid.uuid4().hex[:12]}:"
    proxy = CuttableProxy(SERVER_PORTS["redis"])
    url = _url("redis", proxy.port)
    options = {"socket_timeout": 5.0, "socket_connect_timeout": 3.0}

    def make_store() -> Store[Any, Any]:
        return RedisStore(url, prefix=prefix, cluster=False, client_options=options)

    oracle = RedisStore(_url("redis", 6379), prefix=prefix, cluster=False)
    env = Env("redis", "kv", make_store, oracle, same_kv, proxy)
    env.child_spec = {"kind": "redis", "url": url, "prefix": prefix, "options": options}

    def drop() -> None:
        client = oracle.client
        keys = list(client.scan_iter(match=prefix.encode() + b"*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        oracle.close()

    env._cleanup += [drop, proxy.close]
    return env


def child_store(spec: dict[str, Any]) -> Store[Any, Any]:
    """The store a child process builds from `Env.child_spec`."""
    if spec["kind"] == "redis":
        from lazycache.stores.redis import RedisStore

        return RedisStore(
            spec["url"], prefix=spec["prefix"], cluster=False, client_options=spec["options"]
        )
    from lazycache.stores.sqlalchemy import SQLAlchemyStore

    return SQLAlchemyStore(spec["url"], spec["table"], engine_options=spec["options"])


def wait_reachable(kind: str, timeout: float = 5.0) -> str | None:
    """None if the server of `kind` answers on loopback, else why not."""
    if kind == "sqlite":
        return None
    deadline = time.monotonic() + timeout
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", SERVER_PORTS[kind]), timeout=2).close()
            return None
        except OSError as exc:
            if time.monotonic() > deadline:
                return f"{kind} is not reachable at 127.0.0.1:{SERVER_PORTS[kind]}: {exc}"
            time.sleep(0.1)
