"""Hypothesis state machine: a cache over a MemoryStore behaves like a plain dict (the model).

The machine is built per core (both run the same rules). Threads stay idle (long intervals,
and a pruner that only evicts when the machine calls prune()), so every run is repeatable.
"""

from __future__ import annotations

from typing import Any

from helpers import LONG, quiet_class
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from lazycache import MemoryStore

KEYS = [f"k{i}" for i in range(6)]
INITIAL = {"k0": -1, "k1": -2}  # the store holds some rows before the cache starts
MAXSIZE = 3
ABSENT = object()

keys = st.sampled_from(KEYS)
values = st.integers(min_value=0, max_value=1000)

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def machine_for(cache_cls: type) -> type:
    cls = quiet_class(cache_cls)

    class CacheMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store = MemoryStore(INITIAL)
            self.model: dict[str, Any] = dict(INITIAL)
            self.cache = cls(self.store, maxsize=MAXSIZE, write_interval=LONG, prune_interval=LONG)

        @rule(key=keys, value=values)
        def set(self, key: str, value: int) -> None:
            self.cache[key] = value
            self.model[key] = value

        @rule(key=keys)
        def delete(self, key: str) -> None:
            if key in self.model:
                del self.cache[key]
                del self.model[key]
            else:
                try:
                    del self.cache[key]
                except KeyError:
                    pass
                else:
                    raise AssertionError(
                        f"del of {key!r}, which is nowhere, did not raise KeyError"
                    )

        @rule(key=keys)
        def discard(self, key: str) -> None:
            self.cache.discard(key)
            self.model.pop(key, None)

        @rule(key=keys)
        def get(self, key: str) -> None:
            assert self.cache.get(key, ABSENT) == self.model.get(key, ABSENT)

        @rule(key=keys)
        def getitem(self, key: str) -> None:
            try:
                value = self.cache[key]
            except KeyError:
                assert key not in self.model
            else:
                assert value == self.model[key]

        @rule(key=keys)
        def contains(self, key: str) -> None:
            assert (key in self.cache) == (key in self.model)

        @rule(key=keys, default=st.none() | st.just(ABSENT))
        def pop(self, key: str, default: Any) -> None:
            if default is ABSENT:
                try:
                    value = self.cache.pop(key)
                except KeyError:
                    assert key not in self.model
                else:
                    assert value == self.model.pop(key)
            else:
                assert self.cache.pop(key, default) == self.model.pop(key, default)

        @rule(key=keys, value=values)
        def setdefault(self, key: str, value: int) -> None:
            assert self.cache.setdefault(key, value) == self.model.setdefault(key, value)

        @rule(key=keys, delta=st.integers(1, 5))
        def update_entry(self, key: str, delta: int) -> None:
            new = self.cache.update_entry(key, lambda v: v + delta, 0)
            self.model[key] = self.model.get(key, 0) + delta
            assert new == self.model[key]

        @rule()
        def popitem(self) -> None:
            try:
                key, value = self.cache.popitem()
            except KeyError:
                assert len(self.cache) == 0
            else:
                assert self.model.pop(key) == value

        @rule()
        def clear(self) -> None:
            in_memory = list(self.cache.keys())
            self.cache.clear()
            for key in in_memory:  # keys only the store holds are not touched
                del self.model[key]
            assert len(self.cache) == 0

        @rule()
        def flush(self) -> None:
            self.cache.flush()
            assert self.store.data == self.model
            assert self.cache.pending == 0

        @rule()
        def prune(self) -> None:
            self.cache.prune()
            assert len(self.cache) <= MAXSIZE or self.cache.pending > 0

        @rule()
        def invalidate(self) -> None:
            self.cache.invalidate()
            assert self.store.data == self.model
            assert len(self.cache) == 0 and self.cache.pending == 0

        @invariant()
        def cache_reads_equal_the_model(self) -> None:
            for key in set(KEYS) | set(self.model) | set(self.store.data):
                assert self.cache.get(key, ABSENT) == self.model.get(key, ABSENT), key

        @invariant()
        def memory_holds_only_model_values(self) -> None:
            for key, value in self.cache.items():
                assert self.model.get(key, ABSENT) == value
            assert len(self.cache) == len(list(self.cache))

        def teardown(self) -> None:
            self.cache.close()
            assert self.store.data == self.model

    CacheMachine.__name__ = CacheMachine.__qualname__ = f"CacheMachine_{cache_cls.implementation}"
    return CacheMachine


def test_cache_behaves_like_a_dict_over_the_store(cache_cls) -> None:
    run_state_machine_as_test(machine_for(cache_cls), settings=SETTINGS)
