"""Fields the store generates (autoincrement ids) are merged back into the cached values."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

from helpers import IdStore


class Row:
    def __init__(self, name: str, id: int | None = None) -> None:
        self.name = name
        self.id = id


@dataclass(frozen=True)
class FrozenRow:
    name: str
    id: int | None = None


class TupleRow(NamedTuple):
    name: str
    id: int | None = None


def test_dict_value_gets_generated_id(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = {"name": "a"}
    cache["b"] = {"name": "b"}
    cache.flush()
    assert cache["a"] == {"name": "a", "id": 1}
    assert cache["b"] == {"name": "b", "id": 2}
    assert cache.pending == 0  # merging is not a change to write back


def test_object_value_gets_generated_attribute(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    row = Row("a")
    cache["a"] = row
    cache.flush()
    assert cache["a"] is row
    assert row.id == 1


def test_frozen_dataclass_and_named_tuple_are_replaced_by_updated_copies(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["frozen"] = FrozenRow("f")
    cache["tuple"] = TupleRow("t")
    cache.flush()
    assert cache["frozen"] == FrozenRow("f", 1)
    assert cache["tuple"] == TupleRow("t", 2)
    assert cache.pending == 0


def test_value_with_an_id_already_is_left_alone(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = {"name": "a", "id": 42}
    cache.flush()
    assert cache["a"] == {"name": "a", "id": 42}
    assert store.next_id == 1


def test_value_changed_during_write_keeps_newer_fields_and_gets_the_missing_id(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = {"name": "old"}
    store.hold()
    thread = threading.Thread(target=cache.flush, daemon=True)
    thread.start()
    store.wait_entered()
    cache["a"] = {"name": "new"}  # changed between take and commit, has no id yet
    store.release.set()
    thread.join(5)
    assert cache["a"] == {"name": "new", "id": 1}
    assert cache.pending == 1  # the newer value itself is still to be written
    cache.flush()
    assert store.data["a"] == {"name": "new", "id": 1}
    assert store.next_id == 2  # the id was not assigned twice


def test_value_changed_during_write_keeps_its_own_id(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = {"name": "old"}
    cache["b"] = Row("old")
    store.hold()
    thread = threading.Thread(target=cache.flush, daemon=True)
    thread.start()
    store.wait_entered()
    cache["a"] = {"name": "new", "id": 99}
    newer_row = Row("new", id=77)
    cache["b"] = newer_row
    store.release.set()
    thread.join(5)
    assert cache["a"] == {"name": "new", "id": 99}
    assert cache["b"] is newer_row and newer_row.id == 77


def test_value_changed_during_write_with_id_none_gets_the_id(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = Row("old")
    store.hold()
    thread = threading.Thread(target=cache.flush, daemon=True)
    thread.start()
    store.wait_entered()
    newer = Row("new", id=None)
    cache["a"] = newer
    store.release.set()
    thread.join(5)
    assert cache["a"] is newer
    assert (newer.name, newer.id) == ("new", 1)


def test_key_deleted_during_write_is_not_revived_by_the_merge(make_cache) -> None:
    store = IdStore()
    cache = make_cache(store, quiet=True)
    cache["a"] = {"name": "old"}
    store.hold()
    thread = threading.Thread(target=cache.flush, daemon=True)
    thread.start()
    store.wait_entered()
    del cache["a"]
    store.release.set()
    thread.join(5)
    assert "a" not in cache
    cache.flush()
    assert "a" not in store.data


def test_custom_merge_function_is_used(make_cache) -> None:
    calls = []

    def merge(value, generated, overwrite):
        calls.append((dict(generated), overwrite))
        return {**value, **{f"db_{k}": v for k, v in generated.items()}}

    store = IdStore()
    cache = make_cache(store, quiet=True, merge_generated=merge)
    cache["a"] = {"name": "a"}
    cache.flush()
    assert calls == [({"id": 1}, True)]
    assert cache["a"] == {"name": "a", "db_id": 1}
    assert cache.pending == 0
