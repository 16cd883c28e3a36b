"""get_or_load, get_many and the @cached decorator: one load per key, loaded values cached clean."""

from __future__ import annotations

import threading
from typing import Callable

import pytest
from helpers import TIMEOUT, FailingStore, run_threads, wait_until

import lazycache
from lazycache import MISSING, cached, hashkey, typedkey


class GatedLoader:
    """A loader that counts its calls and, once `gate` is set, waits for `release` inside."""

    def __init__(self, value: object = "loaded", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls: list[object] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, key: object) -> object:
        with self._lock:
            self.calls.append(key)
        self.entered.set()
        assert self.release.wait(TIMEOUT), "the test never released the loader"
        if self.error is not None:
            raise self.error
        return self.value


def _wait_for_waiters(cache, count: int) -> None:
    """Until `count` callers wait on the one load in flight (its loader is held)."""

    def parked() -> bool:
        with cache._loading_lock:
            loads = list(cache._loading.values())
        # threading.Event keeps its waiters in its Condition: that tells who is parked on it.
        return len(loads) == 1 and len(loads[0]._event._cond._waiters) >= count

    wait_until(parked, message=f"{count} callers never waited on the load")


def _concurrently(cache, loader: GatedLoader, call: Callable[[], object], count: int) -> list:
    """Runs `call` in `count` threads; once one is in the loader and the others wait on its
    load, releases the loader. Returns what each call returned or raised."""
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(call())
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    assert loader.entered.wait(TIMEOUT)
    _wait_for_waiters(cache, count - 1)
    loader.release.set()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    return outcomes


# ----------------------------------------------------------------------------- get_or_load


def test_get_or_load_calls_the_loader_on_a_miss_and_caches_the_value_clean(make_cache) -> None:
    store = FailingStore({"k": "stored"})
    cache = make_cache(store, quiet=True)
    calls = []
    assert cache.get_or_load("k", lambda key: calls.append(key) or f"made {key}") == "made k"
    assert calls == ["k"]
    assert store.load_calls == []  # the loader stands in for the store
    assert cache.pending == 0  # clean: never written
    assert cache.get_or_load("k", lambda key: pytest.fail("called on a hit")) == "made k"
    cache.flush()
    assert store.write_calls == []
    assert store.data == {"k": "stored"}
    assert cache.stats.hits == 1 and cache.stats.misses == 1


def test_get_or_load_returns_what_memory_holds_pending_or_not(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["k"] = "set"
    assert cache.get_or_load("k", lambda key: pytest.fail("called on a hit")) == "set"
    assert cache.pending == 1


def test_concurrent_get_or_load_of_one_key_calls_the_loader_once(make_cache) -> None:
    cache = make_cache(quiet=True)
    loader = GatedLoader()
    results = _concurrently(cache, loader, lambda: cache.get_or_load("k", loader), 8)
    assert results == ["loaded"] * 8
    assert loader.calls == ["k"]
    assert cache.copy() == {"k": "loaded"}


def test_a_loader_error_reaches_every_waiter_and_nothing_is_cached(make_cache) -> None:
    cache = make_cache(quiet=True)
    loader = GatedLoader(error=LookupError("backend down"))
    errors = _concurrently(cache, loader, lambda: cache.get_or_load("k", loader), 5)
    assert errors == [loader.error] * 5
    assert loader.calls == ["k"]
    assert "k" not in cache.copy()
    assert cache.get_or_load("k", lambda key: "second try") == "second try"  # not remembered


def test_a_plain_read_never_waits_on_a_loader(make_cache) -> None:
    store = FailingStore({"k": "stored"})
    cache = make_cache(store, quiet=True)
    loader = GatedLoader(error=LookupError("not for the reader"))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            cache.get_or_load("k", loader)
        except LookupError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert loader.entered.wait(TIMEOUT)
    assert cache["k"] == "stored"  # read through, while the loader is held
    loader.release.set()
    caller.join(TIMEOUT)
    assert errors == [loader.error]
    assert cache["k"] == "stored"


def test_get_or_load_of_a_key_deleted_in_memory_returns_the_loaded_value_uncached(
    make_cache,
) -> None:
    cache = make_cache(FailingStore({"k": "stored"}), quiet=True)
    del cache["k"]
    assert cache.get_or_load("k", lambda key: "fresh") == "fresh"
    assert "k" not in cache.copy()
    assert cache.pending == 1  # the delete is still to be written


@pytest.mark.parametrize("bad", [None, 42])
def test_get_or_load_refuses_a_loader_that_is_not_callable(make_cache, bad) -> None:
    cache = make_cache(quiet=True)
    with pytest.raises(TypeError, match="loader must be callable"):
        cache.get_or_load("k", bad)


def test_a_loader_returning_missing_is_refused(make_cache) -> None:
    cache = make_cache(quiet=True)
    with pytest.raises(ValueError, match="MISSING"):
        cache.get_or_load("k", lambda key: MISSING)
    assert len(cache) == 0


def test_get_or_load_on_a_closed_cache_calls_the_loader_and_caches_nothing(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["held"] = 1
    cache.close()
    assert cache.get_or_load("held", lambda key: pytest.fail("called on a hit")) == 1
    assert cache.get_or_load("new", lambda key: 2) == 2
    assert "new" not in cache.copy()


# ----------------------------------------------------------------------------- get_many


def test_get_many_answers_from_memory_and_loads_the_misses_in_one_call(make_cache) -> None:
    store = FailingStore({"a": 1, "b": 2, "c": 3})
    cache = make_cache(store, quiet=True)
    cache["d"] = 4
    assert cache["a"] == 1
    store.load_calls.clear()
    got = cache.get_many(["c", "x", "d", "a", "b", "c"])
    assert list(got.items()) == [("c", 3), ("d", 4), ("a", 1), ("b", 2)]
    assert store.load_calls == [["c", "x", "b"]]
    assert cache.pending == 1  # the loaded ones are clean
    store.load_calls.clear()
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    assert store.load_calls == []


def test_get_many_skips_keys_deleted_in_memory_without_asking_the_store(make_cache) -> None:
    store = FailingStore({"a": 1, "b": 2})
    cache = make_cache(store, quiet=True)
    del cache["a"]
    store.load_calls.clear()
    assert cache.get_many(["a", "b"]) == {"b": 2}
    assert store.load_calls == [["b"]]


def test_get_many_without_read_through_answers_from_memory_only(make_cache) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store, quiet=True, read_through=False)
    cache["b"] = 2
    assert cache.get_many(["a", "b"]) == {"b": 2}
    assert store.load_calls == []


def test_get_many_reports_a_store_error_and_caches_nothing(make_cache) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store, quiet=True)
    store.fail_loads = True
    with pytest.raises(ConnectionError):
        cache.get_many(["a"])
    assert len(cache) == 0


def test_get_many_counts_hits_misses_and_loads(make_cache) -> None:
    cache = make_cache(FailingStore({"a": 1, "b": 2}), quiet=True)
    cache["c"] = 3
    cache.get_many(["a", "b", "c", "z"])
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.loads) == (1, 3, 2)


def test_a_set_during_get_many_wins_over_its_load(make_cache) -> None:
    cache = make_cache(quiet=True)

    class RacingStore(FailingStore):
        def load_many(self, keys):
            found = super().load_many(keys)
            cache["a"] = "newer"  # as another thread might, while the load runs
            return found

    cache.store = RacingStore({"a": "older"})
    assert cache.get_many(["a"]) == {"a": "newer"}
    assert cache["a"] == "newer"


# ----------------------------------------------------------------------------- @cached


def test_cached_memoizes_through_the_cache(make_cache) -> None:
    cache = make_cache(quiet=True)
    calls = []

    @cached(cache)
    def square(x: int, *, offset: int = 0) -> int:
        calls.append((x, offset))
        return x * x + offset

    assert square(3) == 9
    assert square(3) == 9
    assert square(3, offset=1) == 10
    assert calls == [(3, 0), (3, 1)]
    assert cache.copy() == {hashkey(3): 9, hashkey(3, offset=1): 10}
    assert cache.pending == 0
    assert square.cache is cache and square.cache_key is hashkey
    assert square.__wrapped__.__name__ == "square" and square.__name__ == "square"


def test_cached_calls_the_function_once_for_concurrent_callers(make_cache) -> None:
    cache = make_cache(quiet=True)
    loader = GatedLoader(value=42)

    @lazycache.cached(cache, key=lambda x: ("answer", x))
    def answer(x: int) -> object:
        return loader(x)

    assert _concurrently(cache, loader, lambda: answer(1), 6) == [42] * 6
    assert loader.calls == [1]
    assert cache.copy() == {("answer", 1): 42}


def test_cached_under_many_threads_and_keys_calls_once_per_key(make_cache) -> None:
    cache = make_cache(quiet=True)
    counts: dict[int, int] = {}
    lock = threading.Lock()

    @cached(cache)
    def work(x: int) -> int:
        with lock:
            counts[x] = counts.get(x, 0) + 1
        return -x

    def hammer(_: int) -> None:
        for x in range(200):
            assert work(x) == -x

    run_threads(hammer, [(i,) for i in range(4)])
    assert counts == dict.fromkeys(range(200), 1)


def test_typedkey_caches_int_and_float_apart(make_cache) -> None:
    cache = make_cache(quiet=True)

    @cached(cache, key=typedkey)
    def kind(x: object) -> str:
        return type(x).__name__

    assert (kind(1), kind(1.0)) == ("int", "float")
    assert hashkey(1) == hashkey(1.0) and typedkey(1) != typedkey(1.0)


def test_cached_refuses_what_it_cannot_memoize(make_cache) -> None:
    with pytest.raises(TypeError, match="LazyWriterCache"):
        cached({})
    with pytest.raises(TypeError, match="key must be callable"):
        cached(make_cache(quiet=True), key="x")

    async def coroutine() -> None:
        return None

    with pytest.raises(TypeError, match="coroutine function"):
        cached(make_cache(quiet=True))(coroutine)
