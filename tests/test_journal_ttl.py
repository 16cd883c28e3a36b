"""Journaled deadlines: a write's TTL survives kill -9 and reaches the store as the write's own.

A set with a write deadline (`set(ttl=)`, or `expire_after_write`) is journaled with that
deadline on the wall clock (ms since the epoch); replay gives the entry the time left to it,
or 1 ms once it has passed (the write still replaces the store's older value, then expires).

The bounds below follow from the order of events, not from speed: a deadline journaled by a
write made between `before` and `after` (wall clock, ms) lies between them plus the TTL, and
what a store holds after a replay begun at `replay_start` differs from the journaled deadline
by at most the time replay and flush took (plus rounding to the millisecond).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import LONG, FailingStore, FakeClock, wait_until
from services import database, db_cache, redis_url  # noqa: F401  (fixtures)
from test_expiry import TTLStore
from test_expiry_stores import expires_at
from test_redis_store import make_store, prefix, raw, redis_cache  # noqa: F401  (fixtures)

from lazycache.journal import read_file, read_segment, segments_of, wall_ms
from lazycache.serializers import JSON

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A child process: a journaled cache over a real store that never flushes on its own; it makes
# the writes it is given, says so once they are all acknowledged, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import json, sys
    from lazycache.cache import implementation_class

    impl, store_spec, journal_path, options, writes = sys.argv[1:6]
    if store_spec.startswith("sql:"):  # sql:URL|table, a key-value table with expires_at
        from lazycache.stores.sqlalchemy import SQLAlchemyStore
        url, table = store_spec[4:].split("|")
        store = SQLAlchemyStore(url, table, expiry=True)
    else:  # redis:URL|prefix
        from lazycache.stores.redis import RedisStore
        url, prefix = store_spec[6:].split("|")
        store = RedisStore(url, prefix)
    cache = implementation_class(impl)(
        store, journal=journal_path, write_interval=3600, **json.loads(options)
    )
    for key, value, ttl in json.loads(writes):
        cache.set(key, value, ttl=ttl)
    print("acknowledged", flush=True)
    sys.stdin.read()  # until killed
    """
)

FORMAT_1_SEGMENT = bytes.fromhex(
    "ff4c5a4a0000000024000000b92ee950487b22666f726d6174223a20312c202273657269616c697a6572223a"
    "20226a736f6e227dff4c5a4a01000000120000009d9b49445306000000226b657074227b2276223a317dff4c"
    "5a4a020000000c000000e615586d530600000022676f6e652232ff4c5a4a03000000070000006efd41d24422"
    "676f6e6522"
)
"""A segment as lazycache wrote it before deadlines were journaled (format 1): the header, then
`S kept {"v": 1}`, `S gone 2`, `D gone`."""


def kill_9_after(
    impl: str, tmp_path: Path, store: str, writes: list[Any], **options: Any
) -> tuple[str, int, int]:
    """Runs the child until its `writes` ([key, value, ttl or None]) are acknowledged, then
    kills it with SIGKILL; returns the journal's path and the wall-clock ms before and after."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = str(tmp_path / "journal")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = wall_ms()
    child = subprocess.Popen(
        [sys.executable, str(script), impl, store, path, json.dumps(options), json.dumps(writes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        line = child.stdout.readline()
        after = wall_ms()
        if line != "acknowledged\n":
            child.wait(timeout=30)
            raise AssertionError(f"the child failed: {child.stderr.read()}")
    finally:
        child.kill()  # SIGKILL: nothing is flushed, the journal is all that is left
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
        assert child.stdin is not None
        child.stdin.close()
    assert segments_of(path), "the killed process left no journal"
    return path, before, after


def journaled(path: str) -> dict[Any, int | None]:
    """{key: deadline of its last set} as the journal's segments hold them."""
    out: dict[Any, int | None] = {}
    for name in segments_of(path):
        data, unsafe = read_file(name)
        assert unsafe is None
        for entry in read_segment(name, data, JSON).entries:
            out[entry.key] = entry.deadline
    return out


def leave_a_journal(make_cache: Any, path: str, write: Any, **options: Any) -> None:
    """Runs `write(cache)` in a journaled cache whose store is down, and leaves its journal."""
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, journal=path, close_may_fail=True, write_interval=LONG, **options)
    write(cache)
    with pytest.raises(Exception):
        cache.close(timeout=0.3)


# ----------------------------------------------------------------------------- kill -9


WRITES = [["timed", 1, 60], ["late", 2, 0.05], ["plain", 3, None]]
"""60 s to live; a deadline that passes while no process runs; none of its own."""


def test_a_ttl_survives_kill_9_into_a_sql_expires_at(
    impl: str,
    tmp_path: Path,
    database: Any,  # noqa: F811
    db_cache: Any,  # noqa: F811
) -> None:
    from lazycache.stores.sqlalchemy import SQLAlchemyStore

    table = database.table_name("jttl")
    store = SQLAlchemyStore(database.engine, table, expiry=True)
    store.write([("late", "older"), ("plain", "older")], [])
    path, before, after = kill_9_after(impl, tmp_path, f"sql:{database.url}|{table}", WRITES)
    deadlines = journaled(path)
    assert before + 60_000 <= deadlines["timed"] <= after + 60_001  # type: ignore[operator]
    assert deadlines["plain"] is None  # no TTL, in a cache without expire_after_write
    late = deadlines["late"]
    assert late is not None
    wait_until(lambda: wall_ms() > late, message="the wall clock stands still")

    replay_start = wall_ms()
    cache = db_cache(store, journal=path, write_interval=LONG)
    cache.flush()
    took = wall_ms() - replay_start
    rows = expires_at(database, table)
    timed = deadlines["timed"]
    assert timed is not None
    assert timed - 2 <= rows["timed"] <= timed + 3 + took  # the write's own deadline
    # Passed while no process ran: written all the same, over the older row, with 1 ms.
    assert replay_start < rows["late"] <= replay_start + took + 2
    assert rows["plain"] is None
    wait_until(lambda: wall_ms() > rows["late"], message="the wall clock stands still")
    assert store.load_many(["timed", "late", "plain"]) == {"timed": 1, "plain": 3}


def test_a_ttl_and_expire_after_write_survive_kill_9_into_redis(
    impl: str,
    tmp_path: Path,
    make_store: Any,  # noqa: F811
    redis_cache: Any,  # noqa: F811
    raw: Any,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    store = make_store()
    store.write([("late", "older")], [])
    # The child's cache has expire_after_write=30: "plain" is journaled with that deadline.
    path, before, after = kill_9_after(
        impl, tmp_path, f"redis:{redis_url()}|{prefix}", WRITES, expire_after_write=30
    )
    deadlines = journaled(path)
    assert before + 60_000 <= deadlines["timed"] <= after + 60_001  # type: ignore[operator]
    assert before + 30_000 <= deadlines["plain"] <= after + 30_001  # type: ignore[operator]
    late = deadlines["late"]
    assert late is not None
    wait_until(lambda: wall_ms() > late, message="the wall clock stands still")

    replay_start = wall_ms()
    # Replayed by a cache whose own expire_after_write is an hour: the journaled deadlines
    # hold, neither pushed back by the downtime nor replaced by the new option.
    cache = redis_cache(store, journal=path, expire_after_write=3600, write_interval=LONG)
    cache.flush()
    for key in ("timed", "plain"):
        deadline = deadlines[key]
        assert deadline is not None
        pttl = raw.pttl(prefix + key)
        read = wall_ms()
        assert deadline - read - 2 <= pttl <= deadline - replay_start + 2, key
    # Written with PX 1 over "older" (which had no TTL), then gone.
    wait_until(lambda: raw.exists(prefix + "late") == 0, message="the late write never landed")


# ----------------------------------------------------------------------------- in one process


def test_journaled_sets_carry_their_deadline_on_the_wall_clock(
    make_cache: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "j")
    clock = FakeClock()  # the cache's clock: not what the journal records

    def write(cache: Any) -> None:
        cache.set("own", 1, ttl=60)
        cache["default"] = 2  # expire_after_write's deadline
        cache.setdefault("setdefault", 3)
        cache.update_entry("updated", lambda v: v + 1, default=0)
        cache.set("cleared", 5, ttl=60)
        del cache["cleared"]

    before = wall_ms()
    leave_a_journal(make_cache, path, write, expire_after_write=30, clock=clock)
    after = wall_ms()
    deadlines = journaled(path)
    assert before + 60_000 <= deadlines["own"] <= after + 60_001  # type: ignore[operator]
    for key in ("default", "setdefault", "updated"):
        assert before + 30_000 <= deadlines[key] <= after + 30_001, key  # type: ignore[operator]
    assert deadlines["cleared"] is None  # a delete

    plain = str(tmp_path / "plain")
    leave_a_journal(make_cache, plain, lambda cache: cache.__setitem__("k", 1))
    assert journaled(plain) == {"k": None}  # no expiry: a set as before, no deadline


def test_replay_gives_the_time_left_or_1_ms_once_passed(make_cache: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "j")

    def write(cache: Any) -> None:
        cache.set("timed", 1, ttl=60)
        cache.set("late", 2, ttl=0.001)

    leave_a_journal(make_cache, path, write)
    deadlines = journaled(path)
    late = deadlines["late"]
    assert late is not None
    wait_until(lambda: wall_ms() > late, message="the wall clock stands still")

    store = TTLStore()
    clock = FakeClock()  # stands still: the time left at replay is what the store gets
    replay_start = wall_ms()
    cache = make_cache(store, journal=path, clock=clock, write_interval=LONG)
    replay_end = wall_ms()
    cache.flush()
    (ttls,) = store.ttl_calls
    assert ttls is not None and ttls["late"] == 0.001
    timed = deadlines["timed"]
    assert timed is not None
    assert replay_start <= timed - round(ttls["timed"] * 1000) <= replay_end
    assert store.data == {"timed": 1, "late": 2}
    # In memory, the same deadlines (give or take a ms of rounding): "late" expires 1 ms
    # after the replay, "timed" when its time is up.
    clock.advance(0.002)
    assert cache.get("late") == 2 and store.load_calls == [["late"]]
    clock.advance(ttls["timed"] - 0.004)
    assert cache["timed"] == 1 and store.load_calls == [["late"]]
    clock.advance(0.004)
    assert cache["timed"] == 1 and store.load_calls == [["late"], ["timed"]]


def test_a_replay_that_fails_journals_the_same_deadline_again(
    make_cache: Any, tmp_path: Path
) -> None:
    path = str(tmp_path / "j")
    leave_a_journal(make_cache, path, lambda cache: cache.set("k", 1, ttl=60))
    first = journaled(path)
    # A second process replays it, and fails to write it too: the deadline is not pushed back.
    leave_a_journal(make_cache, path, lambda cache: None, expire_after_write=3600)
    assert journaled(path) == first and first["k"] is not None


def test_a_format_1_segment_replays_with_the_caches_own_expiry(
    make_cache: Any, tmp_path: Path
) -> None:
    path = tmp_path / "j"
    segment = Path(f"{path}.{1:020d}.12345")
    segment.write_bytes(FORMAT_1_SEGMENT)
    segment.chmod(0o600)
    store = TTLStore()
    cache = make_cache(
        store, journal=str(path), expire_after_write=60, clock=FakeClock(), write_interval=LONG
    )
    cache.flush()
    assert store.data == {"kept": {"v": 1}}
    assert store.ttl_calls == [{"kept": 60.0}]  # no deadline journaled: the cache's option
    assert not segment.exists()
