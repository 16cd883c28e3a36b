"""Expiry: expire_after_write, expire_after_access, set(key, value, ttl=), and write-behind.

Time is the cache's `clock=` (a FakeClock the test moves), never a sleep. Every test runs
on both cores.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import TIMEOUT, BlockingStore, FailingStore, FakeClock, wait_until

from lazycache import MISSING, MemoryStore, cached


class TTLStore(FailingStore):
    """A FailingStore that keeps TTLs (accepts_ttls) and records the ttls= of each write."""

    accepts_ttls = True

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        super().__init__(data)
        self.ttl_calls: list[dict[Any, float] | None] = []

    def write(self, upserts, deletes, ttls=None):  # type: ignore[override]
        self.ttl_calls.append(None if ttls is None else dict(ttls))
        return super().write(upserts, deletes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ----------------------------------------------------------------------------- deadlines


def test_a_clean_entry_expires_after_write_and_the_next_read_reads_through(
    make_cache, clock
) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True, expire_after_write=10, clock=clock)
    cache["k"] = "mine"
    cache.flush()
    store.data["k"] = "theirs"  # another writer changed the store meanwhile
    clock.advance(9.5)
    assert cache["k"] == "mine"  # not expired yet: served from memory
    assert store.load_calls == []
    clock.advance(0.5)
    assert cache["k"] == "theirs"  # expired: read through
    assert store.load_calls == [["k"]]
    assert cache.stats.expirations == 1
    clock.advance(9)
    assert cache["k"] == "theirs"  # the loaded value has a deadline of its own
    assert store.load_calls == [["k"]]


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda c: c["k"], id="getitem"),
        pytest.param(lambda c: c.get("k"), id="get"),
        pytest.param(lambda c: c.get_many(["k"])["k"], id="get_many"),
        pytest.param(lambda c: c.setdefault("k", "default"), id="setdefault"),
        pytest.param(lambda c: c.update_entry("k", lambda v: v), id="update_entry"),
    ],
)
def test_every_read_of_an_expired_entry_reads_through(make_cache, clock, read) -> None:
    store = FailingStore({"k": "stored"})
    cache = make_cache(store, quiet=True, expire_after_write=5, clock=clock)
    cache["k"] = "old"
    cache.flush()
    store.data["k"] = "stored"
    clock.advance(5)
    assert read(cache) == "stored"
    assert store.load_calls == [["k"]]


def test_in_and_read_through_off(make_cache, clock) -> None:
    store = FailingStore({"k": "stored"})
    cache = make_cache(store, quiet=True, expire_after_write=5, clock=clock, read_through=False)
    cache["k"] = "v"
    cache.flush()
    clock.advance(5)
    assert "k" not in cache  # expired, and nothing reads through
    assert cache.get("k") is None
    with pytest.raises(KeyError):
        del cache["k"]
    assert store.load_calls == []


def test_expire_after_access_is_pushed_back_by_each_read(make_cache, clock) -> None:
    cache = make_cache(
        FailingStore(), quiet=True, read_through=False, expire_after_access=10, clock=clock
    )
    cache["k"] = 1
    cache.flush()
    for _ in range(5):
        clock.advance(9)
        assert cache["k"] == 1  # each read restarts the 10 s
    clock.advance(10)
    assert cache.get("k") is None
    assert cache.stats.expirations == 1


def test_with_both_the_earlier_deadline_wins(make_cache, clock) -> None:
    cache = make_cache(
        FailingStore(),
        quiet=True,
        read_through=False,
        expire_after_write=30,
        expire_after_access=10,
        clock=clock,
    )
    cache["k"] = 1
    cache.flush()
    for _ in range(3):
        clock.advance(9)
        assert cache["k"] == 1
    clock.advance(3)  # 30 s after the write, 3 s after the last read
    assert cache.get("k") is None


def test_a_write_restarts_the_write_deadline(make_cache, clock) -> None:
    cache = make_cache(FailingStore(), quiet=True, expire_after_write=10, clock=clock)
    cache["k"] = 1
    clock.advance(8)
    cache["k"] = 2
    cache.flush()
    clock.advance(8)
    assert cache["k"] == 2


def test_set_with_a_ttl_overrides_expire_after_write_for_that_entry(make_cache, clock) -> None:
    cache = make_cache(
        FailingStore(), quiet=True, read_through=False, expire_after_write=100, clock=clock
    )
    cache.set("short", 1, ttl=2)
    cache.set("default", 2)
    cache["plain"] = 3
    cache.flush()
    clock.advance(2)
    assert cache.get("short") is None
    assert (cache["default"], cache["plain"]) == (2, 3)
    clock.advance(98)
    assert cache.get("default") is None and cache.get("plain") is None


def test_a_ttl_turns_expiry_on_in_a_cache_made_without_it(make_cache, clock) -> None:
    cache = make_cache(FailingStore(), quiet=True, read_through=False, clock=clock)
    cache["before"] = 0
    assert not cache._expiry_enabled  # nothing on the hot path until a TTL is used
    cache.set("k", 1, ttl=1.5)
    assert cache._expiry_enabled
    cache["plain"] = 2
    cache.flush()
    clock.advance(1.5)
    assert cache.get("k") is None
    assert (cache["before"], cache["plain"]) == (0, 2)  # no deadline: never expire
    clock.advance(10**6)
    assert (cache["before"], cache["plain"]) == (0, 2)


def test_assigning_after_a_ttl_gives_the_entry_the_caches_expiry(make_cache, clock) -> None:
    cache = make_cache(FailingStore(), quiet=True, clock=clock)
    cache.set("k", 1, ttl=1)
    cache["k"] = 2  # no TTL: the cache's (none here)
    cache.flush()
    clock.advance(5)
    assert cache["k"] == 2


def test_a_loaded_value_gets_expire_after_write(make_cache, clock) -> None:
    store = FailingStore({"k": 1})
    cache = make_cache(store, quiet=True, expire_after_write=10, clock=clock)
    assert cache["k"] == 1
    store.data["k"] = 2
    clock.advance(10)
    assert cache["k"] == 2
    assert len(store.load_calls) == 2


def test_get_or_load_and_cached_reload_after_expiry(make_cache, clock) -> None:
    cache = make_cache(quiet=True, expire_after_write=60, clock=clock)
    calls = []

    @cached(cache)
    def f(x: int) -> int:
        calls.append(x)
        return x * len(calls)

    assert (f(2), f(2)) == (2, 2)
    clock.advance(60)
    assert f(2) == 4
    assert calls == [2, 2]
    assert cache.get_or_load("g", lambda key: "one") == "one"
    clock.advance(60)
    assert cache.get_or_load("g", lambda key: "two") == "two"


# ----------------------------------------------------------------------------- write-behind


def test_a_pending_write_is_never_dropped_by_expiry(make_cache, clock) -> None:
    store = FailingStore({"k": "older"})
    cache = make_cache(store, quiet=True, clock=clock)
    cache.set("k", "newer", ttl=1)
    store.fail = True  # the store is down: the write stays pending
    with pytest.raises(Exception):
        cache.flush()
    clock.advance(3600)
    # Not the store's older value, and not a miss: the pending write is the newest there is.
    assert cache["k"] == "newer"
    assert cache.prune() == 0
    assert cache.pending == 1 and "k" in cache.copy()
    assert store.load_calls == []
    store.fail = False
    cache.flush()
    assert store.data["k"] == "newer"  # the acknowledged write reached the store
    assert cache.get("k") == "newer"  # expired once written: read through, the store's now
    assert store.load_calls == [["k"]]


def test_an_entry_being_written_does_not_expire_until_the_write_is_done(make_cache, clock) -> None:
    store = BlockingStore({"k": "older"})
    cache = make_cache(store, quiet=True, clock=clock)
    cache.set("k", "newer", ttl=1)
    store.hold()
    flusher = threading.Thread(target=cache.flush)
    flusher.start()
    store.wait_entered()
    clock.advance(10)
    assert cache["k"] == "newer"  # in flight: the store may still hold "older"
    assert cache.prune() == 0
    store.release.set()
    flusher.join(TIMEOUT)
    assert cache.prune() == 1  # written and past its deadline: gone now
    assert cache.stats.expirations == 1


def test_an_expired_key_deleted_in_memory_stays_deleted(make_cache, clock) -> None:
    store = FailingStore({"k": "stored"})
    cache = make_cache(store, quiet=True, expire_after_write=1, clock=clock)
    assert cache["k"] == "stored"
    clock.advance(2)
    assert cache.pop("k") == "stored"  # expired in memory: read through, then deleted
    assert "k" not in cache
    cache.flush()
    assert "k" not in store.data


# ----------------------------------------------------------------------------- removal


def test_the_pruner_drops_expired_clean_entries_and_len_counts_them_until_then(
    make_cache, clock
) -> None:
    evicted: list[Any] = []
    cache = make_cache(
        FailingStore(),
        quiet=True,
        expire_after_write=5,
        clock=clock,
        on_evict=lambda key, value: evicted.append(key),
    )
    cache.update({i: i for i in range(10)})
    cache.flush()
    cache.set("late", 1, ttl=60)
    cache.flush()
    clock.advance(5)
    assert len(cache) == 11  # expired entries are counted until they are removed
    assert cache.copy() == {"late": 1}  # but never served: snapshots leave them out
    assert list(cache) == ["late"] and list(cache.values()) == [1]
    assert cache.prune() == 10
    assert len(cache) == 1
    assert cache.stats.expirations == 10 and cache.stats.evictions == 0
    assert evicted == []  # on_evict is for evictions (maxsize) only


def test_popitem_skips_expired_entries(make_cache, clock) -> None:
    cache = make_cache(FailingStore(), quiet=True, clock=clock)
    cache["a"] = 1
    cache.set("b", 2, ttl=1)
    cache.flush()
    clock.advance(1)
    assert cache.popitem() == ("a", 1)
    with pytest.raises(KeyError):
        cache.popitem()


def test_the_pruner_thread_drops_expired_entries(make_cache, clock) -> None:
    cache = make_cache(FailingStore(), expire_after_write=1, clock=clock, prune_interval=0.01)
    cache["k"] = 1
    cache.flush()
    clock.advance(1)
    wait_until(lambda: len(cache) == 0, message="the pruner never dropped the expired entry")
    assert cache.stats.expirations == 1


# ----------------------------------------------------------------------------- stores that keep TTLs


def test_a_store_that_keeps_ttls_gets_the_time_left_to_each_deadline(make_cache, clock) -> None:
    store = TTLStore()
    cache = make_cache(store, quiet=True, expire_after_write=60, clock=clock)
    cache.set("short", 1, ttl=10)
    cache["default"] = 2
    del cache["default"]  # a delete carries no TTL
    cache["other"] = 3
    clock.advance(4)
    cache.flush()
    assert store.ttl_calls == [{"short": pytest.approx(6), "other": pytest.approx(56)}]


def test_a_write_that_reaches_the_store_after_its_deadline_gets_one_millisecond(
    make_cache, clock
) -> None:
    store = TTLStore({"k": "older"})
    cache = make_cache(store, quiet=True, clock=clock)
    cache.set("k", "newer", ttl=1)
    clock.advance(30)
    cache.flush()
    assert store.ttl_calls == [{"k": 0.001}]
    assert store.data["k"] == "newer"  # written all the same: the older value is replaced


def test_entries_without_a_deadline_pass_no_ttls(make_cache, clock) -> None:
    store = TTLStore()
    cache = make_cache(store, quiet=True, expire_after_access=10, clock=clock)
    cache["k"] = 1  # an access deadline is this process's: the store gets none
    cache.flush()
    assert store.ttl_calls == [None]


def test_a_store_that_keeps_no_ttls_is_never_passed_any(make_cache, clock) -> None:
    store = FailingStore()  # its write() takes no ttls=: passing one would raise
    cache = make_cache(store, quiet=True, expire_after_write=10, clock=clock)
    cache.set("k", 1, ttl=5)
    cache.flush()
    assert store.data == {"k": 1}


def test_write_through_under_backpressure_keeps_the_ttl(make_cache, clock) -> None:
    store = TTLStore()
    cache = make_cache(store, quiet=True, clock=clock, max_pending=1, on_full="write-through")
    cache["first"] = 0
    cache.set("k", 1, ttl=7)  # the backlog is full: written through at once
    assert store.ttl_calls == [{"k": 7.0}]
    assert store.data["k"] == 1 and cache.pending == 1
    clock.advance(7)
    assert cache.get("k") == 1  # clean and expired: read through, the store has it
    assert store.load_calls == [["k"]]


def test_a_journaled_cache_takes_ttls(make_cache, clock, tmp_path) -> None:
    cache = make_cache(FailingStore(), read_through=False, clock=clock, journal=str(tmp_path / "j"))
    cache.set("k", 1, ttl=2)
    cache.flush()
    clock.advance(2)
    assert cache.get("k") is None


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("option", ["expire_after_write", "expire_after_access"])
@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("inf"), ValueError),
        (float("nan"), ValueError),
        (10**10, ValueError),
        ("60", TypeError),
        (True, TypeError),
    ],
)
def test_bad_expiry_options_are_refused(cache_cls, option, bad, error) -> None:
    with pytest.raises(error, match=option):
        cache_cls(MemoryStore(), **{option: bad})


def test_a_bad_ttl_is_refused_at_the_call(make_cache) -> None:
    cache = make_cache(quiet=True)
    for bad, error in ((0, ValueError), (-5, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="ttl"):
            cache.set("k", 1, ttl=bad)
    assert len(cache) == 0 and cache.pending == 0


def test_a_bad_clock_is_refused(cache_cls, make_cache) -> None:
    with pytest.raises(TypeError, match="clock must be callable"):
        cache_cls(MemoryStore(), clock=5)
    cache = make_cache(quiet=True, expire_after_write=1, clock=lambda: "noon")
    with pytest.raises(TypeError, match="clock"):
        cache["k"] = 1
    with pytest.raises(TypeError, match="clock"):
        cache.get("k")
    assert cache.pending == 0


def test_missing_is_still_refused_as_a_value(make_cache, clock) -> None:
    cache = make_cache(quiet=True, clock=clock)
    with pytest.raises(ValueError, match="MISSING"):
        cache.set("k", MISSING, ttl=1)


# ----------------------------------------------------------------------------- threads


def test_threads_reading_and_writing_while_time_passes(make_cache) -> None:
    """Readers never see a value other than one written; pending entries are never lost."""
    clock = FakeClock()
    lock = threading.Lock()

    def tick() -> float:
        with lock:
            clock.advance(0.001)
            return clock.now

    store = FailingStore()
    cache = make_cache(store, expire_after_write=0.05, expire_after_access=0.02, clock=tick)
    keys = [f"k{i}" for i in range(50)]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(2000):
            key = keys[(i * 7 + n) % len(keys)]
            if i % 3:
                cache[key] = (key, i)
            else:
                cache.set(key, (key, i), ttl=0.01)

    def reader() -> None:
        for i in range(4000):
            value = cache.get(keys[i % len(keys)])
            if value is not None and value[0] != keys[i % len(keys)]:
                errors.append(AssertionError(f"{keys[i % len(keys)]} read {value!r}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 6)
        assert not thread.is_alive()
    assert not errors
    cache.flush()
    assert cache.pending == 0
    assert set(store.data) == set(keys)  # every key's last write reached the store


class ExpiringStore(MemoryStore):
    """A store of one's own that keeps each key for `ttls[key]` seconds more, and says so."""

    reports_ttls = True

    def __init__(self, data: dict[Any, Any], ttls: dict[Any, float]) -> None:
        super().__init__(data)
        self.ttls = ttls

    def load_many_with_ttls(self, keys: Any) -> Any:
        found = self.load_many(keys)
        return found, {key: self.ttls[key] for key in found if key in self.ttls}


def test_a_store_of_ones_own_that_reports_ttls_bounds_its_entries_in_memory(
    make_cache, clock
) -> None:
    store = ExpiringStore(
        {"brief": 1, "now": 2, "long": 3, "forever": 4}, {"brief": 5, "now": 0, "long": 100}
    )
    cache = make_cache(store, quiet=True, expire_after_write=50, clock=clock)
    assert cache.get_many(["brief", "now", "long", "forever"]) == {
        "brief": 1,
        "now": 2,
        "long": 3,
        "forever": 4,
    }
    store.data.update(
        {"brief": -1, "now": -2, "long": -3, "forever": -4}
    )  # changed behind its back
    clock.advance(0.001)
    assert cache["now"] == -2  # no time left: expired at the next tick, read again
    clock.advance(5)
    assert cache["brief"] == -1  # the store's 5 s
    assert (cache["long"], cache["forever"]) == (3, 4)
    clock.advance(45)
    assert (cache["long"], cache["forever"]) == (-3, -4)  # the cache's own 50 s came first
