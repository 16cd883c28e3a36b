"""Many threads at once: keys with Python __hash__/__eq__, and a randomised stress run checked against a model."""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest
from helpers import FailingStore, SlowKey, run_threads

from lazycache import MemoryStore

ABSENT = object()


@pytest.fixture
def fast_switching():
    """Switch threads far more often than usual, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def test_setdefault_with_slow_colliding_keys_has_one_winner_per_key(
    make_cache, fast_switching
) -> None:
    cache = make_cache()
    nthreads = 6
    specs: list[Any] = [("slow", i) for i in range(24)] + [("str", f"s{i}") for i in range(8)]

    def make_key(spec):
        kind, n = spec
        return SlowKey(n) if kind == "slow" else n

    seen: list[dict[Any, Any]] = [dict() for _ in range(nthreads)]

    def work(tid: int) -> None:
        order = specs[:]
        random.Random(tid).shuffle(order)
        for spec in order:  # each thread builds its own, equal, key objects
            seen[tid][spec] = cache.setdefault(make_key(spec), (tid, spec))

    run_threads(work, [(t,) for t in range(nthreads)])
    for spec in specs:
        winners = {id(seen[t][spec]) for t in range(nthreads)}
        assert len(winners) == 1, f"{spec}: threads got different values"
        assert cache[make_key(spec)] is seen[0][spec]
    assert len(cache) == len(specs)
    cache.flush()
    assert len(cache.store.data) == len(specs)
    assert cache.store.data[SlowKey(3)] is seen[0][("slow", 3)]


def test_mixed_operations_on_slow_and_builtin_keys_stay_consistent(
    make_cache, fast_switching
) -> None:
    store = MemoryStore({SlowKey(i): ("stored", i) for i in range(0, 30, 3)})
    cache = make_cache(store, maxsize=8)
    nthreads = 4

    def work(tid: int) -> None:
        rng = random.Random(tid)
        # each thread owns its keys: slow ones (locked path) mixed with builtin ones (lock-free path)
        mine = (
            [SlowKey(i) for i in range(tid, 30, nthreads)]
            + [f"s{tid}-{i}" for i in range(8)]
            + [tid * 100 + i for i in range(8)]
        )
        model = {k: store.data[k] for k in mine if k in store.data}
        for _ in range(300):
            key = rng.choice(mine)
            op = rng.random()
            if op < 0.4:
                cache[key] = (tid, rng.random())
                model[key] = cache[key]
            elif op < 0.55:
                if key in model:
                    del cache[key]
                    del model[key]
                else:
                    with pytest.raises(KeyError):
                        del cache[key]
            else:
                assert cache.get(key, ABSENT) == model.get(key, ABSENT)
                assert (key in cache) == (key in model)
        cache.flush()
        for key in mine:
            assert store.data.get(key, ABSENT) == model.get(key, ABSENT)

    run_threads(work, [(t,) for t in range(nthreads)])


def test_random_stress_against_a_per_key_model(make_cache, fast_switching) -> None:
    # Each thread owns a quarter of the keys, so the expected state of every key is known
    # exactly, while the writer and pruner run against all of them. Threads keep going past
    # their minimum until the background threads have had a real share of the run.
    nthreads, min_ops, max_ops, nkeys = 4, 3000, 60_000, 200
    store = FailingStore({k: ("initial", k) for k in range(0, nkeys, 4)})
    cache = make_cache(store, maxsize=50, write_interval=0.01, prune_interval=0.01, batch_size=64)
    models: list[dict[int, Any]] = []

    def background_has_run() -> bool:
        stats = cache.stats
        return stats.writes >= 3000 and stats.evictions >= 300  # many writer and pruner runs

    def work(tid: int) -> None:
        rng = random.Random(1000 + tid)
        mine = list(range(tid, nkeys, nthreads))
        model = {k: store.data[k] for k in mine if k in store.data}
        models.append(model)
        for n in range(max_ops):
            if n >= min_ops and n % 500 == 0 and background_has_run():
                break
            key = rng.choice(mine)
            op = rng.random()
            if op < 0.45:
                value = (tid, n)
                cache[key] = value
                model[key] = value
            elif op < 0.6:
                if key in model:
                    del cache[key]
                    del model[key]
                else:
                    with pytest.raises(KeyError):
                        del cache[key]
            elif op < 0.65:
                assert cache.pop(key, ABSENT) == model.pop(key, ABSENT)
            else:
                got = cache.get(key, ABSENT)
                assert got == model.get(key, ABSENT), (
                    f"key {key}: cache {got!r}, model {model.get(key, ABSENT)!r}"
                )

    run_threads(work, [(t,) for t in range(nthreads)])
    expected: dict[int, Any] = {}
    for model in models:
        expected.update(model)
    cache.close()
    assert store.data == expected
    for key, value in cache.copy().items():  # and what memory still holds agrees
        assert expected.get(key, ABSENT) == value
    stats = cache.stats
    assert stats.pending == 0 and stats.failed_writes == 0
