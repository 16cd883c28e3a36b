"""A finding of the chaos suite: a batch whose COMMIT was in doubt landed after a later delete.

The writer's connection dies while the server is still committing a batch (its COMMIT was
received; here a deferred trigger makes it take a while). The writer sees a failure and moves
on; the key is deleted and the delete committed on another connection, and `flush()` said ok.
Then the first COMMIT completed on the server: the deleted key was back, with its old value.
(A later upsert is safe: it waits for the in-flight insert's row. A delete sees no row yet.)
The store now ends the lost connection's server session, and waits until it has gone, before
it writes again.
"""

from __future__ import annotations

import uuid
from typing import Any

from helpers import TIMEOUT, wait_until
from proxy import CuttableProxy
from services import mariadb_url, postgres_url

from lazycache.stores.sqlalchemy import SQLAlchemyStore, make_engine


def sleeping_backends(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = 'test'"
            ).scalar_one()
        )


def test_a_delete_acknowledged_and_flushed_stays_deleted_when_an_earlier_commit_was_in_doubt(
    make_cache: Any,
) -> None:
    direct = make_engine(postgres_url())
    proxy = CuttableProxy(5432)
    name = f"doubt_{uuid.uuid4().hex[:12]}"
    store = SQLAlchemyStore(f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test", name)
    try:
        with direct.begin() as conn:
            # The server takes a while to COMMIT an insert whose value says "slow".
            conn.exec_driver_sql(
                f'CREATE FUNCTION "{name}_fn"() RETURNS trigger AS $$ BEGIN '
                "IF strpos(NEW.value, 'slow') > 0 THEN PERFORM pg_sleep(2); END IF; "
                "RETURN NULL; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                f'CREATE CONSTRAINT TRIGGER "{name}_t" AFTER INSERT ON "{name}" '
                f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{name}_fn"()'
            )
        cache = make_cache(store, retry_initial=0.01, retry_max=0.05, close_may_fail=True)
        cache["k"] = "slow"
        # The writer's COMMIT is running on the server: the connection dies under it.
        wait_until(lambda: sleeping_backends(direct) == 1, message="the COMMIT never started")
        proxy.cut()
        wait_until(lambda: cache.stats.retries > 0, message="the writer never saw the failure")
        proxy.restore()
        del cache["k"]
        cache.flush()  # ok: the delete is committed
        # Were the in-doubt COMMIT still running, let it finish on the server.
        wait_until(
            lambda: sleeping_backends(direct) == 0, timeout=TIMEOUT, message="still committing"
        )
        with direct.connect() as conn:
            rows = conn.exec_driver_sql(f'SELECT key, value FROM "{name}"').fetchall()
        assert rows == [], f"the acknowledged, flushed delete of 'k' was undone: {rows}"
    finally:
        proxy.close()
        store.close()
        with direct.begin() as conn:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{name}_fn"()')
        direct.dispose()


def sleeping_sessions(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.PROCESSLIST "
                "WHERE DB = 'test' AND STATE = 'User sleep'"
            ).scalar_one()
        )


def test_mariadb_a_flushed_delete_comes_after_the_lost_connections_session_has_ended(
    make_cache: Any,
) -> None:
    # MariaDB has no deferred trigger to hold a COMMIT: a write sleeping in a trigger stands
    # in for the old session still at work when the writer lost its connection.
    direct = make_engine(mariadb_url())
    proxy = CuttableProxy(3306)
    name = f"doubt_{uuid.uuid4().hex[:12]}"
    store = SQLAlchemyStore(f"mysql+pymysql://root@127.0.0.1:{proxy.port}/test", name)
    try:
        with direct.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TRIGGER `{name}_t` BEFORE INSERT ON `{name}` FOR EACH ROW "
                "IF LOCATE('slow', NEW.value) > 0 THEN DO SLEEP(10); END IF"
            )
        cache = make_cache(store, retry_initial=0.01, retry_max=0.05, close_may_fail=True)
        cache["k"] = "slow"
        wait_until(lambda: sleeping_sessions(direct) == 1, message="the write never started")
        proxy.cut()
        wait_until(lambda: cache.stats.retries > 0, message="the writer never saw the failure")
        proxy.restore()
        del cache["k"]
        cache.flush()
        assert sleeping_sessions(direct) == 0, (
            "the delete was written while the lost connection's session was still at work"
        )
        with direct.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT `key`, value FROM `{name}`").fetchall()
        assert rows == [], f"the acknowledged, flushed delete of 'k' was undone: {rows}"
    finally:
        proxy.close()
        store.close()
        with direct.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}`")
        direct.dispose()
