"""LazyWriterCache is a MutableMapping that behaves like a dict."""

from __future__ import annotations

import types
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView

import pytest

from lazycache import MemoryStore


def test_is_a_mutable_mapping(make_cache) -> None:
    cache = make_cache()
    assert isinstance(cache, MutableMapping)
    assert isinstance(cache, Mapping)


def test_get_returns_value_or_default(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    assert cache.get("a") == 1
    assert cache.get("missing") is None
    assert cache.get("missing", 7) == 7


def test_stored_none_is_a_value_not_a_miss(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = None
    assert "a" in cache
    assert cache["a"] is None
    assert cache.get("a", 5) is None
    assert cache.setdefault("a", 5) is None


def test_getitem_of_missing_key_raises_key_error(make_cache) -> None:
    cache = make_cache(quiet=True)
    with pytest.raises(KeyError):
        cache["missing"]


def test_setdefault_sets_only_when_absent(make_cache) -> None:
    cache = make_cache(quiet=True)
    assert cache.setdefault("a", 1) == 1
    assert cache.setdefault("a", 2) == 1
    assert cache["a"] == 1
    assert cache.setdefault("b") is None
    assert "b" in cache


def test_pop_returns_value_and_removes_key(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    assert cache.pop("a") == 1
    assert "a" not in cache
    with pytest.raises(KeyError):
        cache.pop("a")
    assert cache.pop("a", "default") == "default"


def test_popitem_removes_most_recently_inserted(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3
    assert cache.popitem() == ("c", 3)
    assert dict(cache) == {"a": 1, "b": 2}
    cache.popitem()
    cache.popitem()
    with pytest.raises(KeyError):
        cache.popitem()


def test_update_from_mapping_iterable_and_kwargs(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache.update({"a": 1})
    cache.update([("b", 2)])
    cache.update(c=3)
    assert dict(cache.items()) == {"a": 1, "b": 2, "c": 3}
    assert cache.pending == 3


def test_contains_and_len(make_cache) -> None:
    cache = make_cache(quiet=True)
    assert len(cache) == 0
    cache["a"] = 1
    cache["b"] = 2
    assert "a" in cache and "b" in cache
    assert "c" not in cache
    assert len(cache) == 2
    del cache["a"]
    assert "a" not in cache
    assert len(cache) == 1


def test_iteration_yields_keys_in_memory(make_cache) -> None:
    cache = make_cache(MemoryStore({"store-only": 0}), quiet=True)
    for key in ("a", "b", "c"):
        cache[key] = key.upper()
    del cache["b"]
    assert list(cache) == ["a", "c"]
    assert sorted(iter(cache)) == ["a", "c"]


def test_iteration_is_a_snapshot_safe_against_changes(make_cache) -> None:
    cache = make_cache(quiet=True)
    for i in range(10):
        cache[i] = i
    for key in cache:
        cache[key + 100] = key
        del cache[key]
    assert sorted(cache) == list(range(100, 110))


def test_clear_deletes_everything_in_memory(make_cache) -> None:
    store = MemoryStore({"old": 0, "store-only": 1})
    cache = make_cache(store, quiet=True)
    assert cache["old"] == 0
    cache["a"] = 1
    cache.clear()
    assert len(cache) == 0
    assert "a" not in cache and "old" not in cache
    cache.flush()
    assert store.data == {"store-only": 1}


def test_copy_is_a_plain_dict_snapshot(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    snapshot = cache.copy()
    assert type(snapshot) is dict
    assert snapshot == {"a": 1}
    cache["b"] = 2
    assert snapshot == {"a": 1}


def test_views_have_the_mapping_view_types(make_cache) -> None:
    cache = make_cache(quiet=True)
    assert isinstance(cache.keys(), KeysView)
    assert isinstance(cache.values(), ValuesView)
    assert isinstance(cache.items(), ItemsView)


def test_views_are_live(make_cache) -> None:
    cache = make_cache(quiet=True)
    keys, values, items = cache.keys(), cache.values(), cache.items()
    assert len(keys) == 0 and list(values) == [] and list(items) == []
    cache["a"] = 1
    cache["b"] = 2
    assert set(keys) == {"a", "b"}
    assert keys == {"a", "b"}
    assert "a" in keys
    assert sorted(values) == [1, 2]
    assert 2 in values
    assert set(items) == {("a", 1), ("b", 2)}
    assert ("a", 1) in items and ("a", 2) not in items
    del cache["a"]
    cache["b"] = 3
    assert list(keys) == ["b"] and len(keys) == 1
    assert list(values) == [3]
    assert list(items) == [("b", 3)]


def test_equals_a_dict_with_the_same_items(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    cache["b"] = [2]
    assert cache == {"a": 1, "b": [2]}
    assert {"a": 1, "b": [2]} == cache
    assert cache != {"a": 1}
    assert cache != {"a": 1, "b": [3]}
    assert (cache == [("a", 1)]) is False


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda c, k: c.__setitem__(k, 1), id="set"),
        pytest.param(lambda c, k: c[k], id="getitem"),
        pytest.param(lambda c, k: c.get(k), id="get"),
        pytest.param(lambda c, k: c.__delitem__(k), id="del"),
        pytest.param(lambda c, k: k in c, id="in"),
        pytest.param(lambda c, k: c.pop(k, None), id="pop"),
        pytest.param(lambda c, k: c.setdefault(k, 1), id="setdefault"),
        pytest.param(lambda c, k: c.discard(k), id="discard"),
        pytest.param(lambda c, k: c.update_entry(k, lambda v: v, 0), id="update_entry"),
    ],
)
def test_unhashable_key_raises_type_error_at_the_call(make_cache, operation) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    with pytest.raises(TypeError):
        operation(cache, ["unhashable"])
    assert dict(cache) == {"a": 1}
    assert cache.pending == 1
    cache.flush()
    assert cache.store.data == {"a": 1}


def test_failed_operation_with_unhashable_key_is_not_counted(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    before = cache.stats
    for operation in (
        lambda: cache.__setitem__([1], 1),
        lambda: cache.discard([1]),
        lambda: cache.get([1]),
    ):
        with pytest.raises(TypeError):
            operation()
    after = cache.stats
    assert (after.stores, after.deletes, after.hits, after.misses) == (
        before.stores,
        before.deletes,
        before.hits,
        before.misses,
    )


def test_equal_keys_of_different_types_share_an_entry(make_cache) -> None:
    cache = make_cache(quiet=True)
    cache[1] = "int"
    assert cache[1.0] == "int"
    cache[True] = "bool"  # 1 == 1.0 == True, as in a dict
    cache[1.0] = "float"
    assert len(cache) == 1
    assert cache[1] == "float"
    assert cache.pending == 1
    cache.flush()
    assert cache.store.data == {1: "float"}
    del cache[True]
    assert 1 not in cache and len(cache) == 0


def test_nan_key_is_found_by_identity(make_cache) -> None:
    cache = make_cache(quiet=True)
    nan = float("nan")
    cache[nan] = 1
    assert cache[nan] == 1
    assert float("nan") not in cache


def test_generic_subscript_works(cache_cls) -> None:
    alias = cache_cls[str, int]
    assert isinstance(alias, types.GenericAlias)
    assert alias.__origin__ is cache_cls
    assert alias.__args__ == (str, int)
    cache = alias(MemoryStore(), write_interval=60, prune_interval=60)
    try:
        assert isinstance(cache, cache_cls)
        cache["a"] = 1
        assert cache["a"] == 1
    finally:
        cache.close()


def test_cache_is_unhashable_like_a_dict(make_cache) -> None:
    with pytest.raises(TypeError):
        hash(make_cache())


def test_repr_names_core_and_counts(make_cache, impl) -> None:
    cache = make_cache(quiet=True)
    cache["a"] = 1
    text = repr(cache)
    assert f"({impl} core)" in text and "size=1" in text and "pending=1" in text
