"""A SQL server that stops answering must not hang the writer for ever.

When its packets are black-holed (dropped, not refused: a cable pulled, a firewall that
drops, a host gone), a connection with no timeout waits for an answer for ever, and with it
the writer thread. Engines lazycache makes from a URL get connect, TCP keepalive and
TCP user (PostgreSQL) or socket read/write (MySQL/MariaDB) timeouts, which the user may
change; the tests here check them on the real connections, then black-hole a real
PostgreSQL and MariaDB behind tests/proxy.py and watch the writer come back.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import wait_until
from proxy import CuttableProxy
from services import MARIADB_URL, POSTGRES_URL, mariadb_url, postgres_url

import lazycache
from lazycache.stores.sqlalchemy import NETWORK_TIMEOUTS, make_engine

SERVERS = {"postgresql": (postgres_url, 5432), "mariadb": (mariadb_url, 3306)}

SMALL = {
    # Seconds (libpq: at least 2), milliseconds for tcp_user_timeout: the test's own override.
    "postgresql": {
        "connect_timeout": 2,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 1,
        "tcp_user_timeout": 1000,
    },
    "mariadb": {"connect_timeout": 1, "read_timeout": 1, "write_timeout": 1},
}


def proxied_url(kind: str, port: int) -> str:
    url = POSTGRES_URL if kind == "postgresql" else MARIADB_URL
    return url.replace(f":{SERVERS[kind][1]}/", f":{port}/")


def raw_connection(engine: sa.Engine) -> Any:
    """The DBAPI connection of one live connection of `engine` (the caller closes it)."""
    conn = engine.connect()
    conn.exec_driver_sql("SELECT 1")
    return conn


def pg_socket_options(dbapi_connection: Any) -> dict[str, int]:
    """The TCP options libpq set on the connection's socket, read back from the kernel."""
    sock = socket.fromfd(dbapi_connection.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
    try:
        return {
            "keepalives": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "keepalives_idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "keepalives_interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "keepalives_count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "tcp_user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()  # a duplicate: the connection's own socket stays open


def timeouts_of(kind: str, engine: sa.Engine) -> dict[str, Any]:
    """The network timeouts in force on a live connection of `engine`."""
    with raw_connection(engine) as conn:
        dbapi = conn.connection.dbapi_connection
        if kind == "postgresql":
            options: dict[str, Any] = pg_socket_options(dbapi)
            options["connect_timeout"] = int(dbapi.info.get_parameters()["connect_timeout"])
            return options
        return {
            "connect_timeout": dbapi.connect_timeout,
            "read_timeout": dbapi._read_timeout,
            "write_timeout": dbapi._write_timeout,
        }


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_an_engine_made_from_a_url_has_network_timeouts(kind: str) -> None:
    engine = make_engine(SERVERS[kind][0]())
    try:
        expected = NETWORK_TIMEOUTS["postgresql" if kind == "postgresql" else "mysql"]
        assert timeouts_of(kind, engine) == expected
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_connect_args_and_the_url_override_each_default_alone(kind: str) -> None:
    url = sa.engine.make_url(SERVERS[kind][0]())
    if kind == "postgresql":
        override, in_url = {"tcp_user_timeout": 5000}, {"keepalives_idle": "7"}
    else:
        override, in_url = {"read_timeout": 5}, {"write_timeout": "7"}
    engine = make_engine(url.update_query_dict(in_url), connect_args=override)
    try:
        found = timeouts_of(kind, engine)
    finally:
        engine.dispose()
    defaults = NETWORK_TIMEOUTS["postgresql" if kind == "postgresql" else "mysql"]
    expected = {**defaults, **override, **{name: int(value) for name, value in in_url.items()}}
    assert found == expected


def test_none_turns_a_default_off() -> None:
    engine = make_engine(postgres_url(), connect_args={"tcp_user_timeout": None})
    try:
        found = timeouts_of("postgresql", engine)
    finally:
        engine.dispose()
    assert found == {**NETWORK_TIMEOUTS["postgresql"], "tcp_user_timeout": 0}  # 0: the kernel's


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_the_writer_comes_back_from_a_black_holed_server(kind: str, impl: str) -> None:
    SERVERS[kind][0]()  # skips if the server is not here
    proxy = CuttableProxy(SERVERS[kind][1])
    table = f"blackhole_{uuid.uuid4().hex[:12]}"
    cache = lazycache.open(
        proxied_url(kind, proxy.port),
        table,
        implementation=impl,
        engine_options={"connect_args": SMALL[kind]},
        write_interval=0.02,
        retry_initial=0.05,
        retry_max=0.5,
    )
    direct = make_engine(SERVERS[kind][0]())
    try:
        cache["before"] = 1
        cache.flush()  # the pool holds a live connection through the proxy now
        proxy.blackhole()
        cache["during"] = 2
        # The writer's call on the black-holed connection, then its new connections, fail
        # by their timeouts: the writer is back to retry, more than once.
        wait_until(
            lambda: cache.stats.retries >= 2,
            timeout=60,
            message="the writer never came back from the black-holed server",
        )
        assert cache.pending == 1
        assert cache._writer.alive
        proxy.restore()
        wait_until(lambda: cache.pending == 0, timeout=60, message="not written after the heal")
        with direct.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            rows = dict(
                conn.exec_driver_sql(f"SELECT {quote('key')}, value FROM {quote(table)}").all()
            )
        assert rows == {"before": "1", "during": "2"}
    finally:
        proxy.heal()
        cache.close(timeout=30)
        proxy.close()
        with direct.begin() as conn:
            conn.exec_driver_sql(
                f"DROP TABLE IF EXISTS {conn.dialect.identifier_preparer.quote(table)}"
            )
        direct.dispose()
