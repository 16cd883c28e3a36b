"""`lazycache journal inspect | verify | replay` on real journals."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import FailingStore, wait_until
from services import database  # noqa: F401 (fixture)

from lazycache.cli import main


def journal_while_the_store_is_down(
    make_cache: Any, path: str, write: Callable[[Any], None], **options: Any
) -> None:
    """`write(cache)` on a cache journaling to `path` whose store is down, then its close,
    which fails: every write is left in the journal."""
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=path, close_may_fail=True, write_interval=3600, **options)
    write(cache)
    with pytest.raises(Exception):
        cache.close(timeout=0.3)


def leave_a_journal(make_cache: Any, path: str, **options: Any) -> str:
    """Journals 10 sets and a delete through a cache whose store is down; returns the segment."""

    def write(cache: Any) -> None:
        for i in range(10):
            cache[f"k{i}"] = {"n": i}
        del cache["k3"]

    journal_while_the_store_is_down(make_cache, path, write, **options)
    (segment,) = [n for n in glob.glob(path + ".*.*") if os.path.getsize(n)]
    return segment


def flip_a_bit_in_record(segment: str, index: int) -> None:
    from lazycache.journal import scan

    data = bytearray(Path(segment).read_bytes())
    records, _ = scan(bytes(data))
    data[records[index].offset + 20] ^= 1
    Path(segment).write_bytes(bytes(data))


def test_inspect_lists_files_records_keys_and_damage(
    make_cache: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "j")
    segment = leave_a_journal(make_cache, path)
    flip_a_bit_in_record(segment, 5)  # record 5 sets k4
    assert main(["journal", "inspect", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (found,) = [f for f in report["files"] if f["file"] == segment]
    assert found["records"] == 10 and found["sets"] == 9 and found["deletes"] == 1
    assert "'k4'" not in found["keys"] and "'k5'" in found["keys"]
    assert found["mode"] == "600" and found["refused"] is None and found["serializer"] == "json"
    assert len(found["damage"]) == 1 and "1 record(s) skipped" in found["damage"][0]

    assert main(["journal", "inspect", path]) == 0
    text = capsys.readouterr().out
    assert segment in text and "damage at offset" in text and "9 sets, 1 deletes" in text


def test_verify_passes_a_sound_journal_and_fails_a_damaged_one(
    make_cache: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "j")
    segment = leave_a_journal(make_cache, path)
    assert main(["journal", "verify", path]) == 0
    assert "11 records decode with json" in capsys.readouterr().out
    flip_a_bit_in_record(segment, 2)
    assert main(["journal", "verify", path]) == 1
    assert "NOT REPLAYABLE" in capsys.readouterr().out
    os.chmod(segment, 0o660)
    assert main(["journal", "verify", path]) == 1
    assert "writable by group" in capsys.readouterr().out


def test_replay_into_a_database_writes_every_record(
    make_cache: Any,
    tmp_path: Path,
    database: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sqlalchemy as sa

    path = str(tmp_path / "j")
    leave_a_journal(make_cache, path)
    table = database.table_name("journal")
    assert main(["journal", "replay", path, "--into", database.url, "--table", table]) == 0
    assert "10 key(s) written" in capsys.readouterr().out  # 9 sets and a delete
    written = sa.Table(table, sa.MetaData(), autoload_with=database.engine)
    with database.engine.connect() as conn:
        rows = dict(conn.execute(sa.select(written.c.key, written.c.value)).all())
    assert {k: json.loads(v) for k, v in rows.items()} == {
        f"k{i}": {"n": i} for i in range(10) if i != 3
    }
    assert not glob.glob(path + ".*.*")  # written, so released
    assert main(["journal", "replay", path, "--into", database.url, "--table", table]) == 0


def test_replay_refuses_an_undecodable_journal_unless_told_to_quarantine(
    make_cache: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlalchemy as sa

    path = str(tmp_path / "j")
    leave_a_journal(make_cache, path, journal_serializer="pickle")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    # Written with pickle; replayed as JSON: refused, nothing unpickled, nothing written.
    assert main(["journal", "replay", path, "--into", url]) == 1
    assert "written with the 'pickle' serializer" in capsys.readouterr().err
    assert main(["journal", "replay", path, "--into", url, "--errors", "quarantine"]) == 0
    assert glob.glob(path + ".*.quarantined")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            # Only the delete (no value to decode) was replayable.
            assert conn.execute(sa.text("SELECT count(*) FROM lazycache")).scalar() == 0
    finally:
        engine.dispose()


def leave_timed_writes(make_cache: Any, path: str) -> tuple[int, int]:
    """Journals a set that is already due, one with an hour to live and one without a TTL,
    through a cache whose store is down; returns the wall-clock ms before and after them."""
    from lazycache.journal import wall_ms

    times: list[int] = []

    def write(cache: Any) -> None:
        times.append(wall_ms())
        cache.set("due", 1, ttl=0.001)
        cache.set("later", 2, ttl=3600)
        cache["plain"] = 3
        times.append(wall_ms())

    journal_while_the_store_is_down(make_cache, path, write)
    before, after = times
    wait_until(lambda: wall_ms() > after + 1, message="the wall clock stands still")
    return before, after


def test_inspect_and_verify_show_the_journaled_deadlines(
    make_cache: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lazycache.journal_cli import utc

    path = str(tmp_path / "j")
    before, after = leave_timed_writes(make_cache, path)
    assert main(["journal", "inspect", path, "--json"]) == 0
    (found,) = [f for f in json.loads(capsys.readouterr().out)["files"] if f["records"]]
    assert found["sets"] == 3 and found["deadlines"] == 2 and found["deadlines_passed"] == 1
    deadlines = found["key_deadlines"]
    assert set(deadlines) == {"'due'", "'later'"}
    assert before + 3_600_000 <= deadlines["'later'"] <= after + 3_600_001

    assert main(["journal", "inspect", path]) == 0
    text = capsys.readouterr().out
    assert "2 sets with a deadline (1 passed)" in text
    assert f"'due' (deadline {utc(deadlines[repr('due')])}, passed)" in text
    assert f"'later' (deadline {utc(deadlines[repr('later')])}), 'plain'" in text
    assert utc(0) == "1970-01-01T00:00:00.000Z"

    assert main(["journal", "verify", path]) == 0
    assert "3 records decode with json, 2 with a deadline" in capsys.readouterr().out


def test_replay_with_expiry_writes_the_journaled_deadlines_to_expires_at(
    make_cache: Any,
    tmp_path: Path,
    database: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sqlalchemy as sa

    from lazycache.journal import wall_ms

    path = str(tmp_path / "j")
    before, after = leave_timed_writes(make_cache, path)
    table = database.table_name("journal")
    start = wall_ms()
    args = ["journal", "replay", path, "--into", database.url, "--table", table]
    assert main([*args, "--expiry"]) == 0
    took = wall_ms() - start
    kv = sa.table(table, sa.column("key"), sa.column("expires_at"))
    with database.engine.connect() as conn:
        rows = dict(conn.execute(sa.select(kv.c.key, kv.c.expires_at)).all())
    assert rows["plain"] is None
    assert start < rows["due"] <= start + took + 2  # due before the replay: 1 ms
    assert before + 3_600_000 - 2 <= rows["later"] <= after + 3_600_000 + 3 + took
    assert "note:" not in capsys.readouterr().err

    # Into a table without an expires_at column: written, and the deadlines are said to be lost.
    leave_timed_writes(make_cache, path)
    plain = database.table_name("journal")
    assert main(["journal", "replay", path, "--into", database.url, "--table", plain]) == 0
    assert "note: 2 journaled set(s) had a deadline" in capsys.readouterr().err
