"""Engines for the SQL store: the driver a URL gets, network timeouts, SQLite's set-up."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .sqlite import SQLITE_BUSY_TIMEOUT, configure_sqlite, is_sqlite_file

DEFAULT_URL = "sqlite:///lazycache.db"
"""The embedded default: a SQLite file in the current directory."""

NETWORK_TIMEOUTS: dict[str, dict[str, Any]] = {
    # libpq (psycopg 3, psycopg2): seconds to connect; TCP keepalives (a connection waiting
    # for an answer that never comes is probed after 30 s idle, given up after 3 probes 10 s
    # apart), and milliseconds sent data may stay unacknowledged before the kernel drops
    # the connection. A statement that is merely slow is not cut: the server's TCP stack
    # still answers the probes and acknowledges the data.
    "postgresql": {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 60_000,
    },
    # PyMySQL, mysqlclient: seconds to connect, and to wait for each read or write on the socket.
    "mysql": {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60},
}
"""By backend: the DBAPI `connect_args` `make_engine` gives a networked engine unless told
otherwise, so that a server that stops answering (its packets black-holed, not refused)
fails a write after a while instead of hanging the writer thread for ever."""

_NETWORK_TIMEOUT_DRIVERS = {
    "postgresql": ("psycopg", "psycopg2"),
    "mysql": ("pymysql", "mysqldb"),
    "mariadb": ("pymysql", "mysqldb"),
}
"""The drivers that take the arguments of NETWORK_TIMEOUTS (by backend) as they are."""

_ENV_SETTINGS = {"connect_timeout": "PGCONNECT_TIMEOUT"}
"""libpq reads these from the environment: a default must not override what it says."""

_EXTRA_DRIVERS = {
    "postgresql": ("psycopg", (), "postgresql"),
    "mysql": ("pymysql", ("MySQLdb",), "mysql"),
    "mariadb": ("pymysql", ("MySQLdb",), "mysql"),
}
"""Backend -> (the driver our extra installs, the modules that keep SQLAlchemy's own default when
importable, the extra). SQLAlchemy's default PostgreSQL driver is psycopg2 before 2.1 (psycopg from
2.1), its MySQL/MariaDB default mysqlclient (`MySQLdb`): neither is what our extras install."""


def _installed(module: str) -> bool:
    try:
        return module in sys.modules or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without __spec__
        return False


def with_installed_driver(url: str | sa.engine.URL) -> sa.engine.URL:
    """`url` with the driver our extras install named, when it names none.

    `postgresql://` becomes `postgresql+psycopg://` when psycopg 3 is installed; `mysql://`
    and `mariadb://` become `...+pymysql://` when PyMySQL is installed and mysqlclient is
    not. A URL that names its driver (`postgresql+psycopg2://`) is returned as it is.
    """
    url = sa.engine.make_url(url)
    backend, _, driver = url.drivername.partition("+")
    if driver or backend not in _EXTRA_DRIVERS:
        return url
    ours, preferred, _ = _EXTRA_DRIVERS[backend]
    if _installed(ours) and not any(_installed(module) for module in preferred):
        return url.set(drivername=f"{backend}+{ours}")
    return url


def make_engine(url: str | sa.engine.URL, **options: Any) -> Engine:
    """`sqlalchemy.create_engine(url, **options)`, set up for lazycache.

    A URL that names no driver gets the one lazycache's extra installed (see
    `with_installed_driver`): `postgresql://` uses psycopg 3, `mysql://` PyMySQL.
    PostgreSQL (psycopg, psycopg2) and MySQL/MariaDB (PyMySQL, mysqlclient) connections get
    the timeouts of `NETWORK_TIMEOUTS`, each unless `connect_args` or the URL's query sets
    it (None, or 0 for libpq's, turns one off).
    SQLite: a file database runs in WAL mode (see `configure_sqlite`) with a busy timeout of
    `SQLITE_BUSY_TIMEOUT` seconds unless `connect_args={"timeout": ...}` says otherwise; an
    in-memory database gets one connection shared by all threads (otherwise the writer
    thread and a reader would each see their own empty database).
    """
    given = sa.engine.make_url(url)
    url = with_installed_driver(given)
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if driver in _NETWORK_TIMEOUT_DRIVERS.get(backend, ()):
        defaults = NETWORK_TIMEOUTS["postgresql" if backend == "postgresql" else "mysql"]
        connect_args = dict(options.get("connect_args") or {})
        for name, value in defaults.items():
            # connect_args override the URL's query: a setting there must win over a default.
            env = _ENV_SETTINGS.get(name)
            if name in url.query or (env is not None and os.environ.get(env)):
                continue
            connect_args.setdefault(name, value)
        options["connect_args"] = connect_args
    if backend == "sqlite":
        connect_args = dict(options.get("connect_args") or {})
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        if not is_sqlite_file(url):
            connect_args.setdefault("check_same_thread", False)
            options.setdefault("poolclass", sa.pool.StaticPool)
        options["connect_args"] = connect_args
        return configure_sqlite(sa.create_engine(url, **options))
    try:
        return sa.create_engine(url, **options)
    except ImportError as exc:
        if given.drivername not in _EXTRA_DRIVERS:  # a named driver: SQLAlchemy's error says it
            raise
        ours, _, extra = _EXTRA_DRIVERS[given.drivername]
        raise ImportError(
            f"{given.drivername}:// needs a driver ({exc}): pip install 'lazywritercache[{extra}]'"
            f" for {ours}, or name an installed one in the URL ({given.drivername}+DRIVER://)"
        ) from None
