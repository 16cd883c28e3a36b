"""Keys that turn hostile while the cache holds them, mixed with ordinary keys, on both cores.

A key whose ``__hash__`` and ``__eq__`` start raising after it was inserted must not
wedge the core: deleting, evicting, popping, forgetting or committing it settles every
other entry of the batch. The pure-Python core re-hashed such a key to take it out of
its map (so a commit raised half way and left the rest of the batch in flight for
ever, and an eviction or a popitem raised); the compiled core finds entries by their
stored hash. Both must behave the same.

A MemoryStore (a dict) hashes every key it is given, so there the hostile key is
rejected and goes to on_write_error; a real SQLite store takes it as the string it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import FailingStore
from test_poison_isolation import recorder, rows

from lazycache import MISSING, FlushError, MemoryStore
from lazycache.stores.sqlalchemy import SQLAlchemyStore


class HostileName(str):
    """A str key (SQL stores take it as it is) whose hash and eq raise once `broken` is set."""

    broken = False  # set on an instance to break that key only

    def __hash__(self) -> int:
        if self.broken:
            raise RuntimeError(f"the hash of {str(self)!r} is broken")
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        if self.broken:
            raise RuntimeError(f"the eq of {str(self)!r} is broken")
        return str.__eq__(self, other)

    __ne__ = object.__ne__  # the inverse of __eq__, raising with it


def plain(data: dict[Any, Any]) -> dict[str, Any]:
    """The store's contents with plain str keys: comparing never calls a hostile key."""
    return {str(key): value for key, value in data.items()}


def same(keys: Any, expected: Any) -> bool:
    """Whether two sequences hold the same objects, in order (compared by identity)."""
    keys, expected = list(keys), list(expected)
    return len(keys) == len(expected) and all(a is b for a, b in zip(keys, expected))


def holds(cache: Any, key: Any) -> bool:
    """Whether `key` itself is among the cache's keys (by identity: no hash, no eq)."""
    return any(k is key for k in cache.keys())


@pytest.fixture
def sqlite_store(tmp_path: Any) -> Iterator[SQLAlchemyStore]:
    store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'hostile.db'}", "lc")
    yield store
    store.close()


ORDINARY_BEFORE = {f"a{i}": i for i in range(10)}
ORDINARY_AFTER = {f"b{i}": i for i in range(10)}
ORDINARY = {**ORDINARY_BEFORE, **ORDINARY_AFTER}


def delete_between_ordinary_writes(cache: Any, hostile: HostileName) -> None:
    """Writes `hostile` to the store, then queues ordinary sets, its delete, more ordinary sets."""
    cache[hostile] = "old"
    cache.flush()
    cache.update(ORDINARY_BEFORE)
    del cache[hostile]
    cache.update(ORDINARY_AFTER)
    hostile.broken = True


# ----------------------------------------------------------------- delete, committed in a batch
def test_the_delete_of_a_key_whose_hash_broke_is_rejected_alone_and_nothing_stays_pending(
    make_cache,
) -> None:
    errors = recorder()
    store = MemoryStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    hostile = HostileName("hostile")
    delete_between_ordinary_writes(cache, hostile)
    with pytest.raises(FlushError) as info:
        cache.flush()
    result = info.value.result
    assert same(result.poisoned_keys, [hostile]) and result.failed_keys == ()
    assert result.written == len(ORDINARY)
    assert same([k for k, _, _ in errors.calls], [hostile])
    assert errors.calls[0][1] is MISSING  # reported as the delete it was
    assert cache.pending == 0 and cache._pending_keys() == []
    assert plain(store.data) == {"hostile": "old", **ORDINARY}
    assert not holds(cache, hostile) and len(cache) == len(ORDINARY)
    cache["later"] = 1  # nothing is left in flight to block or fail the next flush
    later = cache.flush()
    assert later.ok and later.written == 1 and store.data["later"] == 1


def test_the_delete_of_a_key_whose_hash_broke_reaches_sqlite_with_its_whole_batch(
    make_cache, sqlite_store
) -> None:
    errors = recorder()
    cache = make_cache(sqlite_store, quiet=True, on_write_error=errors)
    hostile = HostileName("hostile")
    delete_between_ordinary_writes(cache, hostile)
    result = cache.flush()
    assert result.ok and result.written == len(ORDINARY) and result.deleted == 1
    assert errors.calls == [] and cache.pending == 0
    assert rows(sqlite_store.engine, "lc") == ORDINARY
    assert not holds(cache, hostile) and len(cache) == len(ORDINARY)


# ----------------------------------------------------------------- sets, updates and deletes mixed
def mixed_batch(cache: Any) -> dict[str, HostileName]:
    """Queues, between ordinary keys: a new hostile key, an update and a delete of written ones."""
    hostile = {name: HostileName(name) for name in ("h_set", "h_update", "h_delete")}
    cache[hostile["h_update"]] = "old"
    cache[hostile["h_delete"]] = "old"
    cache.flush()
    for i in range(30):
        cache[f"k{i}"] = i
        if i == 5:
            cache[hostile["h_set"]] = "new"
        elif i == 15:
            cache[hostile["h_update"]] = "new"
        elif i == 25:
            del cache[hostile["h_delete"]]
    for key in hostile.values():
        key.broken = True
    return hostile


def test_hostile_sets_updates_and_deletes_in_one_batch_are_each_rejected_alone(
    make_cache,
) -> None:
    errors = recorder()
    store = MemoryStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    hostile = mixed_batch(cache)
    with pytest.raises(FlushError) as info:
        cache.flush()
    result = info.value.result
    assert result.failed_keys == () and result.written == 30
    assert {id(k) for k in result.poisoned_keys} == {id(k) for k in hostile.values()}
    assert {id(k): v for k, v, _ in errors.calls} == {
        id(hostile["h_set"]): "new",
        id(hostile["h_update"]): "new",
        id(hostile["h_delete"]): MISSING,
    }
    assert cache.pending == 0
    ordinary = {f"k{i}": i for i in range(30)}
    assert plain(store.data) == {"h_update": "old", "h_delete": "old", **ordinary}
    # The rejected sets stay readable in memory, the rejected delete stays done.
    assert holds(cache, hostile["h_set"]) and holds(cache, hostile["h_update"])
    assert not holds(cache, hostile["h_delete"]) and len(cache) == 32
    assert cache.flush().ok


def test_hostile_sets_updates_and_deletes_in_one_batch_all_reach_sqlite(
    make_cache, sqlite_store
) -> None:
    errors = recorder()
    cache = make_cache(sqlite_store, quiet=True, on_write_error=errors)
    mixed_batch(cache)
    result = cache.flush()
    assert result.ok and result.written == 32 and result.deleted == 1
    assert errors.calls == [] and cache.pending == 0
    expected = {f"k{i}": i for i in range(30)}
    assert rows(sqlite_store.engine, "lc") == {"h_set": "new", "h_update": "new", **expected}


def test_a_failed_batch_holding_a_hostile_delete_is_put_back_whole_and_written_later(
    make_cache,
) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    hostile = HostileName("hostile")
    delete_between_ordinary_writes(cache, hostile)
    store.fail = True  # the store is down: the batch goes back to the queue
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert len(info.value.result.failed_keys) == len(ORDINARY) + 1
    assert cache.pending == len(ORDINARY) + 1
    store.fail = False
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert same(info.value.result.poisoned_keys, [hostile])
    assert info.value.result.failed_keys == () and cache.pending == 0
    assert plain(store.data) == {"hostile": "old", **ORDINARY}


# ----------------------------------------------------------------- eviction, invalidate, clear_dirty
def test_a_clean_key_whose_hash_broke_is_evicted_and_the_other_entries_stay(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True, maxsize=5)
    hostile = HostileName("hostile")
    cache[hostile] = "value"  # ring slot 0: the first the CLOCK hand evicts
    for i in range(9):
        cache[f"k{i}"] = i
    assert cache.flush().ok
    hostile.broken = True
    assert cache.prune() == 5
    assert not holds(cache, hostile) and len(cache) == 5
    assert sorted(cache.keys()) == [f"k{i}" for i in range(4, 9)]
    assert all(cache[f"k{i}"] == i for i in range(4, 9))
    hostile.broken = False
    assert cache[hostile] == "value" and len(cache) == 6  # read back from the store


def test_invalidate_drops_a_clean_key_whose_hash_broke_with_every_other(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    hostile = HostileName("hostile")
    cache.update(ORDINARY_BEFORE)
    cache[hostile] = "value"
    cache.update(ORDINARY_AFTER)
    assert cache.flush().ok
    hostile.broken = True
    assert cache.invalidate().ok
    assert len(cache) == 0 and list(cache.keys()) == [] and cache.pending == 0


def test_clear_dirty_forgets_a_queued_delete_of_a_key_whose_hash_broke(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    hostile = HostileName("hostile")
    delete_between_ordinary_writes(cache, hostile)
    assert cache.clear_dirty() == len(ORDINARY) + 1
    assert cache.pending == 0 and not holds(cache, hostile)
    result = cache.flush()
    assert result.ok and result.written == 0


# ----------------------------------------------------------------- popitem, update_entry
def test_popitem_takes_a_key_whose_hash_broke_and_its_delete_is_settled(make_cache) -> None:
    errors = recorder()
    store = MemoryStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    hostile = HostileName("hostile")
    cache.update(ORDINARY_BEFORE)
    cache[hostile] = "value"  # the most recently inserted
    assert cache.flush().ok
    hostile.broken = True
    key, value = cache.popitem()
    assert key is hostile and value == "value"
    cache.update(ORDINARY_AFTER)
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert same(info.value.result.poisoned_keys, [hostile])
    assert info.value.result.failed_keys == () and cache.pending == 0
    assert same([k for k, _, _ in errors.calls], [hostile])
    assert plain(store.data) == {"hostile": "value", **ORDINARY}
    assert cache.popitem() == ("b9", 9)


def test_changing_a_key_whose_hash_broke_raises_at_the_call_and_changes_nothing(
    make_cache,
) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    hostile = HostileName("hostile")
    cache[hostile] = 1
    cache["counter"] = 1
    hostile.broken = True
    with pytest.raises(RuntimeError, match="is broken"):
        cache.update_entry(hostile, lambda n: n + 1)
    with pytest.raises(RuntimeError, match="is broken"):
        cache[hostile] = 2
    with pytest.raises(RuntimeError, match="is broken"):
        del cache[hostile]
    assert cache.update_entry("counter", lambda n: n + 1) == 2
    assert cache.pending == 2
    hostile.broken = False
    assert cache.flush().ok
    assert store.data == {"hostile": 1, "counter": 2}


# ----------------------------------------------------------------- a key that works again
def test_a_held_key_whose_hash_broke_while_another_left_is_found_again_once_it_works(
    make_cache,
) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    gone, kept = HostileName("gone"), HostileName("kept")
    cache.update(ORDINARY_BEFORE)
    cache[gone] = "gone"
    cache[kept] = "kept"
    cache.update(ORDINARY_AFTER)
    assert cache.flush().ok
    del cache[gone]
    gone.broken = kept.broken = True
    with pytest.raises(FlushError):
        cache.flush()  # the delete of `gone` is rejected; the core lets go of it anyway
    assert cache.pending == 0 and not holds(cache, gone) and holds(cache, kept)
    gone.broken = kept.broken = False
    # Memory let go of `gone`: a read goes to the store, where its delete never arrived.
    assert cache.get(gone) == "gone"
    del cache[gone]
    assert cache[kept] == cache[HostileName("kept")] == cache["kept"] == "kept"
    assert list(cache.keys()) == [*ORDINARY_BEFORE, "kept", *ORDINARY_AFTER]
    assert holds(cache, kept)  # the key itself, as inserted
    cache["kept"] = "again"
    assert len(cache) == len(ORDINARY) + 1 and cache[kept] == "again"
    del cache[kept]
    assert cache.flush().ok and "kept" not in store.data
    assert len(cache) == len(ORDINARY) and cache.popitem() == ("b9", 9)


# ----------------------------------------------------------------- invalidation from another cache
def test_an_invalidation_that_meets_a_hostile_key_still_drops_every_other_key(make_cache) -> None:
    store = MemoryStore()
    cache = make_cache(store, quiet=True)
    hostile = HostileName("k1")
    cache[hostile] = "held"
    cache["k2"] = "clean"
    assert cache.flush().ok
    cache["k3"] = "pending"
    hostile.broken = True
    # "k1" from another process hashes like the held key, whose eq now raises.
    with pytest.raises(RuntimeError, match="is broken"):
        cache._invalidate(["k1", "k2", "k3"])
    assert {str(k) for k in cache.keys()} == {"k1", "k3"}  # k2 dropped, k3 kept (pending)
    assert cache.pending == 1
    hostile.broken = False
    assert cache.flush().ok and store.data == {"k1": "held", "k2": "clean", "k3": "pending"}
