"""The crash journal: acknowledged writes appended to local files until the store has them.

Opt in with ``LazyWriterCache(store, journal="path/to/journal", journal_fsync=...)``.
Every write is appended to the current segment file with ``os.write`` before the
call returns; a cache that starts with segments left behind replays them into
itself (they reach the store as ordinary pending writes) and then deletes them.
The writer starts a new segment at each flush and deletes the old ones once a
flush has committed everything they cover.

What each ``journal_fsync`` policy guarantees (like Redis' appendfsync):

* ``"always"``: fsync before the write returns. Every acknowledged write
  survives a process crash, an OS crash and a power loss. Slowest.
* ``"everysec"`` (default): fsync once a second in the background. Every
  acknowledged write survives a process crash (kill -9); an OS crash or power
  loss can lose the last second.
* ``"no"``: never fsync; the OS writes the file when it likes. Every
  acknowledged write survives a process crash; an OS crash or power loss can
  lose whatever the OS had not written yet.

A change and its record succeed or fail together: the cache appends the record
first (under `Journal.lock`) and changes memory after; an append that fails (a
full disk) is cut back off the file and the change is not made; a change that
turns out not to happen (a delete of an absent key) undoes its record.

Opening a journal takes its lock, refuses files another local user could have
written (not owned by this user, or writable by group or others, in a directory
likewise), and reads every record left behind before the cache starts: what it
cannot decode is refused (`JournalError`) or, with ``errors="quarantine"``,
skipped and kept aside; damaged spans are always skipped, reported and kept aside.

The files a journal owns are exactly ``<path>.<20-digit ns>.<pid>`` (segments),
``<path>.lock`` (held with an exclusive lock while a cache has the journal open)
and ``<path>.<20-digit ns>.<pid>.quarantined`` (damaged segments kept aside).

Record format (each record framed, so replay can find the next valid record
after a damaged one)::

    magic b"\\xffLZJ" | seq u32 | length u32 | crc32(seq, length, payload) u32 | payload

The magic holds a byte (0xff) that UTF-8 text never contains. `seq` counts the
records of a segment from 0, so a damaged span reports how many records it cost.
Record 0 is the segment's header (``H`` + JSON: format, serializer); the others
are ``S`` + key length u32 + key + value (a set), ``T`` + deadline i64 + key length
u32 + key + value (a set with a deadline) or ``D`` + key (a delete). Keys are tagged
JSON (see `encode_key`); values are encoded by the journal's serializer (JSON unless
the user chose another): nothing is unpickled unless the user chose pickle.

Deadlines. A set whose entry has a write deadline (``set(key, value, ttl=)``, or any
set in a cache with ``expire_after_write``) is a ``T`` record: its deadline is the
write's wall-clock time plus the TTL, in milliseconds since the Unix epoch
(``time.time``, as the SQL store's ``expires_at``). The cache's ``clock=`` counts the
TTL down in memory; it is not what the journal records, since its readings mean
nothing to the next process (a monotonic clock starts anew with the machine, a test's
fake clock is made up): the TTL is a duration on both clocks. Replay gives the entry
the time left to its deadline on the wall clock, so the store gets the deadline the
write was made with, not one pushed back by the downtime; a deadline that passed
while no process ran gives `LATE_TTL_NS` (1 ms), as a late write gets from the
writer: the write still reaches the store, replacing the older value there, and
expires at once. Access deadlines belong to one process's reads: never journaled.
Format 1 segments (written before ``T`` existed) replay as they always did: their
sets get the replaying cache's own expiry options.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import math
import os
import re
import stat
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._checks import MAX_SECONDS
from ._core_common import LATE_TTL_NS, ttl_ns
from ._sentinels import MISSING
from .serializers import JSON, SerializationError, Serializer, compact_json

log = logging.getLogger("lazycache.journal")

FSYNC_POLICIES = ("always", "everysec", "no")
ERROR_POLICIES = ("raise", "quarantine")

MAGIC = b"\xffLZJ"
FORMAT = 2
"""Written in each segment's header: 2 adds ``T`` records; segments of format 1 read the same."""
_FRAME = struct.Struct("<4sIII")  # magic, seq, payload length, crc32 of (seq, length, payload)
_KEYLEN = struct.Struct("<I")
_DEADLINE = struct.Struct("<q")  # ms since the Unix epoch
_TIMED_HEAD = struct.Struct("<cqI")  # b"T", deadline, key length: what a T record starts with
_MAX_PAYLOAD = 1 << 31  # a longer length field is damage, not a record
QUARANTINE_SUFFIX = ".quarantined"
_SEGMENT = r"\.(\d{20})\.(\d+)"


class JournalError(RuntimeError):
    """A journal cannot be opened or replayed as it is; the message names the file and what to do."""


class JournalLockedError(JournalError):
    """Another live process (or cache) has the journal open; `pid` is the holder's process id."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"journal {path!r} is in use by {holder} (it holds {path + '.lock'!r}); "
            "give each live cache a journal path of its own"
        )


# ----------------------------------------------------------------------------- keys


def _key_tree(key: Any) -> Any:
    kind = type(key)
    if kind is str or kind is int or kind is bool or key is None:
        return key
    if kind is float:
        if not math.isfinite(key):
            raise TypeError("a float key must be finite")
        return key
    if kind is bytes:
        return {"b": base64.b64encode(key).decode("ascii")}
    if kind is tuple:
        return [_key_tree(part) for part in key]
    raise TypeError(f"{kind.__name__} is not a journaled key type")


def encode_key(key: Any) -> bytes:
    """The key as tagged JSON: str, int, float, bool, None as themselves, tuple as a list, bytes as {"b": base64}.

    Only these exact types (not subclasses) are accepted, so that replay rebuilds an
    equal key of the same type. Raises TypeError naming the key otherwise.
    """
    try:
        tree = _key_tree(key)
    except TypeError as exc:
        raise TypeError(
            f"the journal cannot record the key {key!r}: {exc}; journaled keys must be "
            "str, int, float, bool, None, bytes or tuples of them (exact types)"
        ) from None
    return compact_json(tree).encode("utf-8")


def _key_from_tree(tree: Any) -> Any:
    if isinstance(tree, list):
        return tuple(_key_from_tree(part) for part in tree)
    if isinstance(tree, dict):
        if set(tree) != {"b"} or not isinstance(tree["b"], str):
            raise ValueError(f"unknown key tag {tree!r}")
        return base64.b64decode(tree["b"], validate=True)
    return tree


def decode_key(data: bytes) -> Any:
    """The inverse of `encode_key`; raises ValueError on anything else."""
    return _key_from_tree(json.loads(data.decode("utf-8")))


# ----------------------------------------------------------------------------- reading


@dataclass
class Record:
    """One intact record of a segment."""

    offset: int
    seq: int
    payload: bytes


@dataclass
class Damage:
    """A span of a segment that holds no intact record."""

    offset: int
    length: int
    skipped: int | None
    """Records lost in the span (known from the sequence numbers around it); None at the end of a file."""
    torn_tail: bool = False
    """The span is the file's incomplete last record: a crash mid-append, never acknowledged."""

    def describe(self) -> str:
        if self.torn_tail:
            return (
                f"offset {self.offset}: the file ends with {self.length} bytes of an incomplete "
                "record (a crash mid-append: that write was never acknowledged)"
            )
        lost = "an unknown number of" if self.skipped is None else str(self.skipped)
        if not self.length:
            return f"offset {self.offset}: {lost} record(s) skipped (missing before this one)"
        return f"offset {self.offset}: {self.length} damaged bytes, {lost} record(s) skipped"


@dataclass
class Entry:
    """A decoded set or delete record."""

    offset: int
    key: Any
    value: Any  # MISSING for a delete
    payload: bytes
    deadline: int | None = None
    """A set's write deadline, in ms since the Unix epoch (a ``T`` record); None: it has none."""


@dataclass
class Problem:
    """A record or file that cannot be replayed as it is."""

    file: str
    offset: int | None
    reason: str
    key: Any = MISSING

    def describe(self) -> str:
        where = self.file if self.offset is None else f"{self.file} at offset {self.offset}"
        key = "" if self.key is MISSING else f" (key {self.key!r})"
        return f"{where}{key}: {self.reason}"


@dataclass
class Segment:
    """What one segment file holds: its intact records, its damaged spans, its undecodable records."""

    name: str
    size: int = 0
    header: dict[str, Any] | None = None
    entries: list[Entry] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Whether records were lost (a torn tail alone loses nothing acknowledged)."""
        return any(not d.torn_tail for d in self.damage)


def scan(data: bytes) -> tuple[list[Record], list[Damage]]:
    """The intact records of a segment's bytes, and the spans between them that hold none.

    After a record that fails its checks, the next valid record is found by searching
    for the magic and checking length and CRC at each candidate.
    """
    records: list[Record] = []
    damage: list[Damage] = []
    size = len(data)
    pos = 0
    bad_from = -1  # start of the current damaged span, if any
    while pos < size:
        record = _record_at(data, pos)
        if record is None:
            if bad_from < 0:
                bad_from = pos
            pos = data.find(MAGIC, pos + 1)
            if pos < 0:
                pos = size
            continue
        previous = records[-1].seq if records else -1
        if bad_from >= 0 or record.seq != previous + 1:
            # A gap in the numbering is damage too, even between intact records (bytes cut out).
            start = pos if bad_from < 0 else bad_from
            damage.append(Damage(start, pos - start, max(record.seq - previous - 1, 0)))
            bad_from = -1
        records.append(record)
        pos += _FRAME.size + len(record.payload)
    if bad_from >= 0:
        # Incomplete rather than corrupt: a frame that starts right here and runs past the end.
        torn = _is_torn(data, bad_from)
        damage.append(Damage(bad_from, size - bad_from, None, torn_tail=torn))
    return records, damage


def _record_at(data: bytes, pos: int) -> Record | None:
    if pos + _FRAME.size > len(data):
        return None
    magic, seq, length, crc = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + length
    if magic != MAGIC or length > _MAX_PAYLOAD or end > len(data):
        return None
    payload = data[pos + _FRAME.size : end]
    if zlib.crc32(payload, zlib.crc32(data[pos + 4 : pos + 12])) != crc:
        return None
    return Record(pos, seq, payload)


def _is_torn(data: bytes, pos: int) -> bool:
    """Whether data[pos:] is the start of one frame cut short (what a crash mid-append leaves)."""
    rest = data[pos:]
    if len(rest) < _FRAME.size:
        return MAGIC.startswith(rest[:4])
    magic, _, length, _ = _FRAME.unpack_from(rest)
    return bool(magic == MAGIC and length <= _MAX_PAYLOAD and _FRAME.size + length > len(rest))


def read_segment(name: str, data: bytes, serializer: Serializer) -> Segment:
    """Decodes a segment's bytes with `serializer`; what cannot be decoded is a Problem."""
    records, damage = scan(data)
    segment = Segment(name, len(data), damage=damage)
    for record in records:
        payload = record.payload
        kind = payload[:1]
        if kind == b"H":
            try:
                header = json.loads(payload[1:].decode("utf-8"))
            except ValueError as exc:
                segment.problems.append(Problem(name, record.offset, f"unreadable header: {exc}"))
                continue
            segment.header = header if isinstance(header, dict) else {}
            continue
        written_with = (segment.header or {}).get("serializer", serializer.name)
        key: Any = MISSING
        try:
            key, encoded, deadline = _parse(payload)
            if encoded is None:
                value = MISSING
            elif written_with != serializer.name:
                raise ValueError(
                    f"written with the {written_with!r} serializer, read with {serializer.name!r}"
                )
            else:
                value = decode_value(serializer, encoded)
        except Exception as exc:
            segment.problems.append(
                Problem(name, record.offset, f"cannot decode the record: {exc!r}", key)
            )
            continue
        segment.entries.append(Entry(record.offset, key, value, payload, deadline))
    return segment


def decode_value(serializer: Serializer, data: bytes) -> Any:
    return serializer.loads(data if serializer.binary else data.decode("utf-8"))


def _parse(payload: bytes) -> tuple[Any, bytes | None, int | None]:
    """(key, encoded value, deadline or None) of a set record, (key, None, None) of a delete;
    ValueError (or struct.error) otherwise.

    The key is decoded first so that a record whose value cannot be read can be named.
    """
    kind = payload[:1]
    if kind == b"S" or kind == b"T":
        deadline = None
        start = 1
        if kind == b"T":
            (deadline,) = _DEADLINE.unpack_from(payload, start)
            start += _DEADLINE.size
        (keylen,) = _KEYLEN.unpack_from(payload, start)
        start += _KEYLEN.size
        if start + keylen > len(payload):
            raise ValueError(f"a key length of {keylen} bytes runs past the record's end")
        return decode_key(payload[start : start + keylen]), payload[start + keylen :], deadline
    if kind == b"D":
        return decode_key(payload[1:]), None, None
    raise ValueError(f"unknown record kind {kind!r}")


def peek(payload: bytes) -> tuple[Any, int | None]:
    """(key, deadline or None) of a set or delete record's payload, without decoding its value;
    (MISSING, None) if it has none that can be read."""
    try:
        key, _, deadline = _parse(payload)
    except Exception:
        return MISSING, None
    return key, deadline


def segment_key(payload: bytes) -> Any:
    """The key of a set or delete record's payload, without decoding its value (MISSING if none)."""
    return peek(payload)[0]


def wall_ms() -> int:
    """The wall clock deadlines are journaled on: milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def deadline_after(ttl: int) -> int:
    """The deadline (ms since the epoch) of a TTL of `ttl` ns that starts now, rounded up."""
    return (time.time_ns() + ttl + 999_999) // 1_000_000


def time_left(deadline: int) -> int:
    """The TTL (ns) that a journaled deadline gives an entry replayed now: the time left to it,
    or `LATE_TTL_NS` once it has passed (the write is still made, and expires at once), and at
    most the longest TTL a cache takes."""
    left = (deadline - wall_ms()) * 1_000_000
    return min(max(left, LATE_TTL_NS), MAX_SECONDS * 1_000_000_000)


def _files_of(path: str, suffix: str) -> list[str]:
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(os.path.basename(path)) + _SEGMENT + re.escape(suffix))
    names = [n for n in os.listdir(directory) if pattern.fullmatch(n)]
    return [os.path.join(os.path.dirname(path), n) for n in sorted(names)]


def segments_of(path: str) -> list[str]:
    """This journal's segment files, oldest first: exactly ``<path>.<20 digits>.<pid>``.

    Not ``<path>.users.<...>`` (another journal's), nor quarantined files.
    """
    return _files_of(path, "")


def quarantined_of(path: str) -> list[str]:
    """This journal's quarantined files, oldest first."""
    return _files_of(path, QUARANTINE_SUFFIX)


def unsafe_reason(st: os.stat_result, *, directory: bool = False) -> str | None:
    """Why a file (or directory) another local user could have written must not be replayed, or None."""
    if os.name == "nt":  # no POSIX owners or modes; NTFS ACLs are the user's to set
        return None
    if st.st_uid != os.geteuid() and not (directory and st.st_uid == 0):
        return f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by {'group' if st.st_mode & stat.S_IWGRP else 'others'} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def read_file(name: str, check: bool = True) -> tuple[bytes, str | None]:
    """A segment's bytes, unless it is not safe to read: (b"", reason). Checks the opened file itself.

    `check=False` reads it anyway (to inspect it, never to decode its values).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return b"", "a symbolic link"
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", "not a regular file"
        reason = unsafe_reason(st)
        if reason is not None and check:
            return b"", reason
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), None
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- locking


def _lock(fd: int) -> bool:
    """Takes an exclusive lock on fd without waiting; False if another holds it."""
    if sys.platform == "win32":  # as os.name == "nt", in the form type checkers follow
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> int | None:
    """The pid the lock file records (after its first byte, the one Windows locks).

    A holder that has only just taken the lock may not have written its pid yet: the
    file is read again for a moment before the holder is given up as unknown.
    """
    deadline = time.monotonic() + 0.2
    while True:
        try:
            os.lseek(fd, 1, os.SEEK_SET)
            return int(os.read(fd, 32).decode("ascii").strip())
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return None
        time.sleep(0.005)


def acquire_lock(path: str) -> int:
    """Opens and exclusively locks ``<path>.lock``, recording this pid in it; returns its fd.

    The lock is released when every descriptor of it is closed (a forked child keeps it).
    """
    name = path + ".lock"
    fd = os.open(name, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        reason = unsafe_reason(os.fstat(fd))
        if reason is not None:
            raise JournalError(f"journal lock file {name!r} is {reason}: refusing to use it")
        if not _lock(fd):
            raise JournalLockedError(path, _holder(fd))
        # Byte 0 is the one msvcrt.locking locks (others cannot read it); the pid follows it.
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"\n{os.getpid()}\n".encode("ascii"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_directory(path: str) -> str:
    """The journal's directory, if it exists and no other local user can write into it."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"journal directory {directory!r} does not exist")
    reason = unsafe_reason(os.stat(directory), directory=True)
    if reason is not None:
        raise JournalError(
            f"journal directory {directory!r} is {reason}: another user could plant records "
            "in it; put the journal in a directory only you can write to"
        )
    return directory


# ----------------------------------------------------------------------------- the journal


class Journal:
    """Append-only segments ``<path>.<creation ns>.<pid>`` of (key, value or MISSING) records.

    Opening takes the journal's lock and reads the segments left behind (see `recovered`);
    `errors` says what happens to a record or file that cannot be replayed: "raise"
    (JournalError, nothing replayed or moved) or "quarantine" (it is skipped, logged
    and its file kept aside as ``*.quarantined``). Damaged spans are always skipped,
    logged and their file quarantined: no setting makes them readable.
    `expire_after_write` (the cache's, seconds) is the TTL of a set that has none of its
    own: its record carries the deadline (see the module's "Deadlines").
    """

    def __init__(
        self,
        path: str,
        fsync: str = "everysec",
        serializer: Serializer = JSON,
        errors: str = "raise",
        expire_after_write: float | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(
                f"journal_fsync must be one of {', '.join(map(repr, FSYNC_POLICIES))}, got {fsync!r}"
            )
        if errors not in ERROR_POLICIES:
            raise ValueError(
                f"journal_errors must be one of {', '.join(map(repr, ERROR_POLICIES))}, got {errors!r}"
            )
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"journal must be a file path, not {type(path).__name__}")
        if not isinstance(serializer, Serializer):
            raise TypeError(f"the journal's serializer must be a Serializer, not {serializer!r}")
        self.path = os.fspath(path)
        check_directory(self.path)
        self.fsync = fsync
        self.serializer = serializer
        self.errors = errors
        self._write_ttl = ttl_ns("expire_after_write", expire_after_write)  # ns, 0: none
        self.lock = threading.Lock()
        """Held around (change the cache, append the record), so the journal's order is the cache's."""
        self._header = b"H" + json.dumps({"format": FORMAT, "serializer": serializer.name}).encode()
        self._segments: list[str] = []  # this process's segments, oldest first; the last is current
        self._fd = -1
        self._seq = 0  # of the next record in the current segment
        self._size = 0  # of the current segment
        self._unsynced = False
        self._closed = False
        self._lock_fd = acquire_lock(self.path)
        try:
            self.leftovers: list[Segment] = self._read_leftovers()
            self._open_segment()
        except BaseException:
            os.close(self._lock_fd)  # a journal that did not open holds nothing
            raise
        self._syncer: threading.Thread | None = None
        if fsync == "everysec":
            self._start_syncer()

    def _read_leftovers(self) -> list[Segment]:
        segments = []
        for name in segments_of(self.path):
            data, unsafe = read_file(name)
            if unsafe is not None:
                segment = Segment(name)
                segment.problems.append(Problem(name, None, f"not replayed: the file is {unsafe}"))
            else:
                segment = read_segment(name, data, self.serializer)
            segments.append(segment)
        problems = [p for s in segments for p in s.problems]
        if problems and self.errors == "raise":
            raise JournalError(
                f"journal {self.path!r}: {len(problems)} record(s) or file(s) cannot be replayed "
                "(nothing was replayed or moved; fix the cause, or open with "
                'journal_errors="quarantine" to replay the rest and keep these aside): '
                + "; ".join(p.describe() for p in problems[:10])
            )
        for segment in segments:
            for damage in segment.damage:
                (log.warning if damage.torn_tail else log.error)(
                    "journal %s: %s", segment.name, damage.describe()
                )
            for problem in segment.problems:
                log.error("journal: skipped %s", problem.describe())
        return segments

    @property
    def recovered(self) -> Iterator[Entry]:
        """The decodable set/delete records of the segments found at open, in order."""
        for segment in self.leftovers:
            yield from segment.entries

    def _open_segment(self) -> None:
        name = f"{self.path}.{time.time_ns():020d}.{os.getpid()}"
        self._fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL | getattr(os, "O_BINARY", 0),
            0o600,
        )
        self._segments.append(name)
        self._seq = 0
        self._size = 0

    def _start_syncer(self) -> None:
        self._syncer = threading.Thread(
            target=self._sync_every_second, name="lazycache-journal", daemon=True
        )
        self._syncer.start()

    def _sync_every_second(self) -> None:
        while not self._closed:
            time.sleep(1.0)
            with self.lock:
                if self._unsynced and not self._closed:
                    try:
                        os.fsync(self._fd)
                    except OSError:
                        # Logged, and tried again next second: the thread must not die.
                        log.exception("fsync of journal %s failed", self._segments[-1])
                        continue
                    self._unsynced = False

    # ----------------------------------------------------------- writing
    def encode(self, key: Any, value: Any, ttl: int = -1) -> bytes:
        """One record's payload; value is MISSING for a delete.

        `ttl`, as the core's: the entry's own TTL in ns, or -1 for the cache's
        `expire_after_write`; a set with one gets its deadline, counted from now.
        Raises TypeError for a key the journal cannot record, SerializationError naming
        the key for a value its serializer cannot encode.
        """
        encoded_key = encode_key(key)
        if value is MISSING:
            return b"D" + encoded_key
        data = self.serializer.encode(key, value)
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, bytes):
            raise SerializationError(
                key, TypeError(f"the serializer returned {type(data).__name__}, not str or bytes")
            )
        if ttl < 0:
            ttl = self._write_ttl
        if ttl > 0:
            head = _TIMED_HEAD.pack(b"T", deadline_after(ttl), len(encoded_key))
        else:
            head = b"S" + _KEYLEN.pack(len(encoded_key))
        return head + encoded_key + data

    def _frame(self, payload: bytes) -> bytes:
        head = struct.pack("<II", self._seq, len(payload))
        self._seq += 1
        return MAGIC + head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload

    def append(self, *payloads: bytes) -> tuple[int, int]:
        """Appends records in one write; returns the mark to `undo` them with. The caller holds `lock`.

        All or nothing: if the write (or the "always" fsync) fails, the segment is cut
        back to where it was and the error raised; the caller must then not apply its change.
        """
        mark = (self._size, self._seq)
        try:
            frames = [self._frame(self._header)] if self._size == 0 else []
            frames.extend(self._frame(p) for p in payloads)
            view = memoryview(b"".join(frames))
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
            if self.fsync == "always":
                os.fsync(self._fd)
            else:
                self._unsynced = True
        except BaseException:
            self.undo(mark)
            raise
        return mark

    def undo(self, mark: tuple[int, int]) -> None:
        """Removes the records appended since `mark` (their change did not happen). Caller holds `lock`."""
        size, self._seq = mark
        self._cut(size)

    def _cut(self, mark: int) -> None:
        if self._size == mark:
            return
        try:
            os.ftruncate(self._fd, mark)
            if self.fsync == "always":
                os.fsync(self._fd)
        except OSError:
            # Replay skips what is left as a damaged span and reports it.
            log.exception("could not cut journal %s back to %d bytes", self._segments[-1], mark)
            return
        self._size = mark

    def rotate(self) -> str | None:
        """Starts a new segment if the current one has records; returns the newest closed segment."""
        with self.lock:
            if self._closed:
                return None
            if self._size:
                if self.fsync != "no":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._open_segment()
            return self._segments[-2] if len(self._segments) > 1 else None

    def release(self, upto: str) -> None:
        """Deletes this process's segments up to and including `upto`: the store has their writes."""
        with self.lock:
            while (
                self._segments
                and self._segments[0] <= upto
                and self._segments[0] != self._segments[-1]
            ):
                _unlink(self._segments.pop(0))

    def release_leftovers(self) -> None:
        """Once their writes are journaled again: deletes the segments found at open, and keeps
        aside (quarantines) those with damage or records that could not be replayed."""
        for segment in self.leftovers:
            if segment.damaged or segment.problems:
                aside = segment.name + QUARANTINE_SUFFIX
                os.replace(segment.name, aside)
                log.error(
                    "journal %s was kept aside as %s (inspect it with "
                    "`lazycache journal inspect %s`)",
                    segment.name,
                    aside,
                    aside,
                )
            else:
                _unlink(segment.name)
        self.leftovers = []

    def close(self, committed: bool) -> None:
        """Closes the journal; deletes every segment of this process if `committed`."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.fsync != "no":
                    os.fsync(self._fd)
                os.close(self._fd)
                if committed:
                    for name in self._segments:
                        _unlink(name)
                    self._segments = []
            finally:
                os.close(self._lock_fd)  # releases the lock once no forked child holds it too

    def reopen_in_child(self) -> None:
        """After fork: the child appends to segments of its own, never to the parent's.

        The child shares the parent's lock (one open file description): the journal stays
        locked while either lives.
        """
        self.lock = threading.Lock()
        os.close(self._fd)
        self._segments = []
        self.leftovers = []
        self._open_segment()
        if self.fsync == "everysec":
            self._start_syncer()


def records_of(path: str, serializer: Serializer = JSON) -> list[tuple[Any, Any]]:
    """The (key, value or MISSING) records of a journal's segments, in order, without opening it."""
    out: list[tuple[Any, Any]] = []
    for name in segments_of(path):
        data, unsafe = read_file(name)
        if unsafe is not None:
            raise JournalError(f"journal file {name!r} is {unsafe}: not read")
        out.extend((e.key, e.value) for e in read_segment(name, data, serializer).entries)
    return out


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
