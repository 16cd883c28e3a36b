"""One live cache per journal path: a second opener gets an error naming the holder, never its files."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import FailingStore

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A child: opens a journaled cache (over a JSON-file store) on argv's path and says whether it
# got the journal; the one that did writes 200 keys, says so, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    from lazycache import MemoryStore
    from lazycache.cache import implementation_class

    impl, journal = sys.argv[1:3]
    sys.stdin.readline()  # the parent releases both children at once
    try:
        cache = implementation_class(impl)(MemoryStore(), journal=journal, write_interval=3600)
    except Exception as exc:
        print(json.dumps({"pid": os.getpid(), "error": type(exc).__name__, "message": str(exc)}), flush=True)
        sys.exit(0)
    print(json.dumps({"pid": os.getpid(), "error": None}), flush=True)
    for i in range(200):
        cache["k%d" % i] = i
    print("written", flush=True)
    sys.stdin.readline()  # killed here
    """
)


def start_child(impl: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(script), impl, str(tmp_path / "j")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_racing_for_one_journal_one_wins_and_loses_nothing(
    impl: str, tmp_path: Path, make_cache: Any
) -> None:
    children = [start_child(impl, tmp_path) for _ in range(2)]
    try:
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else ""
            reports.append(json.loads(line))
        winners = [r for r in reports if r["error"] is None]
        losers = [r for r in reports if r["error"] is not None]
        assert len(winners) == 1 and len(losers) == 1, reports
        assert losers[0]["error"] == "JournalLockedError"
        assert f"process {winners[0]['pid']}" in losers[0]["message"]
        winner = children[reports.index(winners[0])]
        assert winner.stdout is not None
        assert winner.stdout.readline() == "written\n"

        # While the winner lives, this process cannot take the journal either.
        from lazycache.journal import JournalLockedError

        with pytest.raises(JournalLockedError, match=f"process {winners[0]['pid']}"):
            make_cache(journal=str(tmp_path / "j"))
        winner.kill()  # kill -9: the lock goes with the process, the journal stays
        winner.wait(timeout=30)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
    store = FailingStore()
    make_cache(store, journal=str(tmp_path / "j")).close()
    assert store.data == {f"k{i}": i for i in range(200)}


def test_a_second_cache_on_an_open_journal_is_refused_until_the_first_closes(
    make_cache: Any, tmp_path: Path
) -> None:
    from lazycache.journal import JournalLockedError

    path = str(tmp_path / "j")
    first = make_cache(journal=path, write_interval=3600)
    first["a"] = 1
    with pytest.raises(JournalLockedError) as info:
        make_cache(journal=path)
    assert info.value.pid == os.getpid() and path in str(info.value)
    assert first.pending == 1 and glob.glob(path + ".*.*")  # its files untouched
    first.close()
    second = make_cache(journal=path)
    second["b"] = 2
    second.close()


def test_a_cache_refused_for_a_bad_option_leaves_the_journal_unlocked(
    make_cache: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "j")
    with pytest.raises(ValueError):
        make_cache(journal=path, maxsize=-1)
    make_cache(journal=path).close()  # not JournalLockedError


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_journals_into_files_of_its_own_and_keeps_the_lock(
    make_cache: Any, tmp_path: Path
) -> None:
    from helpers import run_in_forked_child

    from lazycache.journal import JournalLockedError

    path = str(tmp_path / "j")
    store = FailingStore()
    parent = make_cache(store, journal=path, write_interval=3600)
    parent["p"] = 1

    def child() -> list[str]:
        parent["c"] = 2  # the child's write, journaled by the child
        kept.append(parent)  # not closed before the child's os._exit: it dies unflushed
        return glob.glob(f"{path}.*.{os.getpid()}")

    kept: list[Any] = []
    child_segments = run_in_forked_child(child)
    assert child_segments and all(os.path.getsize(n) for n in child_segments)
    with pytest.raises(JournalLockedError):
        make_cache(journal=path)  # the parent still holds it
    parent.close()
    assert store.data == {"p": 1}  # the parent wrote its own writes only
    make_cache(store, journal=path).close()  # the dead child's acknowledged write is replayed
    assert store.data == {"p": 1, "c": 2}
