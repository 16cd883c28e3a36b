"""The crash journal: acknowledged writes survive a process that is killed before they were flushed."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FailingStore, wait_until
from services import database  # noqa: F401 (fixture)

from lazycache import MISSING, SerializationError
from lazycache.journal import Journal, records_of

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A child process: a cache over a JSON-file store, journaled; it prints each write once it is
# acknowledged (the set returned), and either runs until killed or closes cleanly.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    import lazycache
    from lazycache import Store
    from lazycache.cache import implementation_class

    class FileStore(Store):
        def __init__(self, path):
            self.path = path
        def _read(self):
            try:
                with open(self.path) as f:
                    return json.load(f)
            except FileNotFoundError:
                return {}
        def load_many(self, keys):
            data = self._read()
            return {k: data[k] for k in keys if k in data}
        def write(self, upserts, deletes):
            data = self._read()
            data.update(upserts)
            for k in deletes:
                data.pop(k, None)
            with open(self.path + ".tmp", "w") as f:
                json.dump(data, f)
            os.replace(self.path + ".tmp", self.path)

    impl, store_spec, journal_path, fsync, mode, write_interval = sys.argv[1:7]
    cls = implementation_class(impl)
    if store_spec.startswith("sql:"):  # sql:URL|table, a key-value table in a real database
        from lazycache.stores.sqlalchemy import SQLAlchemyStore
        url, table = store_spec[4:].split("|")
        store = SQLAlchemyStore(url, table)
    elif store_spec.startswith("redis:"):  # redis:URL|prefix
        from lazycache.stores.redis import RedisStore
        url, prefix = store_spec[6:].split("|")
        store = RedisStore(url, prefix)
    else:
        store = FileStore(store_spec)
    cache = cls(store, journal=journal_path, journal_fsync=fsync, write_interval=float(write_interval))
    if mode == "write":
        i = 0
        while True:
            key = "k%d" % (i % 300)
            if i % 7 == 3:
                cache.discard(key)
                print("del", key, i, flush=True)
            else:
                cache[key] = i
                print("set", key, i, flush=True)
            i += 1
    else:
        cache.close()
        print("closed", flush=True)
    """
)


def run_child(
    impl: str, tmp_path: Path, fsync: str, mode: str, write_interval: float = 0.05, store: str = ""
) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    store = store or str(tmp_path / "store.json")
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            impl,
            store,
            str(tmp_path / "journal"),
            fsync,
            mode,
            str(write_interval),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def acknowledged_state(lines: list) -> dict[str, Any]:
    """The final value of every key after the acknowledged writes (complete lines only)."""
    state: dict[str, Any] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue  # the line being printed when the process was killed
        op, key, i = parts
        if op == "set":
            state[key] = int(i)
        else:
            state.pop(key, None)
    return state


def kill_mid_stream_then_replay(
    impl: str, tmp_path: Path, fsync: str, store: str, read_store: Any
) -> None:
    """A child writes until SIGKILL; a second process replays the journal; the store must hold
    every acknowledged write (`read_store()` returns the store's content as a dict)."""
    # The writer flushes rarely (10 s), so most acknowledged writes exist only in memory and
    # in the journal when the process dies.
    child = run_child(impl, tmp_path, fsync, "write", write_interval=10.0, store=store)
    assert child.stdout is not None
    head = []
    deadline = time.monotonic() + 30
    while len(head) < 2000 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        head.append(line)
    child.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no chance to flush
    rest = child.stdout.read()  # not communicate(): it would skip what readline() buffered
    child.wait(timeout=30)
    err = child.stderr.read() if child.stderr else ""
    *complete, _partial = ("".join(head) + rest).split("\n")
    assert len(complete) >= 2000, err
    expected = acknowledged_state(complete)
    assert glob.glob(str(tmp_path / "journal") + ".*.*"), "the killed process left no journal"

    survivor = run_child(impl, tmp_path, fsync, "close", store=store)
    _, err = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, err
    stored = read_store()
    # The write being printed when the process died may or may not have happened.
    unsure = {f"k{(int(complete[-1].split()[2]) + 1) % 300}"}
    for key in set(expected) | set(stored):
        if key in unsure:
            continue
        assert stored.get(key) == expected.get(key), key
    assert not glob.glob(str(tmp_path / "journal") + ".*.*"), (
        "replayed and flushed journal segments were not deleted"
    )


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_every_acknowledged_write_survives_kill_9(impl: str, tmp_path: Path, fsync: str) -> None:
    # Every policy survives a process crash.
    kill_mid_stream_then_replay(
        impl,
        tmp_path,
        fsync,
        str(tmp_path / "store.json"),
        lambda: json.loads((tmp_path / "store.json").read_text()),
    )


def test_every_acknowledged_write_reaches_a_database_after_kill_9(
    impl: str,
    tmp_path: Path,
    database: Any,  # noqa: F811
) -> None:
    import sqlalchemy as sa

    table = database.table_name("journal")

    def read_table() -> dict[str, Any]:
        written = sa.Table(table, sa.MetaData(), autoload_with=database.engine)
        with database.engine.connect() as conn:
            rows = conn.execute(sa.select(written.c.key, written.c.value)).all()
        return {k: json.loads(v) for k, v in rows}

    kill_mid_stream_then_replay(
        impl, tmp_path, "everysec", f"sql:{database.url}|{table}", read_table
    )


def test_every_acknowledged_write_reaches_redis_after_kill_9(impl: str, tmp_path: Path) -> None:
    from services import delete_redis_keys, redis_client, redis_url, unique_name

    prefix = unique_name("journal") + ":"
    client = redis_client()

    def read_redis() -> dict[str, Any]:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        values = client.mget(keys) if keys else []
        return {k.decode()[len(prefix) :]: json.loads(v) for k, v in zip(keys, values)}

    try:
        kill_mid_stream_then_replay(
            impl, tmp_path, "everysec", f"redis:{redis_url()}|{prefix}", read_redis
        )
    finally:
        delete_redis_keys(client, prefix)
        client.close()


def test_journal_segments_are_deleted_once_written(make_cache, tmp_path: Path) -> None:
    cache = make_cache(journal=str(tmp_path / "j"), journal_fsync="always")
    for i in range(100):
        cache[i] = i
    cache.flush()
    cache.flush()  # the second flush releases the segment the first one rotated out
    segments = glob.glob(str(tmp_path / "j") + ".*.*")
    assert len(segments) == 1  # only the current (empty) segment
    assert os.path.getsize(segments[0]) == 0
    cache.close()
    assert not glob.glob(str(tmp_path / "j") + ".*.*")


def test_a_failed_flush_keeps_the_journal_for_the_next_process(make_cache, tmp_path: Path) -> None:
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=str(tmp_path / "j"), close_may_fail=True, write_interval=3600)
    cache["a"] = 1
    cache["b"] = 2
    del cache["a"]
    with pytest.raises(Exception):
        cache.close(timeout=0.3)
    records = records_of(str(tmp_path / "j"))
    assert records == [("a", 1), ("b", 2), ("a", MISSING)]

    store.fail = False
    store.data["a"] = "stale"  # the delete must reach the store on replay
    revived = make_cache(store, journal=str(tmp_path / "j"))
    assert revived.pending == 2
    revived.close()
    assert store.data == {"b": 2}
    assert not glob.glob(str(tmp_path / "j") + ".*.*")


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "j"), fsync="no")
    with journal.lock:
        journal.append(journal.encode("a", 1))
        journal.append(journal.encode("b", 2))
    journal.close(committed=False)
    (segment,) = glob.glob(str(tmp_path / "j") + ".*.*")
    os.truncate(segment, os.path.getsize(segment) - 3)  # the process died mid-write
    assert records_of(str(tmp_path / "j")) == [("a", 1)]


def test_a_value_the_journal_cannot_encode_is_refused_before_anything_changes(
    make_cache, tmp_path: Path
) -> None:
    cache = make_cache(journal=str(tmp_path / "j"))
    with pytest.raises(SerializationError) as info:
        cache["lock"] = lambda: None
    assert info.value.key == "lock"
    assert "lock" not in cache and cache.pending == 0


def test_journaled_compound_writes_are_replayed(make_cache, tmp_path: Path) -> None:
    store = FailingStore({"s": "stored"})
    store.fail = True
    cache = make_cache(store, journal=str(tmp_path / "j"), close_may_fail=True, write_interval=3600)
    cache["x"] = 1
    cache.setdefault("y", 2)
    cache.update_entry("x", lambda v: v + 10)
    assert cache.pop("s") == "stored"
    cache.discard("gone")
    cache.update({"z": 3})
    with pytest.raises(Exception):
        cache.close(timeout=0.3)
    store.fail = False
    store.data["gone"] = "stale"
    revived = make_cache(store, journal=str(tmp_path / "j"))
    revived.close()
    assert store.data == {"x": 11, "y": 2, "z": 3}


def test_bad_journal_settings_are_refused(cache_cls: type, tmp_path: Path) -> None:
    from lazycache import MemoryStore

    with pytest.raises(ValueError, match="journal_fsync"):
        cache_cls(MemoryStore(), journal=str(tmp_path / "j"), journal_fsync="sometimes")
    with pytest.raises(ValueError, match="does not exist"):
        cache_cls(MemoryStore(), journal=str(tmp_path / "missing-dir" / "j"))
    with pytest.raises(ValueError, match="journal_errors"):
        cache_cls(MemoryStore(), journal=str(tmp_path / "j"), journal_errors="ignore")
    with pytest.raises(ValueError, match="unknown serializer"):
        cache_cls(MemoryStore(), journal=str(tmp_path / "j"), journal_serializer="yaml")
    cache_cls(MemoryStore(), journal=str(tmp_path / "j")).close()  # none of those kept it locked


def test_journal_replays_in_the_order_written(make_cache, tmp_path: Path) -> None:
    cache = make_cache(journal=str(tmp_path / "j"), write_interval=3600)
    for i in range(50):
        cache["k"] = i
    wait_until(lambda: cache.pending == 1)
    records = records_of(str(tmp_path / "j"))
    assert [v for _, v in records] == list(range(50))


def test_a_journaled_value_json_would_change_is_refused_at_the_call(
    make_cache: Any, tmp_path: Path
) -> None:
    """Replay decodes what was set: a tuple (JSON gives back a list) never enters the journal."""
    cache = make_cache(journal=str(tmp_path / "j"))
    cache["kept"] = [1, 2]
    with pytest.raises(SerializationError, match=r"'bad'.*tuple"):
        cache["bad"] = (1, 2)
    assert "bad" not in cache
    cache.flush()
    assert cache.store.data == {"kept": [1, 2]}
