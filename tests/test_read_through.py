"""A miss reads through to the store; what it loads is cached clean."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import TIMEOUT, FailingStore

from lazycache import MemoryStore


class SetWhileLoadingStore(MemoryStore):
    """Sets `racing_value` for the key being loaded, as another thread might, while the load runs."""

    cache = None
    racing_value = "newer"

    def load_many(self, keys):
        found = super().load_many(keys)
        if self.cache is not None:
            cache, self.cache = self.cache, None  # once
            for key in keys:
                cache[key] = self.racing_value
        return found


def test_miss_loads_from_store(make_cache) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store, quiet=True)
    assert cache["a"] == 1
    assert store.load_calls == [["a"]]
    assert cache["a"] == 1
    assert store.load_calls == [["a"]]  # the second read is served from memory
    stats = cache.stats
    assert (stats.loads, stats.misses, stats.hits, stats.size) == (1, 1, 1, 1)


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda c: c["a"], id="getitem"),
        pytest.param(lambda c: c.get("a"), id="get"),
        pytest.param(lambda c: "a" in c, id="in"),
        pytest.param(lambda c: c.setdefault("a", 0), id="setdefault"),
    ],
)
def test_every_read_reads_through(make_cache, read) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store, quiet=True)
    assert read(cache) in (1, True)
    assert store.load_calls == [["a"]]
    assert cache.stats.loads == 1
    assert dict(cache) == {"a": 1}


def test_loaded_entry_is_not_pending_and_never_written_back(make_cache) -> None:
    store = FailingStore({"a": 1, "b": 2})
    cache = make_cache(store, quiet=True)
    assert cache["a"] == 1
    assert cache.get("b") == 2
    assert cache.pending == 0
    cache["c"] = 3
    cache.flush()
    cache.close()
    assert store.upserted_keys == ["c"]


def test_loaded_entry_is_never_written_back_by_the_writer_thread(make_cache) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store)  # short intervals: the writer runs many times
    assert cache["a"] == 1
    cache["b"] = 2
    cache.close()
    assert store.upserted_keys == ["b"]


def test_miss_of_key_nowhere_is_a_key_error_and_caches_nothing(make_cache) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    with pytest.raises(KeyError):
        cache["nowhere"]
    assert cache.get("nowhere", "d") == "d"
    assert "nowhere" not in cache
    assert len(cache) == 0
    assert cache.stats.loads == 0


def test_read_through_off_gives_key_error(make_cache) -> None:
    store = FailingStore({"a": 1})
    cache = make_cache(store, quiet=True, read_through=False)
    assert cache.read_through is False
    with pytest.raises(KeyError):
        cache["a"]
    assert cache.get("a") is None
    assert "a" not in cache
    assert store.load_calls == []
    assert cache.stats.loads == 0


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda c: c["a"], id="getitem"),
        pytest.param(lambda c: c.get("a"), id="get"),
        pytest.param(lambda c: "a" in c, id="in"),
        pytest.param(lambda c: c.pop("a", None), id="pop"),
        pytest.param(lambda c: c.__delitem__("a"), id="del"),
    ],
)
def test_store_error_during_read_through_reaches_the_caller(make_cache, read) -> None:
    store = FailingStore({"a": 1})
    store.fail_loads = True
    cache = make_cache(store, quiet=True)
    with pytest.raises(ConnectionError):
        read(cache)
    assert len(cache) == 0
    assert cache.pending == 0  # a failed read-through must not record a delete either
    store.fail_loads = False
    assert cache["a"] == 1


def test_value_set_during_read_through_is_not_overwritten_by_the_load(make_cache) -> None:
    store = SetWhileLoadingStore({"a": "stored"})
    cache = make_cache(store, quiet=True)
    store.cache = cache
    assert cache.get("a") in ("stored", "newer")
    assert cache["a"] == "newer"
    cache.flush()
    assert store.data == {"a": "newer"}


def test_delete_during_read_through_wins_over_the_load(make_cache) -> None:
    class RacingStore(MemoryStore):
        cache = None

        def load_many(self, keys):
            found = super().load_many(keys)
            self.cache.discard("a")
            return found

    store = RacingStore({"a": "stored"})
    cache = make_cache(store, quiet=True)
    store.cache = cache
    cache.get("a")
    assert "a" not in cache
    cache.flush()
    assert store.data == {}


def test_pop_racing_a_set_returns_the_value_it_deleted(make_cache) -> None:
    # pop of a key memory does not hold reads the store; meanwhile another thread sets the
    # key. Either the set came first (pop deletes and returns "newer") or the pop did (pop
    # returns "stored" and "newer" stays). Deleting "newer" while returning "stored" loses it.
    store = SetWhileLoadingStore({"a": "stored"})
    cache = make_cache(store, quiet=True)
    store.cache = cache
    popped = cache.pop("a")
    outcome = (popped, cache.get("a", "<deleted>"))
    assert outcome in [("newer", "<deleted>"), ("stored", "newer")]


def test_del_racing_a_set_ends_with_one_of_the_two_orders(make_cache) -> None:
    store = SetWhileLoadingStore({"a": "stored"})
    cache = make_cache(store, quiet=True)
    store.cache = cache
    del cache["a"]  # the store has "a": no KeyError
    cache.flush()
    assert (cache.get("a"), store.data.get("a")) in [(None, None), ("newer", "newer")]


class GatedLoadsStore(MemoryStore):
    """Holds every load_many at its start until `release` is set; records each call's keys."""

    def __init__(self, data) -> None:
        super().__init__(data)
        self.release = threading.Event()
        self.calls: list[list] = []
        self._came = threading.Condition()

    def load_many(self, keys):
        with self._came:
            self.calls.append(list(keys))
            self._came.notify_all()
        assert self.release.wait(TIMEOUT), "the test never released the store"
        return super().load_many(keys)

    def wait_calls(self, count: int) -> None:
        with self._came:
            assert self._came.wait_for(lambda: len(self.calls) >= count, TIMEOUT), self.calls


def test_get_many_waits_for_a_key_another_thread_is_loading_and_loads_the_others_once(
    make_cache,
) -> None:
    store = GatedLoadsStore({"a": 1, "b": 2})
    cache = make_cache(store, quiet=True)
    with ThreadPoolExecutor(2) as pool:
        reader = pool.submit(cache.get, "a")
        store.wait_calls(1)  # the reader's load of "a" is held at its start
        many = pool.submit(cache.get_many, ["a", "b", "c"])
        store.wait_calls(2)  # get_many's own: "a" is the reader's
        store.release.set()
        assert many.result(TIMEOUT) == {"a": 1, "b": 2}
        assert reader.result(TIMEOUT) == 1
    assert store.calls == [["a"], ["b", "c"]]
    assert cache.stats.loads == 2 and cache._loading == {}


def test_get_many_raises_a_failed_loads_error_and_caches_nothing(make_cache) -> None:
    store = FailingStore({"a": 1, "b": 2})
    cache = make_cache(store, quiet=True)
    store.fail_loads = True
    with pytest.raises(ConnectionError):
        cache.get_many(["a", "b"])
    assert len(cache) == 0 and cache._loading == {}
    store.fail_loads = False
    assert cache.get_many(["b", "a"]) == {"b": 2, "a": 1}


def test_a_hostile_key_in_get_many_leaves_no_load_behind(make_cache) -> None:
    class CollidesAndRaises:
        """Hashes as "a" does; comparing it with "a" raises."""

        def __hash__(self) -> int:
            return hash("a")

        def __eq__(self, other: object) -> bool:
            if other == "a":
                raise RuntimeError("hostile eq")
            return other is self

    store = GatedLoadsStore({"a": 1, "b": 2})
    cache = make_cache(store, quiet=True)
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(cache.get, "a")
        store.wait_calls(1)  # "a" is loading: the hostile key meets it among the loads
        with pytest.raises(RuntimeError, match="hostile eq"):
            cache.get_many(["b", CollidesAndRaises()])
        assert list(cache._loading) == ["a"]  # "b", registered first, is not left behind
        store.release.set()
        assert reader.result(TIMEOUT) == 1
    assert cache.get("b") == 2  # not left waiting on a load nobody runs
    assert store.calls == [["a"], ["b"]]
