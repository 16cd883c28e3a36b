"""PostgresNotifyCoherence in one process: caches over one SQLAlchemyStore on the local
PostgreSQL (a table of this test's own), invalidating each other with LISTEN/NOTIFY.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from helpers import wait_until
from services import POSTGRES_URL, Database, postgres_url, unique_name

from lazycache import MemoryStore
from lazycache.coherence.postgres import MAX_PAYLOAD, PostgresNotifyCoherence, conninfo_of
from lazycache.stores.sqlalchemy import SQLAlchemyStore

LIBPQ_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg() -> Any:
    database = Database("postgresql", postgres_url())
    yield database
    database.teardown()


@pytest.fixture
def pg_pair(make_cache: Any, pg: Database) -> Any:
    """pg_pair(store=None, **options) -> (A, B): two caches over one SQLAlchemyStore, each with its own channel object."""
    stores = []
    channel = unique_name("lcpg").replace("-", "_")

    def make(store: Any = None, **options: Any) -> Any:
        if store is None:
            store = SQLAlchemyStore(pg.engine, pg.table_name())
            stores.append(store)
        options.setdefault("write_interval", 3600)
        return [
            make_cache(
                store,
                coherence=PostgresNotifyCoherence(
                    store if isinstance(store, SQLAlchemyStore) else LIBPQ_URL, channel
                ),
                **options,
            )
            for _ in range(2)
        ]

    yield make


def heard(cache: Any, messages: int) -> None:
    wait_until(
        lambda: cache._coherence.received >= messages,
        message=f"{messages} notification(s) never arrived",
    )


def test_a_write_in_one_cache_invalidates_the_other(pg_pair) -> None:
    a, b = pg_pair()
    a["k"] = {"v": 1}
    a.flush()
    heard(b, 1)
    assert b["k"] == {"v": 1}
    a["k"] = {"v": 2}
    a.flush()
    wait_until(lambda: b["k"] == {"v": 2}, message="B never saw A's write")
    b["k"] = {"v": "mine"}  # pending in B
    a["k"] = {"v": 3}
    a["sentinel"] = 1
    a.flush()
    heard(b, 3)
    assert b["k"] == {"v": "mine"}
    b.flush()
    wait_until(lambda: a["k"] == {"v": "mine"})
    assert a._coherence.received == 1 and b._coherence.received == 3


def test_a_large_batch_is_split_under_the_payload_limit(pg_pair) -> None:
    a, b = pg_pair(store=MemoryStore(), batch_size=5000)
    keys = [f"{'long-key-' * 10}{i}" for i in range(2000)]  # about 200 kB of key names
    a.update({key: 0 for key in keys})
    a.flush()
    sent = a._coherence.published
    assert sent >= 190_000 // MAX_PAYLOAD  # about 25 notifications, each under the limit
    heard(b, sent)
    assert all(b[key] == 0 for key in keys)
    a.update({key: 1 for key in keys})
    a.flush()
    heard(b, 2 * sent)
    assert list(b.keys()) == []  # every key named, across all the notifications
    assert all(b[key] == 1 for key in keys)


def test_a_key_too_long_for_a_notification_drops_everything(pg_pair) -> None:
    a, b = pg_pair(store=MemoryStore())
    a.update({"x": 1, "y": 2})
    a.flush()
    heard(b, 1)
    assert b["x"] == 1 and b["y"] == 2
    a["z" * 9000] = 3
    a.flush()
    heard(b, 2)
    assert list(b.keys()) == []


def test_a_terminated_listener_is_noticed_and_replaced(pg_pair, caplog) -> None:
    a, b = pg_pair(store=MemoryStore())
    a.update({"x": 1, "y": 2})
    a.flush()
    heard(b, 1)
    assert b["x"] == 1 and b["y"] == 2
    b["mine"] = "pending"
    name = f"lazycache-coherence-{b._coherence.id[:12]}"
    with caplog.at_level(logging.WARNING, logger="lazycache"):
        with psycopg.connect(LIBPQ_URL, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (name,),
            ).fetchall()
        assert killed == [(True,)]
        wait_until(lambda: b._coherence.losses == 1, message="the listener's death went unnoticed")
        assert list(b.keys()) == ["mine"]
        # The cache logs the return of its channel once coherent again, from the channel's thread.
        wait_until(
            lambda: any("coherence channel is back" in r.getMessage() for r in caplog.records)
        )
        assert b.coherent
    messages = [r.getMessage() for r in caplog.records]
    assert any("postgresql coherence subscription is down" in m for m in messages)
    a["x"] = 10
    a.flush()
    wait_until(lambda: b["x"] == 10, message="notifications did not resume")


def test_conninfo_from_stores_engines_and_urls(pg: Database) -> None:
    store = SQLAlchemyStore(pg.engine, pg.table_name())
    assert conninfo_of(store).startswith("postgresql://postgres@127.0.0.1:5432/test")
    assert conninfo_of(pg.engine) == conninfo_of(store)
    assert conninfo_of(sa.engine.make_url(POSTGRES_URL)) == conninfo_of(store)
    assert conninfo_of(POSTGRES_URL) == LIBPQ_URL
    assert conninfo_of("host=127.0.0.1 dbname=test") == "host=127.0.0.1 dbname=test"
    with pytest.raises(ValueError, match="PostgreSQL"):
        conninfo_of("sqlite:///x.db")
    with pytest.raises(ValueError, match="PostgreSQL"):
        conninfo_of(sa.create_engine("sqlite://"))
    with pytest.raises(ValueError, match="identifier"):
        PostgresNotifyCoherence(LIBPQ_URL, "x" * 64)
    with pytest.raises(ValueError, match="keys"):
        PostgresNotifyCoherence(LIBPQ_URL, keys="yaml")


def test_without_psycopg_the_import_error_names_the_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from lazycache.stores.postgres_coherence import PostgresNotifyCoherence\n"
        f"PostgresNotifyCoherence({LIBPQ_URL!r})"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "lazywritercache[postgresql]" in run.stderr, run.stderr
