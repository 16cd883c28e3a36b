"""os.fork(): the child never uses nor closes a connection of the parent's.

A forked child inherits the parent's open connections: the same server sessions, on
the same sockets. Used by both processes, requests and replies mix (each may read the
other's rows, raise, or hang); closed by the child, they end for the parent too. These
tests fork for real, with caches over PostgreSQL, MariaDB, SQLite and Redis, and check on
the server which session each process uses (`pg_backend_pid()`, `CONNECTION_ID()`,
`CLIENT ID`; for SQLite, which process opened the connection), that the parent's sessions
outlive the child's `close()`, and that both processes reading at once each get their own
rows. Parent and child synchronise on pipes; the child leaves by os._exit.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import traceback
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from helpers import TIMEOUT, run_in_forked_child, wait_until
from redis_cluster import Cluster, redis_cluster  # noqa: F401  (fixture)
from services import (
    Database,
    database,  # noqa: F401  (fixture)
    delete_redis_keys,
    postgres_url,
    redis_client,
    redis_url,
    unique_name,
)

import lazycache
from lazycache import open_redis
from lazycache.cache import implementation_class
from lazycache.coherence.postgres import PostgresNotifyCoherence
from lazycache.coherence.redis import RedisCoherence
from lazycache.stores.redis import RedisStore
from lazycache.stores.sqlalchemy import SQLAlchemyStore, make_engine

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform"),
    # Python 3.12+ warns that forking a multi-threaded process may deadlock: forking is what is tested.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

ONE_CONNECTION = {"pool_size": 1, "max_overflow": 0}
"""A pool of one connection: the parent's session is then a known one."""

QUIET = {"write_interval": 3600, "prune_interval": 3600}
"""The writer runs only on flush(), so that no background write takes a connection by surprise."""

READS = 200
"""Keys each process reads through at once in the concurrent tests."""

SESSION_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mariadb": "SELECT CONNECTION_ID()",
    "sqlite": None,
}


# ----------------------------------------------------------------------------- helpers


def race_in_forked_child(
    child: Callable[[], Any], parent: Callable[[], Any], timeout: float = TIMEOUT * 4
) -> tuple[Any, Any]:
    """Forks; child() (in the child) and parent() (here) start together: the child says it is
    ready, the parent says go, each on a pipe. Returns (what child() returned, what parent()
    returned); the child's failure is re-raised as an AssertionError with its traceback. The
    child leaves by os._exit; one still running after timeout seconds is killed by its pid."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 70
        try:
            for fd in (ready_r, go_w, out_r):
                os.close(fd)
            os.write(ready_w, b"r")
            if os.read(go_r, 1) != b"g":  # the parent went away
                os._exit(71)
            try:
                payload: dict[str, Any] = {"ok": True, "result": child()}
            except BaseException:  # reported to the parent below
                payload = {"ok": False, "error": traceback.format_exc()}
            view = memoryview(json.dumps(payload, default=repr).encode())
            while view:
                view = view[os.write(out_w, view) :]
            status = 0
        finally:
            os._exit(status)
    for fd in (ready_w, go_r, out_w):
        os.close(fd)
    deadline = time.monotonic() + timeout
    finished = False
    try:
        assert select.select([ready_r], [], [], timeout)[0], "the forked child never got ready"
        assert os.read(ready_r, 1) == b"r"
        os.write(go_w, b"g")
        mine = parent()
        chunks = []
        while True:
            if not select.select([out_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"the forked child hung for {timeout}s")
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        finished = True
    finally:
        if not finished:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (ready_r, go_w, out_r):
            os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the child died: {status}"
    report = json.loads(b"".join(chunks))
    if not report["ok"]:
        raise AssertionError(f"the forked child failed:\n{report['error']}")
    return report["result"], mine


def record_openers(engine: Any) -> None:
    """Every new DBAPI connection of `engine` remembers which process opened it."""

    @sa.event.listens_for(engine, "connect")
    def _opened(_dbapi_connection: Any, record: Any) -> None:
        record.info["opened_by"] = os.getpid()


def session_of(engine: Any, kind: str) -> list[Any]:
    """[server session id (None for SQLite), pid of the process that opened the connection]."""
    with engine.connect() as conn:
        sql = SESSION_SQL[kind]
        server = conn.exec_driver_sql(sql).scalar() if sql else None
        return [server, conn.connection.info.get("opened_by")]


def session_ids(conn: Any, kind: str) -> set[int]:
    """The server's open sessions."""
    sql = {
        "postgresql": "SELECT pid FROM pg_stat_activity",
        "mariadb": "SELECT ID FROM information_schema.PROCESSLIST",
    }[kind]
    return {int(row[0]) for row in conn.exec_driver_sql(sql)}


def read_own_rows(cache: Any, prefix: str) -> list[Any]:
    """Reads prefix0..prefix{READS-1} through the store; returns what was not that key's own row."""
    wrong = []
    for i in range(1, READS):
        key = f"{prefix}{i}"
        value = cache[key]  # not in memory: a read through the store, on a connection
        if value != f"row {key}":
            wrong.append([key, value])
    return wrong


# ----------------------------------------------------------------------------- SQL databases


@pytest.mark.parametrize("engine_from", ["url", "engine"])
def test_child_uses_a_session_of_its_own_and_its_close_ends_none_of_the_parents(
    database: Database,  # noqa: F811  (fixture)
    impl: str,
    engine_from: str,
) -> None:
    table = database.table_name()
    SQLAlchemyStore(database.engine, table).write([("stored", "s")], [])
    if engine_from == "url":  # the cache owns the engine: the child's close() disposes of it
        cache = lazycache.open(
            database.url, table, implementation=impl, engine_options=ONE_CONNECTION, **QUIET
        )
    else:  # the application's engine, passed in: the child's cache must not use its parent's pool either
        engine = make_engine(database.url, **ONE_CONNECTION)
        cache = implementation_class(impl)(SQLAlchemyStore(engine, table), **QUIET)
    engine = cache.store.engine
    try:
        record_openers(engine)
        cache["p"] = "parent"
        cache.flush()
        parent_session = session_of(engine, database.kind)

        def child() -> dict[str, Any]:
            session = session_of(engine, database.kind)
            stored = cache["stored"]  # read through
            cache["c"] = "child"
            result = cache.close()  # flushes c; disposes of the engine if the cache owns it
            return {
                "session": session,
                "pid": os.getpid(),
                "stored": stored,
                "written": result.written,
            }

        report = run_in_forked_child(child)
        assert report["stored"] == "s" and report["written"] == 1
        assert report["session"][1] == report["pid"]  # a connection the child opened itself
        if SESSION_SQL[database.kind]:
            assert report["session"][0] != parent_session[0]  # and a server session of its own
        # The parent's session outlived the child's close(), and serves it as before.
        assert session_of(engine, database.kind) == parent_session
        assert cache["c"] == "child"  # read through: the child's write reached the database
        cache["p2"] = "parent again"
        assert cache.flush().written == 1
    finally:
        cache.close()
        if engine_from == "engine":
            engine.dispose()


def holding(lock: Any) -> Callable[[], None]:
    """Holds `lock` in a thread of its own (as a parent thread busy at the fork would); returns
    what lets it go and waits for the thread."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(TIMEOUT * 4)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(TIMEOUT)

    def let_go() -> None:
        release.set()
        holder.join()

    return let_go


@pytest.mark.parametrize("database", ["postgresql", "mariadb"], indirect=True)
def test_child_settles_the_in_doubt_sessions_it_inherited_though_a_parent_thread_was_settling(
    database: Database,  # noqa: F811  (fixture)
    impl: str,
) -> None:
    table = database.table_name()
    cache = implementation_class(impl)(SQLAlchemyStore(database.url, table), **QUIET)
    # A write whose connection was lost: its server session may still commit, so every
    # later write waits until it has ended (`InDoubtSessions`). Here, a session of its own.
    other = database.new_engine()
    doubtful = other.connect()
    session = doubtful.exec_driver_sql(SESSION_SQL[database.kind]).scalar()
    store = cache.store
    store._in_doubt.add(session)
    let_go = holding(store._in_doubt._settle_lock)  # the writer thread, settling at the fork
    try:

        def child() -> int:
            cache["c"] = "child"
            return cache.close().written  # ends the session first, then writes

        assert run_in_forked_child(child) == 1
    finally:
        let_go()
    with other.connect() as conn:  # the child ended the doubtful session
        assert session not in session_ids(conn, database.kind)
    doubtful.invalidate()  # (its session is gone: nothing to roll back)
    assert cache["c"] == "child"
    cache["p"] = "parent"
    assert cache.flush().written == 1  # the parent's own settle finds it gone too
    cache.close()


def test_child_writes_to_a_memory_store_a_parent_thread_was_writing_to_at_the_fork(
    impl: str,
) -> None:
    store = lazycache.MemoryStore()
    cache = implementation_class(impl)(store, **QUIET)
    let_go = holding(store._lock)
    try:

        def child() -> int:
            cache["c"] = "child"
            return cache.close().written

        assert run_in_forked_child(child) == 1
    finally:
        let_go()
    cache.close()


def test_parent_and_child_reading_at_once_each_get_their_own_rows(
    database: Database,  # noqa: F811  (fixture)
    impl: str,
) -> None:
    table = database.table_name()
    rows = [(f"{who}{i}", f"row {who}{i}") for who in ("p", "c") for i in range(READS)]
    SQLAlchemyStore(database.engine, table).write(rows, [])
    cache = lazycache.open(
        database.url, table, implementation=impl, engine_options=ONE_CONNECTION, **QUIET
    )
    try:
        assert cache["p0"] == "row p0"  # the parent's one connection is open at the fork
        child_wrong, parent_wrong = race_in_forked_child(
            lambda: read_own_rows(cache, "c"), lambda: read_own_rows(cache, "p")
        )
        assert child_wrong == [] and parent_wrong == []
    finally:
        cache.close()


# ----------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_prefix() -> Any:
    """A key prefix of this test's own on the local Redis; its keys are deleted at teardown."""
    prefix = unique_name() + ":"
    yield prefix
    client = redis_client()
    try:
        delete_redis_keys(client, prefix)
    finally:
        client.close()


@pytest.fixture
def redis_cache(impl: str, redis_prefix: str) -> Any:
    """redis_cache(client_kind): a quiet cache over the local Redis, closed at teardown, from
    a URL ("url": the store's own pooled client) or over a client of the application's made
    with single_connection_client=True ("single_connection": one dedicated connection,
    outside redis-py's pool and its pid checks; closed at teardown too)."""
    made: list[tuple[Any, Any]] = []

    def make(client_kind: str) -> Any:
        app_client = None if client_kind == "url" else redis_client(single_connection_client=True)
        cache = open_redis(
            app_client or redis_url(),
            prefix=redis_prefix,
            coherence=False,
            implementation=impl,
            **QUIET,
        )
        made.append((cache, app_client))
        return cache

    yield make
    for cache, app_client in made:
        cache.close()
        if app_client is not None:
            app_client.close()


def client_ids_on_server() -> set[int]:
    """The ids of every client connected to the local Redis now."""
    observer = redis_client()
    try:
        return {int(client["id"]) for client in observer.client_list()}
    finally:
        observer.close()


@pytest.mark.parametrize("client_kind", ["url", "single_connection"])
def test_child_uses_a_redis_connection_of_its_own_and_leaves_the_parents_open(
    redis_cache: Any, client_kind: str
) -> None:
    cache = redis_cache(client_kind)
    client = cache.store.client
    cache["p"] = "parent"
    cache.flush()
    parent_id = client.client_id()

    def child() -> dict[str, Any]:
        mine = client.client_id()
        cache["c"] = "child"
        result = cache.close()  # closes the client if the store made it
        return {"id": mine, "written": result.written}

    report = run_in_forked_child(child)
    assert report["written"] == 1
    assert report["id"] != parent_id
    assert parent_id in client_ids_on_server()  # the parent's connection is still open
    assert client.client_id() == parent_id
    assert cache["c"] == "child"


@pytest.mark.parametrize("client_kind", ["url", "single_connection"])
def test_child_does_not_wait_for_a_redis_lock_a_parent_thread_held_at_the_fork(
    redis_cache: Any, client_kind: str
) -> None:
    cache = redis_cache(client_kind)
    client = cache.store.client
    cache["p"] = "parent"
    cache.flush()
    # A parent thread inside redis-py at the fork: taking a connection from the pool
    # (under the pool's lock), or running a command on the dedicated connection.
    lock = client.connection_pool._lock if client_kind == "url" else client.single_connection_lock
    let_go = holding(lock)
    try:

        def child() -> int:
            cache["c"] = "child"
            return cache.close().written  # a command on a connection of the child's own

        assert run_in_forked_child(child) == 1
    finally:
        let_go()
    assert cache["c"] == "child"


@pytest.mark.parametrize("client_kind", ["url", "single_connection"])
def test_parent_and_child_reading_redis_at_once_each_get_their_own_values(
    redis_cache: Any, redis_prefix: str, client_kind: str
) -> None:
    writer = redis_client()
    try:
        writer.mset(
            {
                f"{redis_prefix}{who}{i}": json.dumps(f"row {who}{i}")
                for who in ("p", "c")
                for i in range(READS)
            }
        )
    finally:
        writer.close()
    cache = redis_cache(client_kind)
    assert cache["p0"] == "row p0"  # the parent's connection is open at the fork
    child_wrong, parent_wrong = race_in_forked_child(
        lambda: read_own_rows(cache, "c"), lambda: read_own_rows(cache, "p")
    )
    assert child_wrong == [] and parent_wrong == []


def test_child_on_a_redis_cluster_connects_to_every_node_afresh(
    impl: str,
    redis_cluster: Cluster,  # noqa: F811  (fixture)
) -> None:
    prefix = unique_name() + ":"
    cache = open_redis(
        redis_cluster.url, prefix=prefix, coherence=False, implementation=impl, **QUIET
    )
    client = cache.store.client

    def ids() -> dict[str, int]:
        return {
            node.name: client.get_redis_connection(node).client_id()
            for node in client.get_primaries()
        }

    try:
        for i in range(30):  # keys on every node
            cache[f"p{i}"] = i
        cache.flush()
        parent_ids = ids()

        def child() -> dict[str, Any]:
            mine = ids()
            for i in range(30):
                cache[f"c{i}"] = i
            return {"ids": mine, "written": cache.close().written}

        report = run_in_forked_child(child)
        assert report["written"] == 30
        assert all(report["ids"][name] != parent_ids[name] for name in parent_ids)
        assert ids() == parent_ids  # the parent's connections outlived the child's close()
        assert [cache[f"c{i}"] for i in range(30)] == list(range(30))
    finally:
        cache.close()


# ----------------------------------------------------------------------------- coherence channels


def test_redis_channel_closed_in_the_child_leaves_the_parents_subscription(
    make_cache: Any, impl: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url(), redis_prefix)
    channel = RedisCoherence(store, unique_name("lcfork"))
    cache = make_cache(store, coherence=channel, owns_store=True, **QUIET)
    cache["k"] = "parent"
    cache.flush()
    assert channel.connected

    def child() -> bool:
        channel.close()  # the child's channel: must end nothing of the parent's
        return bool(cache.coherent)

    assert run_in_forked_child(child) is False  # the child reads through from then on
    other = redis_client()
    try:
        other.publish(channel.channel, '{"v":1,"from":"another","keys":["k"]}')
    finally:
        other.close()
    wait_until(lambda: channel.received >= 1 or channel.losses > 0)
    assert channel.losses == 0 and channel.connected and cache.coherent


def test_postgres_channel_closed_in_the_child_leaves_the_parents_connections(
    make_cache: Any, impl: str
) -> None:
    import psycopg

    pg = Database("postgresql", postgres_url())
    store = SQLAlchemyStore(pg.engine, pg.table_name())
    name = unique_name("lcfork").replace("-", "_")
    channel = PostgresNotifyCoherence(store, name)
    cache = make_cache(store, coherence=channel, **QUIET)
    try:
        cache["k"] = "parent"
        cache.flush()  # publishes: the channel's publishing connection is open at the fork
        published = channel.published
        assert channel.connected and published == 1

        def child() -> bool:
            channel.close()  # the child's channel: must end nothing of the parent's
            return bool(cache.coherent)

        assert run_in_forked_child(child) is False
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as other:
            other.execute(
                "SELECT pg_notify(%s, %s)", (name, '{"v":1,"from":"another","keys":["k"]}')
            )
        wait_until(lambda: channel.received >= 1 or channel.losses > 0)
        assert channel.losses == 0 and channel.connected  # the listener is the parent's still
        cache["k2"] = "parent again"
        cache.flush()  # publishes on the parent's publishing connection
        wait_until(lambda: channel.published == published + 1)
    finally:
        cache.close()
        pg.teardown()
