"""Coherence across real processes: two spawned processes (multiprocessing, start method
"spawn"), each with its own cache over one shared store and one invalidation channel,
driven by the test over pipes.

Run for Redis (RedisStore + RedisCoherence pub/sub) and PostgreSQL (SQLAlchemyStore +
PostgresNotifyCoherence LISTEN/NOTIFY), on each core:

* B reads k (and caches it); A writes k (its background writer commits and publishes
  it); B reads the new value within a bounded time (polled, with a deadline).
* B's own pending write of a key is not dropped by A's invalidation of that key; B
  commits after A, and then A reads B's value.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from typing import Any, Callable

import pytest
from helpers import TIMEOUT
from services import Database, delete_redis_keys, postgres_url, redis_client, redis_url, unique_name

SPAWN = multiprocessing.get_context("spawn")

START_TIMEOUT = 60.0
"""Seconds a spawned process may take to import everything and build its cache."""

VISIBLE_WITHIN = TIMEOUT
"""The bound asserted on "B sees A's write": A's write_interval (0.05 s) + publish + delivery, with ample slack."""

ABSENT = "<absent>"


# ----------------------------------------------------------------------------- the child process


def _build(spec: dict[str, Any]) -> Any:
    from lazycache.cache import implementation_class

    cls = implementation_class(spec["impl"])
    if spec["kind"] == "redis":
        from lazycache.coherence.redis import RedisCoherence
        from lazycache.stores.redis import RedisStore

        store = RedisStore(spec["url"], spec["prefix"], cluster=False)
        coherence = RedisCoherence(store, spec["channel"])
    else:
        from lazycache.coherence.postgres import PostgresNotifyCoherence
        from lazycache.stores.sqlalchemy import SQLAlchemyStore

        store = SQLAlchemyStore(spec["url"], spec["table"])
        coherence = PostgresNotifyCoherence(store, spec["channel"])
    return cls(store, coherence=coherence, write_interval=spec["write_interval"])


def _wait_for(cache: Any, key: str, expected: Any, timeout: float) -> float:
    started = time.monotonic()
    while True:
        value = cache.get(key, ABSENT)
        if value == expected:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"{key!r} is still {value!r} after {timeout}s, expected {expected!r}"
            )
        time.sleep(0.001)


def _wait_heard(cache: Any, messages: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while cache._coherence.received < messages:
        if time.monotonic() > deadline:
            raise AssertionError(f"heard {cache._coherence.received} messages, expected {messages}")
        time.sleep(0.001)
    return int(cache._coherence.received)


OPS: dict[str, Callable[..., Any]] = {
    "get": lambda cache, key: cache.get(key, ABSENT),
    "set": lambda cache, key, value: cache.__setitem__(key, value),
    "flush": lambda cache: cache.flush().written,
    "pending": lambda cache: cache.pending,
    "held": lambda cache, key: key in list(cache.keys()),  # in memory (no read-through)
    "published": lambda cache: cache._coherence.published,
    "wait_for": _wait_for,
    "wait_heard": _wait_heard,
    "coherent": lambda cache: cache.coherent,
}


def _child(conn: Any, spec: dict[str, Any]) -> None:
    try:
        cache = _build(spec)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        request = conn.recv()
        op, args = request[0], request[1:]
        if op == "stop":
            cache.close()
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", OPS[op](cache, *args)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


# ----------------------------------------------------------------------------- the test's side


class Peer:
    """A spawned process holding one cache; `call(op, *args)` runs an operation there."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.conn, child_conn = SPAWN.Pipe()
        self.process = SPAWN.Process(
            target=_child, args=(child_conn, spec), name=f"lazycache-{name}", daemon=True
        )
        self.process.start()
        child_conn.close()

    def ready(self) -> None:
        status, detail = self._receive(START_TIMEOUT)
        assert status == "ready", f"process {self.name} could not start:\n{detail}"
        assert detail != os.getpid()

    def _receive(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise AssertionError(f"process {self.name} did not answer within {timeout}s")
        return self.conn.recv()

    def call(self, op: str, *args: Any, timeout: float = TIMEOUT * 3) -> Any:
        self.conn.send((op, *args))
        status, result = self._receive(timeout)
        if status != "ok":
            raise AssertionError(f"in process {self.name}, {op}{args!r} failed:\n{result}")
        return result

    def stop(self) -> None:
        try:
            if self.process.is_alive():
                self.call("stop")
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()  # this process only, by its own handle
                self.process.join(5)
            self.conn.close()


@pytest.fixture(params=["redis", "postgresql"])
def shared(request: pytest.FixtureRequest, impl: str) -> Any:
    """The spec of a store and channel shared by the processes of one test, and a reader of the store."""
    kind = request.param
    name = unique_name("lcmp")
    if kind == "redis":
        spec = {
            "kind": "redis",
            "url": redis_url(),
            "prefix": name + ":",
            "channel": name + ":invalidate",
            "impl": impl,
        }
        client = redis_client()

        def stored(key: str) -> Any:
            import json

            data = client.get(spec["prefix"] + key)
            return ABSENT if data is None else json.loads(data)

        yield spec, stored
        delete_redis_keys(client, spec["prefix"])
        client.close()
    else:
        from lazycache.stores.sqlalchemy import SQLAlchemyStore

        database = Database("postgresql", postgres_url())
        table = database.table_name("lcmp")
        reader = SQLAlchemyStore(
            database.engine, table
        )  # creates the table before the processes race to
        spec = {
            "kind": "postgresql",
            "url": postgres_url(),
            "table": table,
            "channel": name.replace("-", "_"),
            "impl": impl,
        }
        yield spec, lambda key: reader.load_many([key]).get(key, ABSENT)
        reader.close()
        database.teardown()


@pytest.fixture
def peers(shared: Any) -> Any:
    spec, stored = shared
    started = []

    def start(**writer_intervals: float) -> Any:
        made = [
            Peer(name, {**spec, "write_interval": interval})
            for name, interval in writer_intervals.items()
        ]
        started.extend(made)
        for peer in made:  # spawned together, awaited together: imports overlap
            peer.ready()
        return made

    yield start, stored
    for peer in started:
        peer.stop()


def test_two_processes_stay_coherent(peers) -> None:
    start, stored = peers
    a, b = start(A=0.05, B=3600.0)  # A's writer flushes every 50 ms; B's only when told to

    a.call("set", "k", "v0")
    a.call("flush")
    b.call("wait_heard", a.call("published"), TIMEOUT)
    assert b.call("get", "k") == "v0" and b.call("held", "k")  # B has k cached

    # A writes; its background writer commits and publishes; B reads the new value soon.
    a.call("set", "k", "v1")
    seconds = b.call("wait_for", "k", "v1", VISIBLE_WITHIN)
    assert seconds < VISIBLE_WITHIN
    assert stored("k") == "v1"

    # B's pending write of k2 survives A's invalidation of k2 ...
    a.call("set", "k2", "base")
    a.call("flush")
    b.call("wait_heard", a.call("published"), TIMEOUT)
    assert b.call("get", "k2") == "base"
    b.call("set", "k2", "mine")
    a.call("set", "k2", "theirs")
    a.call("flush")
    assert stored("k2") == "theirs"
    b.call(
        "wait_heard", a.call("published"), TIMEOUT
    )  # every invalidation A sent has been applied in B
    assert b.call("get", "k2") == "mine" and b.call("pending") == 1
    # ... and, committed after A's, is what both end with.
    assert b.call("flush") == 1
    assert stored("k2") == "mine"
    a.call("wait_for", "k2", "mine", VISIBLE_WITHIN)
    assert a.call("coherent") and b.call("coherent")
