"""CacheStats: what each counter counts."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import FailingStore

from lazycache import CacheStats, FlushError

FIELDS = [
    "hits",
    "misses",
    "loads",
    "stores",
    "deletes",
    "evictions",
    "expirations",
    "writes",
    "failed_writes",
    "flushes",
    "retries",
    "write_errors",
    "size",
    "pending",
    "oldest_pending_age",
    "last_flush_duration",
    "last_batch_size",
]


def test_fresh_cache_has_zero_stats(make_cache) -> None:
    stats = make_cache(quiet=True).stats
    assert isinstance(stats, CacheStats)
    assert stats.as_dict() == dict.fromkeys(FIELDS, 0)
    assert stats.hit_ratio == 0.0


def test_counters_follow_the_operations(make_cache) -> None:
    store = FailingStore({"s1": 1, "s2": 2})
    cache = make_cache(store, quiet=True, maxsize=2, batch_size=2)
    cache["a"] = 1  # store
    cache["a"] = 2  # store
    cache["b"] = 3  # store
    assert cache["a"] == 2  # hit
    assert cache.get("b") == 3  # hit
    assert cache.get("nowhere") is None  # miss, nothing loaded
    assert cache["s1"] == 1  # miss, loaded
    assert cache["s1"] == 1  # hit
    del cache["b"]  # delete
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.loads) == (3, 2, 1)
    assert (stats.stores, stats.deletes) == (3, 1)
    assert (stats.size, stats.pending) == (2, 2)
    assert (stats.writes, stats.flushes, stats.failed_writes, stats.evictions) == (0, 0, 0, 0)
    assert stats.hit_ratio == pytest.approx(3 / 5)

    store.fail = True
    with pytest.raises(FlushError):
        cache.flush()
    assert cache.stats.failed_writes == 2
    store.fail = False
    cache["c"] = 4
    cache.flush()  # a, b(delete), c in batches of two
    stats = cache.stats
    assert (stats.writes, stats.flushes, stats.pending) == (3, 2, 0)
    assert cache.prune() == 1
    assert cache.stats.evictions == 1
    assert cache.stats.size == 2


def test_stats_is_a_frozen_snapshot(make_cache) -> None:
    cache = make_cache(quiet=True)
    before = cache.stats
    cache["a"] = 1
    assert before.stores == 0 and cache.stats.stores == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.hits = 5  # type: ignore[misc]


def test_stats_as_dict_and_str(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    cache["a"]
    stats = cache.stats
    assert list(stats.as_dict()) == FIELDS
    assert stats.as_dict()["stores"] == 1
    text = str(stats)
    for part in ("size=1", "pending=1", "hits=1", "misses=0", "stores=1", "hit ratio 100.0%"):
        assert part in text


def test_deleting_a_deleted_key_is_not_counted_again(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    del cache["a"]
    cache.discard("a")
    with pytest.raises(KeyError):
        del cache["a"]
    assert cache.pop("a", None) is None
    assert cache.stats.deletes == 1
    assert cache.pending == 1
