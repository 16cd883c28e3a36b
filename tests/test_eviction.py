"""CLOCK eviction: clean entries only, second chance for recently used ones, same choices in both cores."""

from __future__ import annotations

import random

from helpers import quiet_class, require_implementation

from lazycache import MemoryStore


def test_prune_without_maxsize_does_nothing(make_cache) -> None:
    cache = make_cache(quiet=True)
    for i in range(100):
        cache[i] = i
    cache.flush()
    assert cache.prune() == 0
    assert len(cache) == 100


def test_prune_evicts_clean_entries_down_to_maxsize(make_cache) -> None:
    store = MemoryStore({i: i for i in range(20)})
    cache = make_cache(store, quiet=True, maxsize=5)
    for i in range(20):
        assert cache[i] == i
    assert cache.prune() == 15
    assert len(cache) == 5
    assert cache.stats.evictions == 15
    assert store.data == {i: i for i in range(20)}  # eviction never touches the store


def test_prune_never_evicts_pending_entries(make_cache) -> None:
    store = MemoryStore({i: i for i in range(10)})
    cache = make_cache(store, quiet=True, maxsize=3)
    for i in range(10):
        cache[i]  # clean
    for i in range(100, 105):
        cache[i] = i  # pending
    cache.discard(0)  # a pending delete (tombstone)
    cache.prune()
    assert set(range(100, 105)) <= set(cache.keys())
    assert len(cache) == 5  # only pending entries are left: the cache stays over maxsize
    assert 0 not in cache
    cache.flush()
    assert 0 not in store.data
    cache.prune()
    assert len(cache) == 3


def test_recently_read_entries_get_a_second_chance(make_cache) -> None:
    store = MemoryStore({f"k{i}": i for i in range(10)} | {f"n{i}": i for i in range(3)})
    cache = make_cache(store, quiet=True, maxsize=5)
    for i in range(10):
        cache[f"k{i}"]
    assert cache.prune() == 5
    survivors = set(cache.keys())
    assert len(survivors) == 5
    recent = sorted(survivors)[:2]
    for key in recent:
        cache[key]  # used again since the last sweep
    for i in range(3):
        cache[f"n{i}"]  # three new entries push the cache over maxsize again
    assert cache.prune() == 3
    assert set(recent) <= set(cache.keys())
    assert len(cache) == 5


def test_evicted_entries_are_read_back_from_the_store(make_cache) -> None:
    cache = make_cache(quiet=True, maxsize=2)
    for i in range(10):
        cache[i] = str(i)
    cache.flush()
    cache.prune()
    assert len(cache) == 2
    assert [cache[i] for i in range(10)] == [str(i) for i in range(10)]
    assert cache.stats.loads == 8


def run_eviction_script(cache_cls: type, seed: int) -> list[tuple[str, object]]:
    """Runs a fixed random sequence of sets/gets/deletes/flushes/prunes; returns what was observed."""
    rng = random.Random(seed)
    store = MemoryStore({f"s{i}": i for i in range(40)})
    cache = quiet_class(cache_cls)(store, maxsize=8, write_interval=3600, prune_interval=3600)
    trace: list[tuple[str, object]] = []
    try:
        for step in range(600):
            op = rng.random()
            key = rng.choice([f"s{rng.randrange(40)}", f"w{rng.randrange(30)}"])
            if op < 0.35:
                cache[key] = step
            elif op < 0.75:
                trace.append(("get", cache.get(key)))
            elif op < 0.82:
                cache.discard(key)
            elif op < 0.88:
                cache.flush()
            elif op < 0.9:
                cache.invalidate()  # frees every clean slot at once: later inserts reuse them
            else:
                evicted = cache.prune()
                trace.append(("prune", evicted, sorted(cache.keys())))
        cache.flush()
        trace.append(("final-prune", cache.prune(), sorted(cache.keys())))
        stats = cache.stats.as_dict()
        # durations and ages are timings, not behaviour
        trace.append(
            (
                "stats",
                {
                    k: v
                    for k, v in stats.items()
                    if k not in ("last_flush_duration", "oldest_pending_age")
                },
            )
        )
    finally:
        cache.close()
    return trace


def test_eviction_is_identical_in_both_cores() -> None:
    python_cls = require_implementation("python")
    cython_cls = require_implementation("cython")
    for seed in range(5):
        python_trace = run_eviction_script(python_cls, seed)
        cython_trace = run_eviction_script(cython_cls, seed)
        assert any(event[0] == "prune" and event[1] for event in python_trace), (
            "the script never evicted"
        )
        for step, (p, c) in enumerate(zip(python_trace, cython_trace)):
            assert p == c, f"seed {seed}, event {step}: python {p!r} != cython {c!r}"
        assert len(python_trace) == len(cython_trace)
