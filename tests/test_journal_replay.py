"""Replay: not held back by backpressure, and a record it cannot decode is named with a way on."""

from __future__ import annotations

import glob
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import FailingStore


def leave_a_journal(make_cache: Any, path: str, items: dict[Any, Any], **options: Any) -> None:
    """A cache whose store is down journals `items`, then closes without writing them."""
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=path, close_may_fail=True, write_interval=3600, **options)
    for key, value in items.items():
        cache[key] = value
    with pytest.raises(Exception):
        cache.close(timeout=0.3)


@pytest.mark.parametrize("on_full", ["block", "raise", "write-through"])
def test_replay_of_more_keys_than_max_pending_succeeds_under_every_on_full(
    make_cache: Any, tmp_path: Path, on_full: str
) -> None:
    path = str(tmp_path / "j")
    items = {f"k{i}": i for i in range(50)}
    leave_a_journal(make_cache, path, items)
    store = FailingStore()
    cache = make_cache(store, journal=path, max_pending=10, on_full=on_full, block_timeout=0.5)
    assert cache.pending <= 10  # flushed as it went: memory stayed within the bound
    cache.close()
    assert store.data == items


@pytest.mark.parametrize("on_full", ["block", "raise", "write-through"])
def test_replay_goes_past_max_pending_while_the_store_is_down(
    make_cache: Any, tmp_path: Path, on_full: str
) -> None:
    path = str(tmp_path / "j")
    items = {f"k{i}": i for i in range(30)}
    leave_a_journal(make_cache, path, items)
    store = FailingStore()
    store.fail = True
    cache = make_cache(
        store,
        journal=path,
        max_pending=10,
        on_full=on_full,
        block_timeout=0.5,
        close_may_fail=True,
        write_interval=3600,
    )
    assert cache.pending == 30  # acknowledged long ago: kept, journaled again, not refused
    store.fail = False
    cache.close()
    assert store.data == items


@pytest.fixture
def vanishing_class() -> Any:
    """A class pickled from a module that no longer exists when the journal is replayed."""
    module = types.ModuleType("gone_module")
    exec("class Point:\n    def __init__(self, x):\n        self.x = x\n", module.__dict__)
    module.Point.__module__ = "gone_module"
    sys.modules["gone_module"] = module
    yield module.Point
    sys.modules.pop("gone_module", None)


def test_an_undecodable_record_names_file_offset_and_key_and_can_be_set_aside(
    make_cache: Any, tmp_path: Path, vanishing_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from lazycache.journal import JournalError

    path = str(tmp_path / "j")
    leave_a_journal(
        make_cache,
        path,
        {"before": 1, "point": vanishing_class(3), "after": 2},
        journal_serializer="pickle",
    )
    del sys.modules["gone_module"]  # the class is no longer importable
    (segment,) = [n for n in glob.glob(path + ".*.*") if os.path.getsize(n)]

    store = FailingStore()
    with pytest.raises(JournalError) as info:
        make_cache(store, journal=path, journal_serializer="pickle")
    message = str(info.value)
    assert segment in message and "offset" in message and "'point'" in message
    assert "gone_module" in message and 'journal_errors="quarantine"' in message
    assert os.path.exists(segment)  # nothing moved: the cause can be fixed and the open retried

    with caplog.at_level(logging.ERROR, logger="lazycache"):
        cache = make_cache(
            store, journal=path, journal_serializer="pickle", journal_errors="quarantine"
        )
        cache.close()
    assert store.data == {"before": 1, "after": 2}
    assert "'point'" in caplog.text and segment in caplog.text
    assert os.path.exists(segment + ".quarantined") and not os.path.exists(segment)

    # Once the class is importable again, the kept file replays what was skipped.
    sys.modules["gone_module"] = sys.modules.get("gone_module") or _module_with(vanishing_class)
    os.rename(segment + ".quarantined", segment)
    make_cache(store, journal=path, journal_serializer="pickle").close()
    assert store.data["point"].x == 3


def _module_with(cls: type) -> types.ModuleType:
    module = types.ModuleType("gone_module")
    module.Point = cls  # type: ignore[attr-defined]
    return module


def test_an_undecodable_record_in_a_json_journal_is_named(make_cache: Any, tmp_path: Path) -> None:
    from lazycache.journal import Journal, JournalError

    path = str(tmp_path / "j")
    journal = Journal(path, fsync="no")
    with journal.lock:
        journal.append(journal.encode("good", 1))
        bad = journal.encode("bad", 2)
        journal.append(bad[:-1] + b"{")  # intact framing, a value JSON cannot read
    journal.close(committed=False)
    with pytest.raises(JournalError, match="'bad'"):
        make_cache(journal=path)
