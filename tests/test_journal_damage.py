"""A damaged journal: every record the damage did not touch is replayed, the rest reported, the file kept."""

from __future__ import annotations

import glob
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import FailingStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazycache import MISSING


def timed(i: int) -> bool:
    """Whether record i of `journal_with_records` is a set with a deadline (a ``T`` record)."""
    return i % 4 == 1 and i % 5 != 4


def journal_with_records(directory: Path, count: int) -> tuple[str, list[tuple[Any, Any]]]:
    """A real segment of `count` sets (some with an hour's deadline) and deletes written by
    Journal; its name and its records."""
    from lazycache.journal import Journal

    journal = Journal(str(directory / "j"), fsync="no")
    records: list[tuple[Any, Any]] = []
    with journal.lock:
        for i in range(count):
            key: Any = f"k{i}" if i % 3 else (i, "t")
            value = MISSING if i % 5 == 4 else {"i": i, "pad": "p" * (i % 7)}
            ttl = 3600 * 10**9 if timed(i) else -1
            journal.append(journal.encode(key, value, ttl))
            records.append((key, value))
    journal.close(committed=False)
    (segment,) = glob.glob(str(directory / "j") + ".*.*")
    return segment, records


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """The byte span of every record of an intact segment, the header (record 0) first."""
    from lazycache.journal import scan

    records, damage = scan(data)
    assert not damage
    return [(r.offset, r.offset + 16 + len(r.payload)) for r in records]


def final_state(records: list[tuple[Any, Any]]) -> dict[Any, Any]:
    state: dict[Any, Any] = {}
    for key, value in records:
        if value is MISSING:
            state.pop(key, None)
        else:
            state[key] = value
    return state


_PRISTINE: dict[str, tuple[bytes, list[tuple[Any, Any]]]] = {}


def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[tuple[Any, Any]]]:
    if "data" not in _PRISTINE:
        directory = tmp_path_factory.mktemp("pristine")
        segment, records = journal_with_records(directory, 40)
        _PRISTINE["data"] = (Path(segment).read_bytes(), records)
    return _PRISTINE["data"]


damage_strategy = st.one_of(
    st.tuples(
        st.just("flips"),
        st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=4),
    ),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("cut"), st.tuples(st.floats(0, 1), st.integers(1, 200))),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(damage=damage_strategy)
def test_every_record_the_damage_did_not_touch_is_replayed(
    tmp_path_factory: pytest.TempPathFactory, damage: tuple[str, Any]
) -> None:
    from lazycache.journal import read_segment
    from lazycache.serializers import JSON

    data, records = pristine(tmp_path_factory)
    spans = record_spans(data)  # spans[0] is the segment's header, spans[i + 1] records[i]
    kind, how = damage
    if kind == "flips":
        damaged = bytearray(data)
        for where, bit in how:
            damaged[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
        damaged_data = bytes(damaged)
        changed_at = [i for i in range(len(data)) if data[i] != damaged_data[i]]
        touched = {n for n, (a, b) in enumerate(spans) if any(a <= i < b for i in changed_at)}
    elif kind == "truncate":
        cut = int(how * len(data))
        damaged_data = data[:cut]
        touched = {n for n, (a, b) in enumerate(spans) if b > cut}
    else:
        start = int(how[0] * len(data))
        end = min(start + how[1], len(data))
        damaged_data = data[:start] + data[end:]
        # A record the cut overlaps can still be whole: the bytes that close up around the
        # cut may equal the ones cut out (two records ending in 'pp"}'; a marker rebuilt from
        # the first bytes of another). It is intact if its exact bytes sit where it moved to.
        shift = end - start

        def survives(a: int, b: int) -> bool:
            record = data[a:b]
            return any(
                damaged_data[p : p + len(record)] == record for p in range(max(0, a - shift), a + 1)
            )

        touched = {
            n for n, (a, b) in enumerate(spans) if a < end and b > start and not survives(a, b)
        }

    segment = read_segment("j.x", damaged_data, JSON)
    replayed = [(e.key, e.value, e.deadline is not None) for e in segment.entries]
    assert replayed == [(*r, timed(i)) for i, r in enumerate(records) if i + 1 not in touched]
    assert not segment.problems
    # Every record lost before the last intact one is counted in a damaged span, which says
    # where; records lost at the end of the file are reported as a span of unknown count,
    # unless the file was cut exactly at a record boundary (that looks like a crash there).
    last_intact = max((n for n in range(len(spans)) if n not in touched), default=-1)
    counted = sum(d.skipped for d in segment.damage if d.skipped is not None)
    assert counted == len([n for n in touched if n < last_intact])
    lost_at_end = [n for n in touched if n > last_intact]
    at_boundary = kind != "flips" and len(damaged_data) in {a for a, _ in spans}
    if lost_at_end and not at_boundary:
        assert segment.damage and segment.damage[-1].skipped is None


def test_a_flipped_bit_costs_one_record_and_the_file_is_kept_aside(
    make_cache: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "j")
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=path, close_may_fail=True, write_interval=3600)
    for i in range(100):
        cache[f"k{i}"] = i
    with pytest.raises(Exception):
        cache.close(timeout=0.3)
    (segment,) = [name for name in glob.glob(path + ".*.*") if os.path.getsize(name)]
    data = bytearray(Path(segment).read_bytes())
    spans = record_spans(bytes(data))
    offset = (spans[10][0] + spans[10][1]) // 2  # the middle of record 10 of 100 ("k9")
    data[offset] ^= 0x10
    Path(segment).write_bytes(bytes(data))

    store.fail = False
    with caplog.at_level(logging.WARNING, logger="lazycache"):
        revived = make_cache(store, journal=path)
        revived.close()
    assert store.data == {f"k{i}": i for i in range(100) if i != 9}
    report = caplog.text
    assert (
        segment in report and f"offset {spans[10][0]}" in report and "1 record(s) skipped" in report
    )
    # Kept aside, never deleted; and no longer one of the journal's segments.
    assert Path(segment + ".quarantined").read_bytes() == bytes(data)
    assert not glob.glob(path + ".*[0-9]")


def test_a_torn_record_in_the_middle_does_not_hide_the_later_ones(
    make_cache: Any, tmp_path: Path
) -> None:
    # What a failed append used to leave behind when writes went on after it.
    path = str(tmp_path / "j")
    segment, records = journal_with_records(tmp_path, 30)
    data = Path(segment).read_bytes()
    spans = record_spans(data)
    _, end = spans[15]
    Path(segment).write_bytes(data[: end - 5] + data[end:])  # record 15 (index 14) lost its tail
    store = FailingStore()
    cache = make_cache(store, journal=path)
    cache.close()
    assert store.data == final_state(records[:14] + records[15:])
    assert os.path.exists(segment + ".quarantined")


def test_a_journal_replays_only_its_own_files(make_cache: Any, tmp_path: Path) -> None:
    # "jr.*.*" also matches "jr.users.<ns>.<pid>": each journal owns exactly its own files.
    users_store = FailingStore()
    users_store.fail = True
    users = make_cache(
        users_store, journal=str(tmp_path / "jr.users"), close_may_fail=True, write_interval=3600
    )
    users["alice"] = 1
    with pytest.raises(Exception):
        users.close(timeout=0.3)
    users_files = sorted(glob.glob(str(tmp_path / "jr.users.*")))
    assert users_files

    other_store = FailingStore()
    other = make_cache(other_store, journal=str(tmp_path / "jr"))
    other.close()
    assert other_store.data == {}  # not the other cache's writes
    assert sorted(glob.glob(str(tmp_path / "jr.users.*"))) == users_files

    users_store.fail = False
    revived = make_cache(users_store, journal=str(tmp_path / "jr.users"))
    revived.close()
    assert users_store.data == {"alice": 1}


def test_a_copy_of_a_quarantined_file_can_be_replayed_by_hand(
    make_cache: Any, tmp_path: Path
) -> None:
    # The way on documented for a quarantined file: rename it back once the cause is fixed.
    path = str(tmp_path / "j")
    segment, records = journal_with_records(tmp_path, 5)
    shutil.copy(segment, segment + ".quarantined")
    os.unlink(segment)
    store = FailingStore()
    make_cache(store, journal=path).close()
    assert store.data == {}  # quarantined files are never replayed on their own
    os.rename(segment + ".quarantined", segment)
    make_cache(store, journal=path).close()
    assert store.data == final_state(records) and store.data
