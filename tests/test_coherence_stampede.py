"""Read-through stampede protection: concurrent misses of one key in one process make one
store load, over a real RedisStore; and an invalidation that arrives while a load of its
key is in flight keeps that load from caching the value it read before the write.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import TIMEOUT, run_threads, wait_until
from services import delete_redis_keys, redis_client, redis_url, unique_name

import lazycache._read_through as read_through_module
from lazycache import MemoryStore
from lazycache.coherence.redis import RedisCoherence
from lazycache.stores.redis import RedisStore

THREADS = 32


class HeldRedisStore(RedisStore):
    """A real RedisStore that counts loads and can hold the next one (after reading Redis) until released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loads: list[list[Any]] = []
        self.lock = threading.Lock()
        self.holding = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next: Any = None

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()
        self.holding = True

    def load_many_with_ttls(self, keys: Any) -> Any:  # what a read-through calls on a RedisStore
        with self.lock:
            self.loads.append(list(keys))
            holding, self.holding = self.holding, False
            failure, self.fail_next = self.fail_next, None
        found = super().load_many_with_ttls(keys)
        if holding:
            self.entered.set()
            assert self.release.wait(TIMEOUT * 2), "the test never released the held load"
        if failure is not None:
            raise failure
        return found


class LoadWaiters:
    """Counts the readers waiting for a load that another reader of their key is making, so
    that a test releases a held load once every other reader waits for it, however slowly
    the threads are scheduled."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def arrived(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def release_when(self, store: HeldRedisStore, count: int) -> threading.Thread:
        """A thread that releases the store's held load once `count` readers wait for it (or
        after TIMEOUT, leaving the test's assertions to say what went wrong)."""

        def run() -> None:
            with self.changed:
                self.changed.wait_for(lambda: self.count >= count, TIMEOUT)
            store.release.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def waiters(monkeypatch: pytest.MonkeyPatch) -> LoadWaiters:
    """Counts the waits for a shared read-through load (the cache's _Load.wait)."""
    counter = LoadWaiters()

    class CountedLoad(read_through_module._Load):
        def wait(self) -> Any:
            counter.arrived()
            return super().wait()

    monkeypatch.setattr(read_through_module, "_Load", CountedLoad)
    return counter


@pytest.fixture
def held_store() -> Any:
    prefix = unique_name("lcst") + ":"
    store = HeldRedisStore(redis_url(), prefix, cluster=False)
    yield store
    store.close()
    client = redis_client()
    try:
        delete_redis_keys(client, prefix)
    finally:
        client.close()


def stampede(cache: Any, store: HeldRedisStore, key: str, waiters: LoadWaiters) -> list[Any]:
    """THREADS threads read key at once; the first load is held until every other reader
    waits for it. Returns what each read."""
    results: list[Any] = []
    store.hold()
    releaser = waiters.release_when(store, THREADS - 1)
    try:
        run_threads(lambda: results.append(cache.get(key)), [()] * THREADS)
    finally:
        store.release.set()
        releaser.join(TIMEOUT)
    return results


def test_concurrent_misses_make_one_load(make_cache, held_store, waiters) -> None:
    held_store.write([("hot", {"n": 1})], [])
    cache = make_cache(held_store)
    results = stampede(cache, held_store, "hot", waiters)
    assert results == [{"n": 1}] * THREADS
    assert held_store.loads == [["hot"]]
    assert cache.stats.loads == 1
    assert cache["hot"] == {"n": 1} and len(held_store.loads) == 1  # cached


def test_concurrent_misses_of_an_absent_key_make_one_load(make_cache, held_store, waiters) -> None:
    cache = make_cache(held_store)
    assert stampede(cache, held_store, "absent", waiters) == [None] * THREADS
    assert held_store.loads == [["absent"]]


def test_a_failed_load_fails_every_waiter_and_the_next_read_retries(
    make_cache, held_store, waiters
) -> None:
    held_store.write([("hot", 1)], [])
    cache = make_cache(held_store)
    held_store.fail_next = ConnectionError("redis went away")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            cache["hot"]
        except ConnectionError as exc:
            errors.append(exc)

    held_store.hold()
    releaser = waiters.release_when(held_store, THREADS - 1)
    try:
        run_threads(read, [()] * THREADS)
    finally:
        held_store.release.set()
        releaser.join(TIMEOUT)
    assert len(errors) == THREADS and len(held_store.loads) == 1
    assert cache["hot"] == 1 and len(held_store.loads) == 2


def test_while_the_channel_is_down_misses_still_share_a_load_but_nothing_is_cached(
    make_cache, held_store, waiters
) -> None:
    held_store.write([("hot", 1)], [])
    channel = RedisCoherence(
        "redis://127.0.0.1:1/0", unique_name("lcst"), connect_timeout=0.2
    )  # nothing listens there
    cache = make_cache(held_store, coherence=channel)
    assert not cache.coherent
    assert stampede(cache, held_store, "hot", waiters) == [1] * THREADS
    assert len(held_store.loads) == 1
    assert cache["hot"] == 1 and cache["hot"] == 1
    assert len(held_store.loads) == 3  # each later read went to the store


def test_an_invalidation_during_a_load_is_not_lost(make_cache) -> None:
    channel = unique_name("lcst")
    store = MemoryStore({"k": "old"})
    held = threading.Event()
    release = threading.Event()
    original = store.load_many

    def load_many(keys: Any) -> Any:
        found = original(keys)  # read before A's write...
        held.set()
        release.wait(TIMEOUT)  # ...returned after A's invalidation arrived
        return found

    reader_store = MemoryStore()
    reader_store.data = store.data  # one store, two objects: only the reader's loads are held
    reader_store._lock = store._lock
    reader_store.load_many = load_many  # type: ignore[method-assign]
    a = make_cache(store, coherence=RedisCoherence(redis_url(), channel), write_interval=3600)
    b = make_cache(
        reader_store, coherence=RedisCoherence(redis_url(), channel), write_interval=3600
    )
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.append(b["k"]))
    reader.start()
    assert held.wait(TIMEOUT)
    a["k"] = "new"
    a.flush()
    wait_until(lambda: b._coherence.received == 1)
    release.set()
    reader.join(TIMEOUT)
    assert seen == ["old"]  # that read raced the write: fine
    assert b["k"] == "new"  # but the next one must not be served the old value from memory
