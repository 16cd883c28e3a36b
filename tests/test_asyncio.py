"""lazycache.aio: the awaitable API, on both cores, over the real SQLite, PostgreSQL, MariaDB and Redis.

Each test runs its scenario with `helpers.run_async` (no pytest plugin needed), once on
asyncio's event loop and once on uvloop's. Stores are the real ones `lazycache.aio.open` makes
from an async URL; a `Gate` holds one of the store's calls at its start (the real call then
runs), so that tests synchronise on events, never on timing.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import TIMEOUT, require_module, run_async
from services import POSTGRES_URL, delete_redis_keys, mariadb_url, postgres_url, redis_url

import lazycache.aio as aio
from lazycache import BackpressureError, FlushError
from lazycache.aio import AsyncLazyWriterCache, sync_url

require_module("greenlet")  # SQLAlchemy's asyncio engines (the AsyncEngine tests)

pytestmark = pytest.mark.usefixtures("loop_kind")

STORES = ["sqlite", "postgresql", "mariadb", "redis"]
SQL = ["sqlite", "postgresql", "mariadb"]


class Target:
    """One store for one test: an async URL, a unique table or prefix, caches closed at teardown."""

    def __init__(self, kind: str, url: str, impl: str) -> None:
        self.kind = kind
        self.url = url
        self.impl = impl
        self.table = f"lcaio_{uuid.uuid4().hex[:12]}"
        self.caches: list[Any] = []

    async def open(self, **options: Any) -> AsyncLazyWriterCache[Any, Any]:
        options.setdefault("write_interval", 3600.0)  # the tests flush; the writer stays idle
        options.setdefault("implementation", self.impl)
        cache = await aio.open(self.url, self.table, **options)
        self.caches.append(cache)
        return cache

    def teardown(self) -> None:
        for cache in self.caches:
            try:
                cache.close(flush=False)
            except FlushError:
                pass
            cache.store.close()
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.url)
            delete_redis_keys(client, f"{self.table}:")
            client.close()
            return
        import sqlalchemy as sa

        engine = sa.create_engine(sync_url(self.url))
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.table}")
        engine.dispose()


def async_url(kind: str, tmp_path: Any) -> str:
    if kind == "sqlite":
        require_module("aiosqlite")
        return f"sqlite+aiosqlite:///{tmp_path / 'aio.db'}"
    if kind == "postgresql":
        require_module("asyncpg")
        return postgres_url().replace("+psycopg", "+asyncpg")
    if kind == "mariadb":
        require_module("aiomysql")
        return mariadb_url().replace("+pymysql", "+aiomysql")
    return redis_url()


@pytest.fixture(params=STORES)
def target(request: pytest.FixtureRequest, impl: str, tmp_path: Any) -> Iterator[Target]:
    made = Target(request.param, async_url(request.param, tmp_path), impl)
    yield made
    made.teardown()


@pytest.fixture(params=SQL)
def sql_target(request: pytest.FixtureRequest, impl: str, tmp_path: Any) -> Iterator[Target]:
    made = Target(request.param, async_url(request.param, tmp_path), impl)
    yield made
    made.teardown()


class Gate:
    """Holds the next calls of a store method at their start until `release` is set; counts calls."""

    def __init__(self, store: Any, method: str) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.arguments: list[tuple[Any, ...]] = []  # each call's, in the order they came
        self._came = threading.Condition()
        if method == "load_many" and store.reports_ttls:
            method = "load_many_with_ttls"  # what a read-through calls on such a store
        inner = getattr(store, method)

        def gated(*args: Any) -> Any:
            with self._came:
                self.calls += 1
                self.arguments.append(args)
                self._came.notify_all()
            self.entered.set()
            assert self.release.wait(TIMEOUT * 2), "the test never released the gate"
            return inner(*args)

        setattr(store, method, gated)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, TIMEOUT), "the gated call never came"

    async def wait_calls(self, count: int) -> None:
        def wait() -> bool:
            with self._came:
                return self._came.wait_for(lambda: self.calls >= count, TIMEOUT)

        assert await asyncio.to_thread(wait), f"{count} calls never came ({self.calls} did)"


async def stored_elsewhere(target: Target, values: dict[str, Any]) -> None:
    """Writes values to the store through another cache, flushed and closed."""
    async with await target.open() as other:
        for key, value in values.items():
            await other.aset(key, value)


# ----------------------------------------------------------------------------- reads


def test_aget_reads_through_once_then_serves_memory(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"a": {"n": 1}})
        cache = await target.open()
        assert await cache.aget("a") == {"n": 1}
        assert await cache.aget("a") == {"n": 1}
        assert await cache.aget("absent", "dflt") == "dflt"
        stats = cache.stats
        assert (stats.loads, stats.hits, stats.misses) == (1, 1, 2)
        assert cache.pending == 0  # a loaded value is clean

    run_async(scenario)


def test_aget_many_returns_found_keys_in_order_with_one_store_call(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"a": 1, "b": 2, "c": 3})
        cache = await target.open()
        cache["d"] = 4
        gate = Gate(cache.store, "load_many")
        gate.release.set()
        got = await cache.aget_many(["c", "x", "d", "a", "b"])
        assert list(got.items()) == [("c", 3), ("d", 4), ("a", 1), ("b", 2)]
        assert gate.calls == 1
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
        assert gate.calls == 1  # now all from memory

    run_async(scenario)


def test_concurrent_misses_of_a_key_from_tasks_and_threads_share_one_load(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"hot": "v"})
        cache = await target.open()
        gate = Gate(cache.store, "load_many")
        tasks = [asyncio.create_task(cache.aget("hot")) for _ in range(50)]
        await asyncio.sleep(0)  # every task has run up to its await
        threads = [asyncio.create_task(asyncio.to_thread(cache.get, "hot")) for _ in range(2)]
        await gate.wait_entered()
        while cache.stats.misses < 52:  # the threads have missed too, and wait on the load
            await asyncio.sleep(0.001)
        gate.release.set()
        assert await asyncio.gather(*tasks, *threads) == ["v"] * 52
        assert gate.calls == 1
        assert cache.stats.loads == 1

    run_async(scenario)


def test_misses_of_many_keys_in_one_pass_of_the_loop_load_in_one_store_call(target: Target) -> None:
    async def scenario() -> None:
        stored = {f"k{i}": i for i in range(40)}
        await stored_elsewhere(target, stored)
        cache = await target.open()
        gate = Gate(cache.store, "load_many")
        gate.release.set()
        keys = [*stored, "absent", "k0"]  # every reader's first step runs in the same pass
        got = await asyncio.gather(*(cache.aget(key, "none") for key in keys))
        assert got == [*stored.values(), "none", 0]
        assert [sorted(args[0]) for args in gate.arguments] == [sorted([*stored, "absent"])]
        assert cache.stats.loads == 40 and cache.pending == 0
        assert await cache.aget_many(keys) == stored  # now from memory, but for "absent"
        assert [sorted(args[0]) for args in gate.arguments[1:]] == [["absent"]]

    run_async(scenario)


def test_a_batch_of_misses_waits_for_a_key_a_thread_loads_and_loads_the_others_once(
    target: Target,
) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"a": 1, "b": 2, "c": 3})
        cache = await target.open()
        gate = Gate(cache.store, "load_many")
        thread = asyncio.create_task(asyncio.to_thread(cache.get, "a"))
        await gate.wait_entered()  # the thread's load of "a" is held at its start
        readers = asyncio.gather(cache.aget("a"), cache.aget("b"), cache.aget_many(["c", "a"]))
        await gate.wait_calls(2)  # the readers' load: "a" is the thread's
        gate.release.set()
        assert await readers == [1, 2, {"c": 3, "a": 1}]
        assert await thread == 1
        assert [sorted(args[0]) for args in gate.arguments] == [["a"], ["b", "c"]]
        assert cache.stats.loads == 3 and cache._loading == {} and cache._aloads == {}

    run_async(scenario)


def test_a_failed_load_in_a_thread_fails_its_key_only_in_a_batch_that_waited_for_it(
    sql_target: Target,
) -> None:
    import sqlalchemy as sa

    async def scenario() -> None:
        await stored_elsewhere(sql_target, {"bad": 0, "good": 1})
        engine = sa.create_engine(sync_url(sql_target.url))
        with engine.begin() as conn:  # a row another program wrote, that the serializer refuses
            table = sa.Table(sql_target.table, sa.MetaData(), autoload_with=conn)
            conn.execute(table.update().where(table.c.key == "bad").values(value="not json"))
        engine.dispose()
        cache = await sql_target.open()
        gate = Gate(cache.store, "load_many")
        thread = asyncio.create_task(asyncio.to_thread(cache.get, "bad"))
        await gate.wait_entered()
        readers = asyncio.gather(cache.aget("bad"), cache.aget("good"), return_exceptions=True)
        await gate.wait_calls(2)
        gate.release.set()
        bad, good = await readers
        assert good == 1
        with pytest.raises(type(bad)):
            await thread  # the thread's own load failed: the batch got its error, for "bad" only
        assert isinstance(bad, ValueError), bad
        assert "bad" not in cache._keys() and cache._loading == {} and cache._aloads == {}

    run_async(scenario)


def test_cancelled_aget_leaves_the_load_whole_and_cached(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"k": 7})
        cache = await target.open()
        gate = Gate(cache.store, "load_many")
        reader = asyncio.create_task(cache.aget("k"))
        await gate.wait_entered()
        (load,) = cache._aloads.values()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        gate.release.set()
        assert await load == 7  # the load went on, and completed
        assert cache._aloads == {} and cache._loading == {}
        assert await cache.aget("k") == 7
        assert gate.calls == 1 and cache.pending == 0

    run_async(scenario)


def test_a_store_error_on_a_read_through_reaches_every_awaiting_task(sql_target: Target) -> None:
    import sqlalchemy as sa

    async def scenario() -> None:
        cache = await sql_target.open()
        engine = sa.create_engine(sync_url(sql_target.url))
        with engine.begin() as conn:  # the store's table is gone: every load fails
            conn.exec_driver_sql(f"DROP TABLE {sql_target.table}")
        engine.dispose()
        outcomes = await asyncio.gather(
            cache.aget("k"), cache.aget("k"), cache.aget_many(["j"]), return_exceptions=True
        )
        assert all(isinstance(outcome, sa.exc.DBAPIError) for outcome in outcomes), outcomes
        assert "k" not in cache._keys() and cache._aloads == {}

    run_async(scenario)


def test_aget_of_a_deleted_key_returns_the_default_without_loading(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"k": 1})
        cache = await target.open()
        cache.discard("k")
        gate = Gate(cache.store, "load_many")
        gate.release.set()
        assert await cache.aget("k", "gone") == "gone"
        assert await cache.aget_many(["k"]) == {}
        assert gate.calls == 0

    run_async(scenario)


def test_aget_without_read_through_never_touches_the_store(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"k": 1})
        cache = await target.open(read_through=False)
        gate = Gate(cache.store, "load_many")
        gate.release.set()
        assert await cache.aget("k") is None
        assert await cache.aget_many(["k"]) == {}
        assert gate.calls == 0

    run_async(scenario)


# ----------------------------------------------------------------------------- writes


def test_aupdate_entry_reads_through_then_writes_back(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"n": 41})
        cache = await target.open()
        assert await cache.aupdate_entry("n", lambda v: v + 1) == 42
        assert await cache.aupdate_entry("fresh", lambda v: v + 1, 0) == 1
        with pytest.raises(KeyError):
            await cache.aupdate_entry("nope", lambda v: v)
        await cache.aflush()
        assert dict(cache.store.load_many(["n", "fresh", "nope"])) == {"n": 42, "fresh": 1}

    run_async(scenario)


def test_aset_under_a_full_backlog_waits_while_the_loop_runs(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open(max_pending=2, on_full="block", batch_size=2)
        gate = Gate(cache.store, "write")
        cache["a"] = 1
        cache["b"] = 2
        flushing = asyncio.create_task(cache.aflush())
        await gate.wait_entered()  # a and b are in flight: the backlog is full
        setter = asyncio.create_task(cache.aset("c", 3))
        ticks = 0
        while ticks < 20:  # the loop keeps running other tasks while aset waits
            await asyncio.sleep(0)
            ticks += 1
        assert not setter.done() and "c" not in cache._keys()
        gate.release.set()
        await setter
        await flushing
        await cache.aflush()
        assert dict(cache.store.load_many(["a", "b", "c"])) == {"a": 1, "b": 2, "c": 3}

    run_async(scenario)


def test_aset_refuses_after_block_timeout_and_keeps_nothing(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open(max_pending=1, on_full="block", block_timeout=0.05)
        gate = Gate(cache.store, "write")
        cache["a"] = 1
        flushing = asyncio.create_task(cache.aflush())
        await gate.wait_entered()
        with pytest.raises(BackpressureError, match="'b'"):
            await cache.aset("b", 2)
        assert "b" not in cache._keys()
        gate.release.set()
        await flushing

    run_async(scenario)


def test_cancelled_aset_while_waiting_for_room_writes_nothing(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open(max_pending=1, on_full="block")
        gate = Gate(cache.store, "write")
        cache["a"] = 1
        flushing = asyncio.create_task(cache.aflush())
        await gate.wait_entered()
        setter = asyncio.create_task(cache.aset("b", 2))
        await asyncio.sleep(0)
        setter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await setter
        gate.release.set()
        await flushing
        await cache.aflush()
        assert "b" not in cache._keys()
        assert dict(cache.store.load_many(["a", "b"])) == {"a": 1}

    run_async(scenario)


def test_aset_under_write_through_waits_off_the_loop(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open(max_pending=1, on_full="write-through")
        gate = Gate(cache.store, "write")
        cache["a"] = 1
        flushing = asyncio.create_task(cache.aflush())
        await gate.wait_entered()  # the backlog is full, and the store busy
        setter = asyncio.create_task(cache.aset("b", 2))
        for _ in range(20):  # the loop keeps running other tasks meanwhile
            await asyncio.sleep(0)
        assert not setter.done()
        gate.release.set()
        await setter
        await flushing
        await cache.aflush()
        assert cache.pending == 0
        assert dict(cache.store.load_many(["a", "b"])) == {"a": 1, "b": 2}

    run_async(scenario)


# ----------------------------------------------------------------------------- flush, close, failures


def test_cancelled_aflush_leaves_every_entry_written_or_pending(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open(batch_size=3)
        gate = Gate(cache.store, "write")
        for i in range(10):
            cache[f"k{i}"] = i
        flushing = asyncio.create_task(cache.aflush())
        await gate.wait_entered()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert cache.pending == 10  # nothing acknowledged as written while the batch is held
        gate.release.set()
        result = await cache.aflush()
        assert result.ok and cache.pending == 0
        keys = [f"k{i}" for i in range(10)]
        assert dict(cache.store.load_many(keys)) == {f"k{i}": i for i in range(10)}

    run_async(scenario)


def test_aflush_isolates_a_poisoned_entry_and_writes_the_rest(target: Target) -> None:
    async def scenario() -> None:
        rejected: list[Any] = []
        cache = await target.open(on_write_error=lambda key, value, exc: rejected.append(key))
        cache["good"] = 1
        cache["bad"] = {1, 2}  # a set is not JSON: the store rejects it for good
        cache["also good"] = 2
        with pytest.raises(FlushError) as raised:
            await cache.aflush()
        assert raised.value.result.poisoned_keys == ("bad",)
        assert rejected == ["bad"] and "bad" in cache.write_errors
        assert dict(cache.store.load_many(["good", "bad", "also good"])) == {
            "good": 1,
            "also good": 2,
        }

    run_async(scenario)


def test_aflush_with_timeout_returns_by_its_deadline_when_the_store_hangs(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open()
        gate = Gate(cache.store, "write")
        cache["a"] = 1
        with pytest.raises(FlushError) as raised:
            await cache.aflush(timeout=0.1)
        assert raised.value.result.failed_keys == ("a",)
        assert cache.pending == 1
        gate.release.set()
        assert (await cache.aflush()).ok
        assert cache.store.load_many(["a"]) == {"a": 1}

    run_async(scenario)


def test_async_with_flushes_and_closes(target: Target) -> None:
    async def scenario() -> None:
        async with await target.open() as cache:
            cache["a"] = 1
            await cache.aset("b", 2)
        assert cache.closed and cache.pending == 0
        async with await target.open() as fresh:
            assert await fresh.aget_many(["a", "b"]) == {"a": 1, "b": 2}

    run_async(scenario)


def test_aclose_names_unwritten_keys_and_keeps_them(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open()
        gate = Gate(cache.store, "write")
        cache["a"] = 1
        with pytest.raises(FlushError) as raised:
            await cache.aclose(timeout=0.1)
        assert raised.value.result.failed_keys == ("a",)
        assert cache.closed and cache.pending == 1
        gate.release.set()
        assert (await cache.aflush()).ok

    run_async(scenario)


def test_a_lost_postgresql_connection_is_retried_within_the_flush_deadline(impl: str) -> None:
    require_module("asyncpg")
    postgres_url()
    name = f"lcaio_{uuid.uuid4().hex[:12]}"
    target = Target("postgresql", POSTGRES_URL.replace("+psycopg", "+asyncpg"), impl)
    target.table = name

    async def scenario() -> None:
        cache = await target.open(engine_options={"connect_args": {"application_name": name}})
        cache["a"] = 1
        await cache.aflush()  # the pool holds a connection now
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        cache["b"] = 2
        assert (await cache.aflush(timeout=TIMEOUT)).ok
        assert cache.stats.retries >= 1
        assert dict(cache.store.load_many(["a", "b"])) == {"a": 1, "b": 2}

    try:
        run_async(scenario)
    finally:
        target.teardown()


# ----------------------------------------------------------------------------- opening


def test_open_takes_an_async_engine_and_leaves_it_to_its_owner(sql_target: Target) -> None:
    from sqlalchemy import column, select, table
    from sqlalchemy.ext.asyncio import create_async_engine

    async def scenario() -> None:
        engine = create_async_engine(sql_target.url)
        try:
            cache = await aio.open(engine, sql_target.table, implementation=sql_target.impl)
            sql_target.caches.append(cache)
            async with cache:
                await cache.aset("a", {"x": 1})
            async with engine.connect() as conn:  # the caller's engine still works
                query = select(column("key")).select_from(table(sql_target.table))
                rows = (await conn.execute(query)).all()
            assert [row[0] for row in rows] == ["a"]
        finally:
            await engine.dispose()

    run_async(scenario)


def test_open_takes_a_redis_asyncio_client(impl: str) -> None:
    import redis.asyncio

    target = Target("redis", redis_url(), impl)

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(target.url)
        try:
            async with await aio.open(client, target.table, implementation=impl) as cache:
                target.caches.append(cache)
                await cache.aset("a", 1)
            assert await client.get(f"{target.table}:a") == b"1"
        finally:
            await client.aclose()

    try:
        run_async(scenario)
    finally:
        target.teardown()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql+asyncpg://u:secret@h/db", "postgresql+psycopg://u:secret@h/db"),
        ("postgresql+psycopg_async://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+pysqlite:///x.db"),
        ("mysql+aiomysql://root@h/db", "mysql+pymysql://root@h/db"),
        ("mariadb+asyncmy://root@h/db", "mariadb+pymysql://root@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_sync_url_names_the_synchronous_twin_of_the_driver(given: str, expected: str) -> None:
    assert sync_url(given).render_as_string(hide_password=False) == expected


def test_sync_methods_stay_available_and_in_memory(target: Target) -> None:
    async def scenario() -> None:
        cache = await target.open()
        cache["a"] = 1
        assert cache["a"] == 1 and len(cache) == 1 and list(cache) == ["a"]
        cache.discard("a")
        assert "a" not in cache._keys()
        assert cache.implementation == target.impl
        assert isinstance(cache, aio.async_implementation_class(target.impl))

    run_async(scenario)


def test_a_cache_made_directly_over_a_store_of_ones_own_is_awaitable(
    impl: str, tmp_path: Any
) -> None:
    from lazycache import MemoryStore

    cls = aio.async_implementation_class(impl)

    async def scenario() -> None:
        store = MemoryStore()
        store.data["k"] = 1
        plain = cls(store, write_interval=3600.0)
        journaled = cls(store, write_interval=3600.0, journal=str(tmp_path / "journal"))
        for cache in (plain, journaled):
            assert cache.implementation == impl
            assert await cache.aget("k") == 1
            await cache.aset("j", 2)
        async with journaled, plain:
            pass
        assert store.data == {"k": 1, "j": 2}

    run_async(scenario)


def test_aupdate_entry_whose_fn_reads_another_missed_key_completes(target: Target) -> None:
    async def scenario() -> None:
        await stored_elsewhere(target, {"price": 5, "qty": 3})
        cache = await target.open()
        total = await cache.aupdate_entry("qty", lambda q: q * cache.get("price"))
        assert total == 15 and cache.stats.loads == 2

    run_async(scenario)
