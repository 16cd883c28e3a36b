"""What `lazycache.open(url)` makes of the URL (or path) it is given, against the real databases here.

A plain `postgresql://`, `mysql://` or `mariadb://` URL uses the driver lazycache's extra installs,
whatever SQLAlchemy's own default is; a driver named in the URL is always the one used; a file path
opens a SQLite file; a Redis URL opens a cache over Redis. Errors say what to do, once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from services import (
    delete_redis_keys,
    mariadb_url,
    postgres_url,
    redis_client,
    redis_url,
    unique_name,
)

import lazycache
from lazycache.stores.sqlalchemy import SQLAlchemyStore, make_engine


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plain(url: str, scheme: str) -> str:
    """`url` with its scheme (and the driver it names) replaced by `scheme`."""
    return f"{scheme}://{url.split('://', 1)[1]}"


def write_and_reopen(url: str, table: str, impl: str) -> str:
    """Writes a key through `open(url)`, reads it back through a second `open(url)`; the driver used."""
    with lazycache.open(url, table, implementation=impl) as cache:
        driver = cache.store.engine.dialect.driver
        cache["alice"] = {"age": 30}
    again = lazycache.open(url, table, implementation=impl)
    try:
        assert again["alice"] == {"age": 30}
    finally:
        again.close()
    return driver


@pytest.fixture
def sql_table():
    """A table name for this test, dropped afterwards from the server URLs it was used on."""
    name = f"lc_urls_{unique_name('t').split('-')[1]}"
    used: list[str] = []
    yield name, used
    for url in used:
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                quote = conn.dialect.identifier_preparer.quote
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")
        finally:
            engine.dispose()


# ----------------------------------------------------------------------------- drivers


def test_plain_postgresql_url_opens_with_psycopg_3(sql_table, impl) -> None:
    # SQLAlchemy 2.0 defaults to psycopg2, which the [postgresql] extra does not install: the URL
    # must name psycopg whatever SQLAlchemy's default is.
    table, used = sql_table
    url = plain(postgres_url(), "postgresql")
    used.append(url)
    assert write_and_reopen(url, table, impl) == "psycopg"
    with lazycache.open(url, table, implementation=impl) as cache:
        assert cache.store.engine.url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_plain_mysql_and_mariadb_urls_open_with_pymysql(sql_table, impl, scheme) -> None:
    # SQLAlchemy's default MySQL driver is mysqlclient (MySQLdb); the [mysql] extra installs PyMySQL.
    table, used = sql_table
    url = plain(mariadb_url(), scheme)
    used.append(url)
    expected = "mysqldb" if installed("MySQLdb") else "pymysql"  # an installed mysqlclient stays
    assert write_and_reopen(url, table, impl) == expected
    with lazycache.open(url, table, implementation=impl) as cache:
        assert cache.store.engine.url.drivername == f"{scheme}+{expected}"


@pytest.mark.parametrize(
    ("url_of", "driver", "module"),
    [(postgres_url, "psycopg2", "psycopg2"), (mariadb_url, "mysqldb", "MySQLdb")],
    ids=["postgresql+psycopg2", "mysql+mysqldb"],
)
def test_a_driver_named_in_the_url_is_the_one_used(url_of, driver, module) -> None:
    if installed(module):
        pytest.skip(f"{module} is installed here: the named driver would simply work")
    backend = url_of().split("://")[0].split("+")[0]
    url = plain(url_of(), f"{backend}+{driver}")
    with pytest.raises(ModuleNotFoundError, match=f"No module named '{module}'"):
        lazycache.open(url, "never_made")


def test_a_named_driver_that_is_installed_is_used(sql_table, impl) -> None:
    table, used = sql_table
    url = plain(postgres_url(), "postgresql+psycopg")
    used.append(url)
    assert write_and_reopen(url, table, impl) == "psycopg"


# ----------------------------------------------------------------------------- paths


def test_a_bare_path_opens_that_sqlite_file(tmp_path, monkeypatch, impl) -> None:
    monkeypatch.chdir(tmp_path)
    with lazycache.open("app.db", implementation=impl) as cache:
        assert cache.store.engine.dialect.name == "sqlite"
        cache["k"] = "relative"
    with lazycache.open(tmp_path / "sub.db", implementation=impl) as cache:  # a pathlib.Path
        cache["k"] = "path"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["app.db", "sub.db"]
    for name, value in (("app.db", "relative"), ("sub.db", "path")):
        store = SQLAlchemyStore(f"sqlite:///{tmp_path / name}", "lazycache")
        try:
            assert store.load("k") == value
            with store.engine.connect() as conn:  # set up as the URL would be
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            store.close()


def test_a_path_with_url_characters_is_a_file_name(tmp_path, impl) -> None:
    path = tmp_path / "odd?name#1.db"  # parsed as a URL, "?" would start a query
    with lazycache.open(str(path), implementation=impl) as cache:
        cache["k"] = 1
    assert path.exists()


def test_memory_path_is_an_in_memory_database(tmp_path, monkeypatch, impl) -> None:
    monkeypatch.chdir(tmp_path)
    with lazycache.open(":memory:", implementation=impl) as cache:
        cache["k"] = 1
        assert cache.flush().written == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:/app.db", "postgresql:/db", "postgres:host/db", ""])
def test_a_mistyped_url_says_how_to_write_one(tmp_path, monkeypatch, url) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"is not a URL .*'sqlite:///app\.db'"):
        lazycache.open(url)
    assert list(tmp_path.iterdir()) == []  # and made no file


# ----------------------------------------------------------------------------- Redis


def test_a_redis_url_opens_a_cache_over_redis(impl) -> None:
    table = unique_name()
    client = redis_client()
    try:
        with lazycache.open(redis_url(), table, implementation=impl) as cache:
            cache["alice"] = {"age": 30}
        assert client.get(f"{table}:alice") is not None
        again = lazycache.open(redis_url(), table, implementation=impl)
        try:
            assert again["alice"] == {"age": 30}
        finally:
            again.close()
    finally:
        delete_redis_keys(client, f"{table}:")
        client.close()


def test_a_redis_url_refuses_sql_options() -> None:
    with pytest.raises(ValueError, match="not Redis"):
        lazycache.open(redis_url(), "t", key_type=int)


def test_bench_store_takes_a_redis_url_to_the_redis_bench() -> None:
    # The CLI and the Redis bench share open()'s check of what a Redis URL is.
    args = ["bench", "--store", redis_url(), "--quick", "--sizes", "200", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "lazycache", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["url"] == redis_url() and report["keys"] == 200


# ----------------------------------------------------------------------------- missing packages
#
# A child interpreter without site-packages (-S) sees only the packages linked into its PYTHONPATH:
# a real interpreter that lacks SQLAlchemy, or has SQLAlchemy and no driver.


def run_without_site_packages(tmp_path: Path, packages: list[str], code: str) -> str:
    """Runs `code` in a child that can import lazycache and `packages` only; its stderr."""
    sitedir = tmp_path / "site"
    sitedir.mkdir()
    for name in ["lazycache", *packages]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (sitedir / source.name).symlink_to(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(sitedir)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, f"exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stderr


def test_open_without_sqlalchemy_says_so_once(tmp_path) -> None:
    stderr = run_without_site_packages(
        tmp_path,
        [],
        "import importlib.util, lazycache\n"
        "assert importlib.util.find_spec('sqlalchemy') is None\n"
        "lazycache.open('sqlite:///x.db')\n",
    )
    assert stderr.count("needs SQLAlchemy") == 1, stderr
    assert "[sqlalchemy]" in stderr.splitlines()[-1], stderr  # the last line says what to install
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql"),
        ("mysql://root@127.0.0.1/test", "mysql"),
    ],
)
def test_plain_url_without_a_driver_says_which_extra_to_install(tmp_path, url, extra) -> None:
    packages = ["sqlalchemy", "typing_extensions"] + [m for m in ("greenlet",) if installed(m)]
    stderr = run_without_site_packages(
        tmp_path,
        packages,
        "import importlib.util, lazycache\n"
        "assert not any(importlib.util.find_spec(m) for m in ('psycopg', 'psycopg2', 'pymysql', 'MySQLdb'))\n"
        f"lazycache.open({url!r})\n",
    )
    last = stderr.splitlines()[-1]
    assert last.startswith("ImportError: "), stderr
    assert f"pip install 'lazywritercache[{extra}]'" in last, stderr


def test_expiry_reaches_the_table_opened_by_url(tmp_path, impl) -> None:
    # open(expiry=True): the table gets its expires_at column, and an entry's TTL lands there.
    import sqlite3
    import time

    url = f"sqlite:///{tmp_path / 'expiry.db'}"
    before_ms = time.time() * 1000
    with lazycache.open(url, "sessions", expiry=True, implementation=impl) as cache:
        cache.set("short", 1, ttl=3600)
        cache["forever"] = 2
    after_ms = time.time() * 1000
    with sqlite3.connect(tmp_path / "expiry.db") as db:
        rows = dict(db.execute("SELECT key, expires_at FROM sessions").fetchall())
    assert rows["forever"] is None
    assert before_ms + 3_599_000 <= rows["short"] <= after_ms + 3_600_000


def test_expiry_is_refused_for_redis_urls_before_connecting() -> None:
    with pytest.raises(ValueError, match="expiry="):
        lazycache.open("redis://127.0.0.1:1/0", expiry=True)
