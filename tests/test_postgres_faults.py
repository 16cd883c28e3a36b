"""Failures of a real PostgreSQL, as users of write-behind caches meet them.

The store reaches PostgreSQL through a TCP proxy the test cuts and restores, so the
database really goes away (connections die, new ones are refused) and comes back.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import run_threads, wait_until
from proxy import CuttableProxy
from services import postgres_url

from lazycache import BackpressureError, FlushError
from lazycache.stores.sqlalchemy import SQLAlchemyStore, make_engine

FAST_RETRY = {"retry_initial": 0.02, "retry_max": 0.2}


@pytest.fixture
def pg() -> Any:
    """(direct engine, proxy, proxied URL, table names to drop)."""
    url = postgres_url()
    direct = make_engine(url)
    proxy = CuttableProxy(5432)
    proxied = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
    tables: list[str] = []
    yield direct, proxy, proxied, tables
    proxy.close()
    with direct.begin() as conn:
        for name in tables:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
    direct.dispose()


def kv_store(pg: Any) -> SQLAlchemyStore:
    _, _, proxied, tables = pg
    name = f"faults_{uuid.uuid4().hex[:12]}"
    tables.append(name)
    return SQLAlchemyStore(proxied, name, engine_options={"connect_args": {"connect_timeout": 2}})


def table_rows(pg: Any, name: str) -> dict[str, Any]:
    direct = pg[0]
    with direct.connect() as conn:
        return {
            key: json.loads(value)
            for key, value in conn.exec_driver_sql(f'SELECT key, value FROM "{name}"')
        }


def test_an_outage_loses_nothing_and_memory_stays_within_max_pending(
    pg: Any, make_cache: Any
) -> None:
    _, proxy, _, tables = pg
    store = kv_store(pg)
    max_pending = 200
    cache = make_cache(
        store,
        write_interval=0.02,
        max_pending=max_pending,
        on_full="block",
        block_timeout=60,
        **FAST_RETRY,
    )
    model: dict[str, int] = {}
    for i in range(100):
        cache[f"k{i}"] = i
        model[f"k{i}"] = i
    cache.flush()

    proxy.cut()
    peak = 0
    done = threading.Event()

    def writer() -> None:
        for i in range(600):
            key = f"k{i % 400}"
            cache[key] = i * 10
            model[key] = i * 10
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        peak = max(peak, cache.pending)
        time.sleep(0.005)
    assert not done.is_set(), (
        "the writer should be held back by max_pending while the database is down"
    )
    assert peak <= max_pending + 1  # one writer thread: at most one past the bound
    # Entries already pending can still change while the database is down.
    pending_key = next(k for k in model if cache._is_pending(k))
    cache[pending_key] = -1
    model[pending_key] = -1
    assert cache.stats.retries > 0 and cache.stats.oldest_pending_age > 0

    proxy.restore()
    assert done.wait(60), "the writer never got through after the database came back"
    thread.join()
    cache.close()
    assert table_rows(pg, tables[-1]) == model  # every last value, row by row


def test_a_row_violating_a_constraint_is_isolated_and_the_rest_committed(
    pg: Any, make_cache: Any
) -> None:
    direct, _, proxied, tables = pg
    name = f"people_{uuid.uuid4().hex[:12]}"
    tables.append(name)
    metadata = sa.MetaData()
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("age", sa.Integer, sa.CheckConstraint("age >= 0"), nullable=False),
    )
    metadata.create_all(direct)
    rejected: list[Any] = []
    store = SQLAlchemyStore(proxied, table, key="name")
    cache = make_cache(
        store,
        write_interval=3600,
        on_write_error=lambda key, value, exc: rejected.append((key, value, type(exc).__name__)),
    )
    for i in range(50):
        cache[f"p{i}"] = {"age": -1 if i == 17 else i}
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == ("p17",)
    assert [(key, value["age"]) for key, value, _ in rejected] == [("p17", -1)]
    assert rejected[0][2] == "IntegrityError"
    with direct.connect() as conn:
        ages = dict(conn.execute(sa.select(table.c.name, table.c.age)).all())
    assert ages == {f"p{i}": i for i in range(50) if i != 17}
    assert cache["p17"] == {"age": -1} and "p17" in cache.write_errors  # still readable, reported
    assert cache["p3"]["id"] is not None  # generated ids merged into the committed rows
    cache["p17"] = {"age": 17}  # the writer goes on; a good value clears the error
    cache.flush()
    assert cache.write_errors == {} and cache.pending == 0


def test_close_with_the_database_down_keeps_its_deadline_and_names_the_unwritten_keys(
    pg: Any, make_cache: Any
) -> None:
    _, proxy, _, _ = pg
    store = kv_store(pg)
    cache = make_cache(store, write_interval=3600, close_may_fail=True, **FAST_RETRY)
    cache["written"] = 1
    cache.flush()
    proxy.cut()
    for i in range(5):
        cache[f"lost{i}"] = i
    started = time.monotonic()
    with pytest.raises(FlushError) as info:
        cache.close(timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 0.5, f"close(timeout=1) took {elapsed:.2f}s"
    assert sorted(info.value.result.failed_keys) == [f"lost{i}" for i in range(5)]


def test_stress_with_the_database_cut_and_restored_ends_with_every_last_value(
    pg: Any, make_cache: Any
) -> None:
    _, proxy, _, tables = pg
    store = kv_store(pg)
    cache = make_cache(
        store, maxsize=100, write_interval=0.01, prune_interval=0.01, batch_size=50, **FAST_RETRY
    )
    nthreads, nkeys, ops = 4, 400, 1500
    models: list[dict[str, Any]] = []
    stop_faults = threading.Event()

    def faults() -> None:
        rng = random.Random(7)
        while not stop_faults.is_set():
            time.sleep(rng.uniform(0.05, 0.2))
            proxy.cut()
            time.sleep(rng.uniform(0.05, 0.2))
            proxy.restore()

    fault_thread = threading.Thread(target=faults, daemon=True)
    fault_thread.start()

    def work(tid: int) -> None:
        rng = random.Random(tid)
        mine = [f"s{k}" for k in range(tid, nkeys, nthreads)]
        model: dict[str, Any] = {}
        models.append(model)
        for n in range(ops):
            key = rng.choice(mine)
            if rng.random() < 0.8:
                cache[key] = n
                model[key] = n
            elif key in model:
                try:
                    del cache[key]
                except KeyError:
                    raise AssertionError(
                        f"{key} is in the model but the cache says it is gone"
                    ) from None
                except sa.exc.OperationalError:
                    # An evicted key: `del` asks the store whether it exists, and the outage
                    # surfaces at the call, with nothing recorded. discard() needs no read.
                    cache.discard(key)
                del model[key]
            else:
                cache.discard(key)
            if n % 100 == 0:
                time.sleep(0.01)  # let the faults and the writer interleave with the work

    try:
        run_threads(work, [(t,) for t in range(nthreads)], timeout=120)
    finally:
        stop_faults.set()
        fault_thread.join()
        proxy.restore()
    cache.close(timeout=60)
    expected: dict[str, Any] = {}
    for model in models:
        expected.update(model)
    assert cache.stats.retries > 0, "the faults never hit a write"
    assert table_rows(pg, tables[-1]) == expected


def test_raise_policy_refuses_new_keys_while_the_database_is_down(pg: Any, make_cache: Any) -> None:
    _, proxy, _, tables = pg
    store = kv_store(pg)
    cache = make_cache(store, write_interval=0.02, max_pending=10, on_full="raise", **FAST_RETRY)
    proxy.cut()
    for i in range(10):
        cache[f"k{i}"] = i
    with pytest.raises(BackpressureError):
        cache["k10"] = 10
    cache["k3"] = 33  # already pending: allowed
    proxy.restore()
    wait_until(lambda: cache.pending == 0, timeout=30, message="the backlog never drained")
    cache["k10"] = 10
    cache.close()
    assert table_rows(pg, tables[-1]) == {**{f"k{i}": i for i in range(10)}, "k3": 33, "k10": 10}
