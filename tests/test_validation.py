"""Constructor arguments are checked: bad values are ValueError, bad types TypeError, each naming the parameter."""

from __future__ import annotations

import threading

import pytest

from lazycache import MemoryStore


def lazycache_thread_count() -> int:
    return sum(t.name.startswith("lazycache-") for t in threading.enumerate())


@pytest.mark.parametrize("name", ["maxsize", "batch_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_size_is_a_value_error_naming_it(cache_cls, name, value) -> None:
    with pytest.raises(ValueError, match=name):
        cache_cls(MemoryStore(), **{name: value})


@pytest.mark.parametrize("name", ["write_interval", "prune_interval"])
@pytest.mark.parametrize("value", [0, -1, -0.5, 0.0, float("nan")])
def test_non_positive_interval_is_a_value_error_naming_it(cache_cls, name, value) -> None:
    with pytest.raises(ValueError, match=name):
        cache_cls(MemoryStore(), **{name: value})


@pytest.mark.parametrize("name", ["maxsize", "batch_size"])
@pytest.mark.parametrize("value", ["10", 10.0, True, [10]])
def test_size_of_wrong_type_is_a_type_error_naming_it(cache_cls, name, value) -> None:
    with pytest.raises(TypeError, match=name):
        cache_cls(MemoryStore(), **{name: value})


@pytest.mark.parametrize("name", ["write_interval", "prune_interval"])
@pytest.mark.parametrize("value", ["1", None, True, [1]])
def test_interval_of_wrong_type_is_a_type_error_naming_it(cache_cls, name, value) -> None:
    with pytest.raises(TypeError, match=name):
        cache_cls(MemoryStore(), **{name: value})


@pytest.mark.parametrize("store", [{}, None, object(), MemoryStore])
def test_store_that_is_not_a_store_is_a_type_error(cache_cls, store) -> None:
    with pytest.raises(TypeError, match="store"):
        cache_cls(store)


def test_merge_generated_must_be_callable(cache_cls) -> None:
    with pytest.raises(TypeError, match="merge_generated"):
        cache_cls(MemoryStore(), merge_generated="not callable")


def test_arguments_after_store_are_keyword_only(cache_cls) -> None:
    with pytest.raises(TypeError):
        cache_cls(MemoryStore(), 100)


def test_valid_limits_are_accepted(make_cache) -> None:
    cache = make_cache(maxsize=1, batch_size=1, write_interval=0.001, prune_interval=1e9)
    assert cache.maxsize == 1 and cache.batch_size == 1
    assert make_cache(maxsize=None).maxsize is None
    assert make_cache(write_interval=1, prune_interval=2).stats.size == 0  # ints are seconds too


def test_rejected_construction_starts_no_threads(cache_cls) -> None:
    before = lazycache_thread_count()
    for kwargs in (
        {"maxsize": 0},
        {"batch_size": 0},
        {"write_interval": -1},
        {"prune_interval": "x"},
    ):
        with pytest.raises((ValueError, TypeError)):
            cache_cls(MemoryStore(), **kwargs)
    assert lazycache_thread_count() == before
