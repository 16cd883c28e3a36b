"""The database servers the store tests talk to, and how a test asks for one.

Every server is on the loopback interface, at its default port:

| service    | address          | as                              |
|------------|------------------|---------------------------------|
| PostgreSQL | 127.0.0.1:5432   | user `postgres`, trust auth, database `test` |
| MariaDB    | 127.0.0.1:3306   | user `root`, empty password, database `test` |
| Redis      | 127.0.0.1:6379   | database 0                      |

`require_service(name, check)` runs `check()` once per session: if it raises, the calling
test is skipped with the reason, or FAILS when the environment sets
LAZYCACHE_REQUIRE_SERVICES=1 (CI, where every server must be there). The helpers below
return the URL of a service after requiring it, e.g. `engine = create_engine(postgres_url())`.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import pytest
from helpers import TIMEOUT, close_caches, recording

from lazycache.stores.sqlalchemy import SQLAlchemyStore

HOST = "127.0.0.1"
"""Loopback only: the tests never reach beyond this machine."""

POSTGRES_URL = f"postgresql+psycopg://postgres@{HOST}:5432/test"
MARIADB_URL = f"mysql+pymysql://root@{HOST}:3306/test?charset=utf8mb4"
REDIS_URL = f"redis://{HOST}:6379/0"

CONNECT_TIMEOUT = 3
"""Seconds a reachability check waits for a server."""

REQUIRE_ENV = "LAZYCACHE_REQUIRE_SERVICES"

_checked: dict[str, str | None] = {}
"""Service name -> None if reachable, else why not. Each service is checked once per session."""


def services_required() -> bool:
    """Whether an unreachable service fails the test instead of skipping it."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def require_service(name: str, check: Callable[[], Any]) -> None:
    """Skips the calling test if `check()` raises (fails it under LAZYCACHE_REQUIRE_SERVICES=1).

    `check` should connect with a short timeout and raise if the service cannot be used;
    its result is remembered under `name` for the rest of the session.
    """
    if name not in _checked:
        try:
            check()
        except Exception as exc:  # any failure means "not usable here"
            _checked[name] = f"{type(exc).__name__}: {exc}".strip()
        else:
            _checked[name] = None
    reason = _checked[name]
    if reason is None:
        return
    message = f"{name} is not reachable ({reason})"
    if services_required():
        pytest.fail(f"{message}, and {REQUIRE_ENV} is set: every service must be up", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to make this a failure")


def _check_postgres() -> None:
    import psycopg

    with psycopg.connect(
        host=HOST, port=5432, user="postgres", dbname="test", connect_timeout=CONNECT_TIMEOUT
    ) as conn:
        conn.execute("SELECT 1")


def _check_mariadb() -> None:
    import pymysql

    conn = pymysql.connect(
        host=HOST,
        port=3306,
        user="root",
        password="",
        database="test",
        connect_timeout=CONNECT_TIMEOUT,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        conn.close()


def _check_redis() -> None:
    import redis

    client = redis.Redis(
        host=HOST,
        port=6379,
        db=0,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=CONNECT_TIMEOUT,
    )
    try:
        client.ping()
    finally:
        client.close()


def postgres_url() -> str:
    """The SQLAlchemy URL of the local PostgreSQL `test` database (skips if unreachable)."""
    require_service("PostgreSQL at 127.0.0.1:5432 (database test, user postgres)", _check_postgres)
    return POSTGRES_URL


def mariadb_url() -> str:
    """The SQLAlchemy URL of the local MariaDB `test` database (skips if unreachable)."""
    require_service("MariaDB at 127.0.0.1:3306 (database test, user root)", _check_mariadb)
    return MARIADB_URL


def redis_url() -> str:
    """The URL of the local Redis, database 0 (skips if unreachable)."""
    require_service("Redis at 127.0.0.1:6379", _check_redis)
    return REDIS_URL


# ----------------------------------------------------------------------------- SQL databases as fixtures
#
# Import these into a test module (`from services import database, db_cache`, with a noqa for F401).
# `database` runs the test once per SQL server; `db_cache` also once per lazycache core.

SQL_DATABASES = ["sqlite", "postgresql", "mariadb"]


class Database:
    """One SQL database for one test: its URL, an engine, and tables named for this test only.

    Tables named by `table_name()` are dropped at teardown. SQLite is a file in the test's
    tmp_path (WAL mode, as the store sets it up); the servers are the shared `test` databases.
    """

    def __init__(self, kind: str, url: str) -> None:
        from lazycache.stores.sqlalchemy import make_engine

        self.kind = kind
        self.url = url
        self.engine = make_engine(url)
        self._tables: list = []
        self._engines: list = [self.engine]

    def table_name(self, prefix: str = "lc") -> str:
        """A table name no other test (in this run or a concurrent one) uses; dropped at teardown."""
        import uuid

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._tables.append(name)
        return name

    def new_engine(self) -> Any:
        """Another engine on the same database (its own pool), disposed of at teardown."""
        from lazycache.stores.sqlalchemy import make_engine

        engine = make_engine(self.url)
        self._engines.append(engine)
        return engine

    def teardown(self) -> None:
        try:
            with self.engine.begin() as conn:
                quote = conn.dialect.identifier_preparer.quote
                for name in reversed(self._tables):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")
        finally:
            for engine in self._engines:
                engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.kind})"


@pytest.fixture(params=SQL_DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """A `Database`: SQLite (a WAL file in tmp_path), PostgreSQL or MariaDB; skipped if unreachable."""
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'lazycache-test.db'}"
    elif kind == "postgresql":
        url = postgres_url()
    else:
        url = mariadb_url()
    db = Database(kind, url)
    yield db
    db.teardown()


@pytest.fixture
def db_cache(database: Any, make_cache: Any) -> Any:
    """make_cache (see conftest) for caches over `database`: closed before its tables are dropped."""
    make, made = recording(make_cache)
    yield make
    try:
        close_caches(made)
    finally:
        for cache, _ in made:
            cache.store.close()


# ----------------------------------------------------------------------------- Redis helpers
# (tests/test_redis_*.py, tests/test_coherence_*.py, tests/redis_cluster.py)


def _check_redis_binaries() -> None:
    import shutil

    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        raise FileNotFoundError(
            f"{' and '.join(missing)} not on PATH (install the redis-server package)"
        )


def redis_binaries() -> tuple[str, str]:
    """The paths of `redis-server` and `redis-cli`, for tests that start their own servers
    (a Redis Cluster, a private server); skips if they are not installed (fails under
    LAZYCACHE_REQUIRE_SERVICES=1)."""
    import shutil

    require_service(
        "redis-server and redis-cli (to start test servers on loopback ports)",
        _check_redis_binaries,
    )
    return shutil.which("redis-server"), shutil.which("redis-cli")  # type: ignore[return-value]


def unique_name(prefix: str = "lctest") -> str:
    """A name no other test (in this run or a concurrent one) uses: for Redis key prefixes and channels."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def redis_client(url: str | None = None, **options: Any) -> Any:
    """A `redis.Redis` on the local Redis (or on `url`), bytes responses; skips if unreachable. Close it when done."""
    import redis

    options.setdefault("socket_timeout", 5)
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    return redis.Redis.from_url(url or redis_url(), **options)


def delete_redis_keys(client: Any, prefix: str) -> int:
    """Deletes every key starting with `prefix` (SCAN + DEL); returns how many."""
    deleted = 0
    batch = []
    for key in client.scan_iter(
        match=prefix.replace("\\", "\\\\")
        .replace("*", "\\*")
        .replace("?", "\\?")
        .replace("[", "\\[")
        + "*",
        count=1000,
    ):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted


class HeldStore(SQLAlchemyStore):
    """A real SQLAlchemyStore whose next write can be held at its start, until released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, upserts: Any, deletes: Any) -> Any:
        if self.holding:
            self.holding = False
            self.entered.set()
            assert self.release.wait(TIMEOUT * 2), "the test never released the held write"
        return super().write(upserts, deletes)
