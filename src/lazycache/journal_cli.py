"""``lazycache journal``: look into a crash journal, check it, or apply it to a store.

* ``inspect PATH``: each file of the journal (segments and quarantined files):
  size, owner and mode (and whether replay would refuse it), records, keys and
  their deadlines (UTC; whether passed), damaged spans. Values are never decoded,
  so a planted file runs nothing.
* ``verify PATH``: decodes every record with the serializer named by
  ``--serializer`` (JSON by default; pickle only when asked); exit status 1 if
  anything could not be replayed.
* ``replay PATH --into URL``: applies the journal to the store at URL (as
  ``lazycache.open(URL, --table, journal=PATH)`` would, then closes, which
  writes everything), without the application. Journaled deadlines reach Redis
  keys as their TTL, and a SQL table's ``expires_at`` column with ``--expiry``.

PATH is the journal's path (the ``journal=`` of the cache), or one file of it
(``inspect`` and ``verify`` only), such as a quarantined one.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from datetime import datetime, timezone
from typing import Any

from .journal import (
    JournalError,
    Segment,
    peek,
    quarantined_of,
    read_file,
    read_segment,
    scan,
    segments_of,
    unsafe_reason,
    wall_ms,
)
from .serializers import get_serializer


def _files(path: str) -> list[str]:
    if os.path.isfile(path) and not path.endswith(".lock"):
        return [path]
    return segments_of(path) + quarantined_of(path)


def utc(deadline: int) -> str:
    """A journaled deadline (ms since the epoch) as ISO 8601 UTC, to the millisecond."""
    try:
        moment = datetime.fromtimestamp(deadline / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{deadline} ms since the epoch"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def inspect_file(name: str, max_keys: int) -> dict[str, Any]:
    """What `inspect` reports of one file, as JSON-ready data."""
    st = os.lstat(name)
    data, _ = read_file(name, check=False)  # only keys are decoded: nothing in it runs
    records, damage = scan(data)
    header: Any = None
    sets = deletes = with_deadline = passed = 0
    now = wall_ms()
    keys: dict[str, int | None] = {}  # in order of first record; the deadline of the last one
    for record in records:
        kind = record.payload[:1]
        if kind == b"H":
            try:
                header = json.loads(record.payload[1:].decode("utf-8"))
            except ValueError:
                header = "unreadable"
            continue
        sets += kind == b"S" or kind == b"T"
        deletes += kind == b"D"
        key, deadline = peek(record.payload)
        if deadline is not None:
            with_deadline += 1
            passed += deadline <= now
        keys[repr(key)] = deadline
    listed = list(keys)[:max_keys]
    return {
        "file": name,
        "size": st.st_size,
        "owner_uid": st.st_uid,
        "mode": f"{stat.S_IMODE(st.st_mode):o}",
        "refused": unsafe_reason(st),
        "quarantined": name.endswith(".quarantined"),
        "serializer": header.get("serializer") if isinstance(header, dict) else None,
        "records": sets + deletes,
        "sets": sets,
        "deletes": deletes,
        "distinct_keys": len(keys),
        "keys": listed,
        "deadlines": with_deadline,
        "deadlines_passed": passed,
        "key_deadlines": {k: keys[k] for k in listed if keys[k] is not None},
        "damage": [d.describe() for d in damage],
    }


def _key_with_deadline(key: str, deadline: int | None, now: int) -> str:
    if deadline is None:
        return key
    return f"{key} (deadline {utc(deadline)}{', passed' if deadline <= now else ''})"


def _lock_holder(path: str) -> str | None:
    try:
        with open(path + ".lock", "rb") as f:
            return f.read()[1:].decode("ascii", "replace").strip() or None
    except OSError:
        return None


def _run_inspect(args: argparse.Namespace) -> int:
    files = _files(args.path)
    reports = [inspect_file(name, args.keys) for name in files]
    holder = _lock_holder(args.path)
    if args.json:
        print(json.dumps({"journal": args.path, "lock_pid": holder, "files": reports}, indent=2))
        return 0
    print(
        f"journal {args.path}: {len(files)} file(s)"
        + (f"; lock file names pid {holder}" if holder else "")
    )
    now = wall_ms()
    for r in reports:
        state = "quarantined" if r["quarantined"] else "segment"
        refused = f"; REFUSED by replay: {r['refused']}" if r["refused"] else ""
        print(
            f"\n{r['file']} ({state}): {r['size']} bytes, uid {r['owner_uid']}, mode {r['mode']}{refused}"
        )
        deadlines = (
            f"; {r['deadlines']} sets with a deadline ({r['deadlines_passed']} passed)"
            if r["deadlines"]
            else ""
        )
        print(
            f"  serializer {r['serializer']}; {r['records']} records ({r['sets']} sets, "
            f"{r['deletes']} deletes), {r['distinct_keys']} distinct keys{deadlines}"
        )
        if r["keys"]:
            more = r["distinct_keys"] - len(r["keys"])
            listed = [_key_with_deadline(k, r["key_deadlines"].get(k), now) for k in r["keys"]]
            print("  keys: " + ", ".join(listed) + (f" ... and {more} more" if more > 0 else ""))
        for d in r["damage"]:
            print(f"  damage at {d}")
    return 0


def verify_file(name: str, serializer_name: str) -> tuple[Segment | None, list[str]]:
    """Decodes one file as replay would; returns it and what replay could not use."""
    data, unsafe = read_file(name)
    if unsafe is not None:
        return None, [f"{name}: replay refuses this file: it is {unsafe}"]
    segment = read_segment(name, data, get_serializer(serializer_name))
    issues = [f"{name}: {d.describe()}" for d in segment.damage if not d.torn_tail]
    issues += [p.describe() for p in segment.problems]
    return segment, issues


def _run_verify(args: argparse.Namespace) -> int:
    files = _files(args.path)
    bad = 0
    for name in files:
        segment, issues = verify_file(name, args.serializer)
        if segment is not None:
            torn = [d for d in segment.damage if d.torn_tail]
            note = f" (and {torn[0].describe()})" if torn else ""
            timed = sum(e.deadline is not None for e in segment.entries)
            deadlines = f", {timed} with a deadline" if timed else ""
            print(
                f"{name}: {len(segment.entries)} records decode with {args.serializer}"
                f"{deadlines}{note}"
            )
        for issue in issues:
            print(f"  NOT REPLAYABLE: {issue}")
        bad += bool(issues)
    print(f"{len(files)} file(s), {bad} with records replay cannot use")
    return 1 if bad else 0


def _run_replay(args: argparse.Namespace) -> int:
    import logging

    from ._open import open as open_cache
    from .writer import FlushError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not segments_of(args.path):
        print(f"journal {args.path}: nothing to replay", file=sys.stderr)
        return 0
    timed = _deadlines_in(args.path)
    try:
        cache = open_cache(
            args.into,
            args.table,
            serializer=args.serializer,
            journal=args.path,
            journal_errors=args.errors,
            journal_serializer=args.serializer,
            expiry=args.expiry,
        )
        keys = cache.pending
        kept = cache.store.accepts_ttls
        cache.close()
    except (JournalError, FlushError) as exc:
        print(f"lazycache journal replay: {exc}", file=sys.stderr)
        return 1
    print(f"journal {args.path}: {keys} key(s) written to {args.into} (table {args.table})")
    if timed and not kept:
        print(
            f"note: {timed} journaled set(s) had a deadline, which the table does not keep "
            "(replay with --expiry into a table with an expires_at column)",
            file=sys.stderr,
        )
    return 0


def _deadlines_in(path: str) -> int:
    """How many sets of a journal's segments carry a deadline (no value is decoded)."""
    count = 0
    for name in segments_of(path):
        data, unsafe = read_file(name)
        if unsafe is None:
            count += sum(peek(r.payload)[1] is not None for r in scan(data)[0])
    return count


def add_journal_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers ``lazycache journal`` and its subcommands."""
    journal = commands.add_parser(
        "journal",
        help="inspect, verify or replay a crash journal",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    actions = journal.add_subparsers(dest="action", metavar="action", required=True)

    inspect = actions.add_parser(
        "inspect", help="files, owners, records, keys and damage of a journal (decodes no value)"
    )
    inspect.add_argument(
        "path", help="the journal's path (journal= of the cache), or one of its files"
    )
    inspect.add_argument("--keys", type=int, default=20, help="keys listed per file (default 20)")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_run_inspect)

    verify = actions.add_parser(
        "verify", help="decode every record as replay would; exit 1 if any cannot be replayed"
    )
    verify.add_argument("path", help="the journal's path, or one of its files")
    verify.add_argument(
        "--serializer",
        default="json",
        help="the journal's value serializer: json (default), msgpack, or pickle (runs code in the file)",
    )
    verify.set_defaults(handler=_run_verify)

    replay = actions.add_parser(
        "replay", help="write a journal's records to a store, without the application"
    )
    replay.add_argument("path", help="the journal's path (journal= of the cache)")
    replay.add_argument("--into", required=True, metavar="URL", help="SQLAlchemy or redis:// URL")
    replay.add_argument(
        "--table", default="lazycache", help="table (or Redis key prefix); default lazycache"
    )
    replay.add_argument(
        "--serializer",
        default="json",
        help="the store's and the journal's serializer (default json)",
    )
    replay.add_argument(
        "--expiry",
        action="store_true",
        help="a SQL table with an expires_at column: write the journaled deadlines to it "
        "(Redis keys get theirs without it)",
    )
    replay.add_argument(
        "--errors",
        choices=("raise", "quarantine"),
        default="raise",
        help="a record or file that cannot be replayed: stop (raise, default) or keep it aside (quarantine)",
    )
    replay.set_defaults(handler=_run_replay)
