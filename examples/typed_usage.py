"""The public API with its static types: `make lint` checks this file with mypy --strict and pyright.

    python examples/typed_usage.py

It runs, too (the tests run it on each core): caches over a MemoryStore, over a SQLite
file (through SQLAlchemyStore, and through `lazycache.open`), and over a store of one's own
that rejects some values, with an `on_write_error` callback. The SQLite file is temporary.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import lazycache
from lazycache import (
    MISSING,
    CacheStats,
    FlushError,
    FlushResult,
    GeneratedFields,
    LazyWriterCache,
    MemoryStore,
    Store,
)
from lazycache.stores.sqlalchemy import SQLAlchemyStore


class ScoreStore(Store[str, int]):
    """A store of one's own: a dict that refuses negative scores, as a CHECK constraint would."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def load_many(self, keys: Sequence[str]) -> Mapping[str, int]:
        return {key: self.rows[key] for key in keys if key in self.rows}

    def write(
        self, upserts: Sequence[tuple[str, int]], deletes: Sequence[str]
    ) -> GeneratedFields | None:
        for key, score in upserts:  # all or nothing: check the whole batch first
            if score < 0:
                raise ValueError(f"negative score for {key!r}")
        self.rows.update(upserts)
        for key in deletes:
            self.rows.pop(key, None)
        return None

    def is_recoverable(self, exc: BaseException) -> bool:
        # A refused value fails again on retry: it goes to on_write_error instead.
        return not isinstance(exc, ValueError)


def over_memory() -> None:
    store: MemoryStore[str, int] = MemoryStore({"seen": 1})
    # write_interval: no background flush here, so that the flush() below writes everything.
    cache: LazyWriterCache[str, int] = LazyWriterCache(store, maxsize=1000, write_interval=3600)
    with cache:
        cache["a"] = 1
        count: int = cache["seen"]  # read through from the store
        assert count == 1 and "seen" in cache and len(cache) == 2
        got: int | None = cache.get("missing")
        assert got is None and cache.get("missing", 0) == 0
        assert cache.setdefault("b", 2) == 2
        assert cache.update_entry("a", lambda n: n + 10) == 11 and cache["a"] == 11
        assert cache.update_entry("new", lambda n: n + 1, default=0) == 1
        assert cache.pop("b") == 2 and cache.pop("b", -1) == -1
        del cache["new"]
        result: FlushResult = cache.flush()
        assert result.ok and result.written == 1 and result.deleted == 2
        assert store.data == {"seen": 1, "a": 11}
        keys: list[str] = sorted(cache.keys())
        items: dict[str, int] = dict(cache.items())
        assert keys == ["a", "seen"] and items == {"a": 11, "seen": 1}
        stats: CacheStats = cache.stats
        assert stats.pending == 0 and stats.hit_ratio > 0
    assert cache.closed


def over_sqlite(path: str) -> None:
    store = SQLAlchemyStore(f"sqlite:///{path}", "scores")
    # The cache owns the store: closing the cache disposes of the store's engine.
    cache = LazyWriterCache[str, Any](store, owns_store=True, write_interval=3600)
    cache["alice"] = {"score": 3}
    cache["bob"] = [1, 2]
    closed: FlushResult | None = cache.close()  # the final flush; None if already closed
    assert closed is not None and closed.written == 2
    with lazycache.open(f"sqlite:///{path}", "scores") as again:
        assert again["alice"] == {"score": 3} and again["bob"] == [1, 2]
        again.update_entry("alice", lambda value: {"score": value["score"] + 1})
    # open()'s options are typed (a misspelt one is a type error); its keys follow key_type
    # (str by default), and the variable's annotation gives the value type.
    third: LazyWriterCache[str, dict[str, int]] = lazycache.open(
        f"sqlite:///{path}", "scores", implementation=lazycache.IMPLEMENTATION, maxsize=100
    )
    try:
        assert third["alice"] == {"score": 4}
    finally:
        third.close()
    by_id = lazycache.open(f"sqlite:///{path}", "by_id", key_type=int, write_interval=3600)
    with by_id:
        by_id[7] = "seven"
        ids: list[int] = list(by_id)
        assert ids == [7]


def over_own_store() -> None:
    rejected: list[tuple[str, Any]] = []

    def on_write_error(key: Any, value: Any, exc: BaseException) -> None:
        rejected.append((key, value))  # instead of the default: an ERROR log line

    store = ScoreStore()
    cache: LazyWriterCache[str, int] = LazyWriterCache(
        store, write_interval=3600, on_write_error=on_write_error
    )
    with cache:
        cache["ok"] = 5
        cache["bad"] = -1
        try:
            cache.flush()
        except FlushError as exc:
            assert exc.result.poisoned_keys == ("bad",) and exc.result.written == 1
        else:
            raise AssertionError("the store accepted a negative score")
        assert rejected == [("bad", -1)] and store.rows == {"ok": 5}
        errors: dict[Any, BaseException] = cache.write_errors
        assert isinstance(errors["bad"], ValueError)
        cache["bad"] = 0  # a later write that succeeds takes the key off the error list
        cache.flush()
        assert cache.write_errors == {} and store.rows == {"ok": 5, "bad": 0}
        del cache["ok"]
        assert cache.get("ok", MISSING) is MISSING


def main() -> None:
    over_memory()
    with tempfile.TemporaryDirectory() as directory:
        over_sqlite(os.path.join(directory, "typed_usage.db"))
    over_own_store()
    print(f"typed usage: ok ({lazycache.IMPLEMENTATION} core)")


if __name__ == "__main__":
    main()
