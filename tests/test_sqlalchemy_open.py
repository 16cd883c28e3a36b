"""lazycache.open(), the examples and `lazycache bench --store`: the SQL store as a newcomer meets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from services import database, postgres_url  # noqa: F401  (database: fixture)

import lazycache
from lazycache.stores.sqlalchemy import SQLAlchemyStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# ----------------------------------------------------------------------------- lazycache.open()


def test_open_is_a_persistent_dict_across_two_opens(tmp_path, impl) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with lazycache.open(url, implementation=impl) as cache:
        assert cache.implementation == impl
        cache["alice"] = {"age": 30}
        cache["bob"] = [1, 2]
        cache["gone"] = 0
        del cache["gone"]
    again = lazycache.open(url, implementation=impl)
    try:
        assert again["alice"] == {"age": 30} and again["bob"] == [1, 2]
        assert "gone" not in again
        again.update_entry("alice", lambda v: {**v, "age": v["age"] + 1})
    finally:
        again.close()
    third = lazycache.open(url, implementation=impl)
    try:
        assert third["alice"] == {"age": 31}
    finally:
        third.close()


def test_open_defaults_to_lazycache_db_in_the_current_directory(
    tmp_path, monkeypatch, impl
) -> None:
    monkeypatch.chdir(tmp_path)
    with lazycache.open(implementation=impl) as cache:
        cache["k"] = "v"
    assert (tmp_path / "lazycache.db").exists()
    store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'lazycache.db'}", "lazycache")
    try:
        assert store.load("k") == "v"
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()


def test_open_takes_cache_options_a_table_a_serializer_and_an_engine(database, impl) -> None:
    table = database.table_name()
    with lazycache.open(
        database.engine,
        table,
        serializer="pickle",
        key_type=int,
        implementation=impl,
        batch_size=2,
        maxsize=10,
    ) as cache:
        assert (cache.batch_size, cache.maxsize) == (2, 10)
        cache.update({i: {i} for i in range(5)})  # sets: pickle, not JSON
        cache.flush()
        # A full batch wakes the writer, which may write some of them first: counted together,
        # five entries in batches of at most two are three transactions or more.
        stats = cache.stats
        assert (stats.writes, stats.pending) == (5, 0) and stats.flushes >= 3
    assert SQLAlchemyStore(database.engine, table, serializer="pickle", key_type=int).load(3) == {3}
    with database.engine.connect() as conn:  # an engine given is not disposed of by the cache
        conn.exec_driver_sql("SELECT 1")


def test_open_closes_the_engine_it_made_when_the_cache_closes(tmp_path, impl) -> None:
    cache = lazycache.open(f"sqlite:///{tmp_path / 'a.db'}", implementation=impl)
    cache["k"] = 1
    engine = cache.store.engine
    cache.flush()
    assert engine.pool.checkedin() == 1  # the connection the flush used, pooled
    cache.close()
    assert engine.pool.checkedin() == 0  # the cache owns the store: its engine is disposed of
    assert cache["k"] == 1  # reads still work after close


def test_open_closes_the_engine_when_the_cache_is_garbage_collected(tmp_path, impl) -> None:
    cache = lazycache.open(f"sqlite:///{tmp_path / 'a.db'}", implementation=impl)
    cache["k"] = 1
    engine = cache.store.engine
    del cache
    import gc

    gc.collect()
    assert engine.pool.checkedin() == 0
    with engine.connect() as conn:  # and the write was flushed first
        assert conn.exec_driver_sql("SELECT value FROM lazycache WHERE key = 'k'").scalar() == "1"


def test_open_rejects_unknown_cache_options(tmp_path) -> None:
    with pytest.raises(TypeError):
        lazycache.open(f"sqlite:///{tmp_path / 'a.db'}", no_such_option=1)


# ----------------------------------------------------------------------------- examples


def test_persistent_dict_example_counts_across_runs(tmp_path) -> None:
    path = tmp_path / "visits.db"
    first = run(
        [sys.executable, str(EXAMPLES / "persistent_dict_sqlite.py"), str(path)], cwd=tmp_path
    )
    assert "/          3" in first.stdout and "/about     1" in first.stdout
    second = run(
        [sys.executable, str(EXAMPLES / "persistent_dict_sqlite.py"), str(path)], cwd=tmp_path
    )
    assert (
        "/          6" in second.stdout
        and "/about     2" in second.stdout
        and "/pricing   2" in second.stdout
    )


def test_typed_usage_example_runs_on_each_core(tmp_path, impl) -> None:
    # The example picks the core as a user would: the best available, or the twin on request.
    env = {"LAZYCACHE_NO_EXTENSIONS": "1"} if impl == "python" else None
    proc = run([sys.executable, str(EXAMPLES / "typed_usage.py")], cwd=tmp_path, env=env)
    assert f"typed usage: ok ({impl} core)" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # its SQLite file was temporary


def test_orm_postgres_example_merges_the_generated_id(tmp_path) -> None:
    url = postgres_url()
    table = f"people_example_{os.getpid()}_{tmp_path.name[-8:]}".replace("-", "_").lower()
    env = {"LAZYCACHE_EXAMPLE_URL": url, "LAZYCACHE_EXAMPLE_TABLE": table}
    try:
        first = run([sys.executable, str(EXAMPLES / "orm_postgres.py")], env=env)
        assert "before the write: Person(id=None, name='alice'" in first.stdout
        assert "after the write:  Person(id=1, name='alice'" in first.stdout
        assert (
            "read through:     Person(id=1, name='alice', email='alice@example.org')"
            in first.stdout
        )
        second = run(
            [sys.executable, str(EXAMPLES / "orm_postgres.py")], env=env
        )  # same rows, same ids
        assert "after the write:  Person(id=1, name='alice'" in second.stdout
        assert (
            "in the table:     [Person(id=1, name='alice'" in second.stdout
            and "id=3" not in second.stdout
        )
    finally:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
        engine.dispose()


# ----------------------------------------------------------------------------- lazycache bench --store


def test_bench_store_quick_runs_on_a_sqlite_file(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    proc = run([sys.executable, "-m", "lazycache", "bench", "--store", url, "--quick"])
    out = proc.stdout
    assert "flush throughput" in out and "SQLite" in out
    for method in ("lazycache: cache.flush()", "origin: per row SELECT", "sqlite3 executemany"):
        assert method in out
    assert "FAILED" not in out
    with sa.create_engine(url).connect() as conn:  # its table is dropped afterwards
        assert sa.inspect(conn).get_table_names() == []


def test_bench_store_json_on_the_embedded_default() -> None:
    proc = run(
        [
            sys.executable,
            "-m",
            "lazycache",
            "bench",
            "--store",
            "--quick",
            "--sizes",
            "200",
            "--json",
        ]
    )
    document = json.loads(proc.stdout)
    assert document["database"].startswith("SQLite") and document["batches"] == [200]
    by_method = {result["method"]: result for result in document["results"]}
    assert by_method["sqlite3 executemany"]["vs_raw_best"] == 1.0
    assert (
        by_method["origin: per row SELECT, then INSERT or UPDATE (SQLAlchemy Core)"]["vs_origin"]
        == 1.0
    )
    assert all(result["rows_per_s"] > 0 for result in document["results"])
