"""Replay never runs code from a file it did not write, and records only what it can rebuild exactly."""

from __future__ import annotations

import glob
import os
import pickle
import pwd
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import FailingStore

from lazycache import SerializationError

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX owners and modes")


class _RunsCode:
    """Unpickling this creates a file: proof that replay ran the planted code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def plant(path: str, marker: str) -> str:
    """A segment named like the journal's, holding a pickled record (the old format) that runs code."""
    payload = pickle.dumps(("planted", _RunsCode(marker)))
    name = f"{path}.{1:020d}.4242"
    Path(name).write_bytes(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    os.chmod(name, 0o600)
    return name


def open_cache(make_cache: Any, path: str, **options: Any) -> tuple[Any, BaseException | None]:
    try:
        return make_cache(FailingStore(), journal=path, **options), None
    except Exception as exc:
        return None, exc


@pytest.mark.parametrize("who", ["another user", "group-writable"])
def test_a_planted_file_is_never_replayed(make_cache: Any, tmp_path: Path, who: str) -> None:
    path = str(tmp_path / "j")
    marker = str(tmp_path / "code-ran")
    planted = plant(path, marker)
    if who == "another user":
        nobody = pwd.getpwnam("nobody")
        os.chown(planted, nobody.pw_uid, nobody.pw_gid)
        reason = f"owned by uid {nobody.pw_uid}"
    else:
        os.chmod(planted, 0o620)
        reason = "writable by group"

    cache, error = open_cache(make_cache, path)
    assert not os.path.exists(marker), "replay ran code from a planted file"
    from lazycache.journal import JournalError

    # Refused, naming the file and why; nothing replayed, nothing moved.
    assert isinstance(error, JournalError), error
    assert planted in str(error) and reason in str(error)
    assert os.path.exists(planted)

    # The documented way on: keep it aside and open anyway.
    cache, error = open_cache(make_cache, path, journal_errors="quarantine")
    assert error is None and cache.pending == 0
    assert not os.path.exists(marker)
    assert os.path.exists(planted + ".quarantined") and not os.path.exists(planted)


def test_a_journal_in_a_directory_others_can_write_into_is_refused(
    make_cache: Any, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    from lazycache.journal import JournalError

    with pytest.raises(JournalError, match="writable by"):
        make_cache(journal=str(shared / "j"))
    os.chmod(shared, 0o700)
    make_cache(journal=str(shared / "j")).close()


def test_a_pickled_record_is_not_unpickled_unless_the_cache_chose_pickle(
    make_cache: Any, tmp_path: Path
) -> None:
    from lazycache.journal import Journal, JournalError
    from lazycache.serializers import PICKLE

    path = str(tmp_path / "j")
    marker = str(tmp_path / "code-ran")
    journal = Journal(path, fsync="no", serializer=PICKLE)
    with journal.lock:
        journal.append(journal.encode("planted", _RunsCode(marker)))
    journal.close(committed=False)

    with pytest.raises(JournalError, match="written with the 'pickle' serializer") as info:
        make_cache(FailingStore(), journal=path)  # JSON by default: MemoryStore has none
    assert "'planted'" in str(info.value)
    assert not os.path.exists(marker)


def test_pickle_is_used_when_the_user_chose_it(make_cache: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    store = FailingStore()
    store.fail = True
    cache = make_cache(
        store, journal=path, journal_serializer="pickle", close_may_fail=True, write_interval=3600
    )
    cache["s"] = {1, 2}  # not JSON
    with pytest.raises(Exception):
        cache.close(timeout=0.3)
    store.fail = False
    make_cache(store, journal=path, journal_serializer="pickle").close()
    assert store.data == {"s": {1, 2}}


def test_values_are_journaled_with_the_stores_serializer_by_default(
    make_cache: Any, tmp_path: Path
) -> None:
    cache = make_cache(journal=str(tmp_path / "j"))
    with pytest.raises(SerializationError) as info:
        cache["s"] = {1, 2}  # JSON cannot encode a set: refused at the call
    assert info.value.key == "s"
    assert "s" not in cache and cache.pending == 0


KEYS = ["text", 7, -1.5, True, None, b"\x00\xffbytes", (1, "a", (b"x", None)), ("", ())]


def test_journaled_keys_come_back_exactly(make_cache: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=path, close_may_fail=True, write_interval=3600)
    for i, key in enumerate(KEYS):
        cache[key] = i
    with pytest.raises(Exception):
        cache.close(timeout=0.3)
    store.fail = False
    make_cache(store, journal=path).close()
    assert store.data == {key: i for i, key in enumerate(KEYS)}
    for key in store.data:
        (original,) = [k for k in KEYS if k == key and type(k) is type(key)]
        assert repr(original) == repr(key)


class Name(str):
    pass


@pytest.mark.parametrize(
    "key", [object(), frozenset({1}), float("nan"), Name("a"), (1, frozenset()), 1.5 + 2j]
)
def test_a_key_the_journal_cannot_rebuild_is_refused_at_the_call(
    make_cache: Any, tmp_path: Path, key: Any
) -> None:
    cache = make_cache(journal=str(tmp_path / "j"))
    with pytest.raises(TypeError, match="journal cannot record the key"):
        cache[key] = 1
    assert cache.pending == 0 and len(cache) == 0
    with pytest.raises(TypeError, match="journal cannot record the key"):
        cache.discard(key)
    assert cache.pending == 0
    assert not [n for n in glob.glob(str(tmp_path / "j") + ".*.*") if os.path.getsize(n)]


def test_segments_are_private_to_their_owner(make_cache: Any, tmp_path: Path) -> None:
    cache = make_cache(journal=str(tmp_path / "j"), write_interval=3600)
    cache["a"] = 1
    for name in glob.glob(str(tmp_path / "j") + ".*"):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
