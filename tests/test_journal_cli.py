"""`lazycache journal inspect | verify | replay` on real journals."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import FailingStore
from services import database  # noqa: F401 (fixture)

from lazycache.cli import main


def leave_a_journal(make_cache: Any, path: str, **options: Any) -> str:
    """Journals 10 sets and a delete through a cache whose store is down; returns the segment."""
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=path, close_may_fail=True, write_interval=3600, **options)
    for i in range(10):
        cache[f"k{i}"] = {"n": i}
    del cache["k3"]
    with pytest.raises(Exception):
        cache.close(timeout=0.3)
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
