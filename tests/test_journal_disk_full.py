"""A journaled write and its record succeed or fail together: a full disk changes nothing."""

from __future__ import annotations

import errno
import glob
import os
import resource
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import run_in_forked_child

from lazycache import MemoryStore
from lazycache.cache import implementation_class

_kept: list[Any] = []

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="POSIX only")


def _fill_the_disk_after(path: str, room: int) -> None:
    """From now on (this process only) files cannot grow past the current segment + `room` bytes."""
    # Without this, exceeding the limit kills the process (SIGXFSZ) instead of failing write().
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    (segment,) = glob.glob(path + ".*.*")
    limit = os.path.getsize(segment) + room
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_a_write_whose_journal_append_fails_is_not_applied(
    impl: str, tmp_path: Path, fsync: str
) -> None:
    path = str(tmp_path / "j")

    def child() -> dict[str, Any]:
        cache = implementation_class(impl)(
            MemoryStore(), journal=path, journal_fsync=fsync, write_interval=3600
        )
        cache["a"] = 1
        cache["b"] = "x" * 10
        _fill_the_disk_after(path, 60)
        outcome: dict[str, Any] = {}
        try:
            cache["big"] = "y" * 5000  # part of its record fits, the rest does not
        except OSError as exc:
            outcome["set_errno"] = exc.errno
        outcome["big_in_cache"] = "big" in cache
        outcome["pending_after_failed_set"] = cache.pending
        try:
            del cache["a"]  # a small record still fits after the failed one was cut back
        except OSError as exc:
            outcome["del_error"] = repr(exc)
            return outcome
        try:
            cache.update_entry("b", lambda v: v + "z" * 5000)
        except OSError as exc:
            outcome["update_errno"] = exc.errno
        outcome["b"] = cache["b"]
        outcome["a_in_cache"] = "a" in cache
        _kept.append(cache)  # not collected (and so closed) before the child's os._exit
        return outcome  # the child then dies unflushed: the journal stays for the next process

    outcome = run_in_forked_child(child)
    assert outcome["set_errno"] == errno.EFBIG
    assert outcome["big_in_cache"] is False  # the failed write left no trace in the cache
    assert outcome["pending_after_failed_set"] == 2
    assert "del_error" not in outcome  # the torn part was cut back: smaller records still fit
    assert outcome["update_errno"] == errno.EFBIG
    assert outcome["b"] == "x" * 10
    assert outcome["a_in_cache"] is False

    # What the next process replays is exactly what the first one acknowledged: the failed
    # appends were cut back, so they are neither replayed nor reported as damage.
    from lazycache.journal import Journal

    journal = Journal(path)
    try:
        replayed = [(e.key, e.value) for e in journal.recovered]
        assert not [d for s in journal.leftovers for d in s.damage]
    finally:
        journal.close(committed=False)
    from lazycache import MISSING

    assert replayed == [("a", 1), ("b", "x" * 10), ("a", MISSING)]


def test_every_journaled_change_is_refused_whole_when_the_disk_is_full(
    impl: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "j")

    def child() -> dict[str, Any]:
        cache = implementation_class(impl)(
            MemoryStore(), journal=path, journal_fsync="always", write_interval=3600
        )
        cache.update({"a": 1, "b": 2, "c": 3})
        before = (cache.copy(), cache.pending)
        _fill_the_disk_after(path, 0)
        changes = {
            "set": lambda: cache.__setitem__("a", 10),
            "del": lambda: cache.__delitem__("a"),
            "pop": lambda: cache.pop("b"),
            "popitem": cache.popitem,
            "setdefault": lambda: cache.setdefault("new", 0),
            "discard": lambda: cache.discard("c"),
            "clear": cache.clear,
            "update_entry": lambda: cache.update_entry("a", lambda v: v + 1),
            "update": lambda: cache.update({"z": 26}),
        }
        errors = {}
        for name, change in changes.items():
            try:
                change()
            except OSError as exc:
                errors[name] = exc.errno
            assert (cache.copy(), cache.pending) == before, f"{name} changed the cache"
        _kept.append(cache)
        return errors

    errors = run_in_forked_child(child)
    assert errors == dict.fromkeys(
        [
            "set",
            "del",
            "pop",
            "popitem",
            "setdefault",
            "discard",
            "clear",
            "update_entry",
            "update",
        ],
        errno.EFBIG,
    )
    from lazycache.journal import records_of

    assert records_of(path) == [("a", 1), ("b", 2), ("c", 3)]
