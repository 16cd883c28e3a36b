"""The crash journal: acknowledged writes appended to local files until the store has them.

Opt in with ``LazyWriterCache(store, journal="path/to/journal", journal_fsync=...)``.
Every write is appended (pickled) to the current segment file with ``os.write``
before the call returns; a cache that starts with segments left behind replays
them into itself (they reach the store as ordinary pending writes) and then
deletes them. The writer starts a new segment at each flush and deletes the old
ones once a flush has committed everything they cover.

What each ``journal_fsync`` policy guarantees (like Redis' appendfsync):

* ``"always"``: fsync before the write returns. Every acknowledged write
  survives a process crash, an OS crash and a power loss. Slowest.
* ``"everysec"`` (default): fsync once a second in the background. Every
  acknowledged write survives a process crash (kill -9); an OS crash or power
  loss can lose the last second.
* ``"no"``: never fsync; the OS writes the file when it likes. Every
  acknowledged write survives a process crash; an OS crash or power loss can
  lose whatever the OS had not written yet.

Records are length-prefixed and checksummed; a torn record at the end of a
segment (a crash mid-append) is ignored on replay: its write was never
acknowledged.
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

from .serializers import SerializationError

log = logging.getLogger("lazycache")

FSYNC_POLICIES = ("always", "everysec", "no")

_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload


class Journal:
    """Append-only segments ``<path>.<creation ns>.<pid>`` of (key, value or MISSING) records."""

    def __init__(self, path: str, fsync: str = "everysec") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(
                f"journal_fsync must be one of {', '.join(map(repr, FSYNC_POLICIES))}, got {fsync!r}"
            )
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"journal must be a file path, not {type(path).__name__}")
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValueError(f"journal directory {directory!r} does not exist")
        self.fsync = fsync
        self.lock = threading.Lock()
        """Held around (change the cache, append the record), so the journal's order is the cache's."""
        self.leftovers: list[str] = sorted(glob.glob(glob.escape(self.path) + ".*.*"))
        self._segments: list[str] = []  # this process's segments, oldest first; the last is current
        self._fd = -1
        self._records = 0  # in the current segment
        self._unsynced = False
        self._closed = False
        self._open_segment()
        self._syncer: threading.Thread | None = None
        if fsync == "everysec":
            self._start_syncer()

    def _open_segment(self) -> None:
        name = f"{self.path}.{time.time_ns():020d}.{os.getpid()}"
        self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        self._segments.append(name)
        self._records = 0

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
                    os.fsync(self._fd)
                    self._unsynced = False

    # ----------------------------------------------------------- writing
    @staticmethod
    def encode(key: Any, value: Any) -> bytes:
        """One record; value is MISSING for a delete. Raises SerializationError naming the key."""
        try:
            payload = pickle.dumps((key, value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(key, exc) from exc
        return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload

    def append(self, record: bytes) -> None:
        """Appends an encoded record; the caller holds `lock`."""
        view = memoryview(record)
        while view:
            view = view[os.write(self._fd, view) :]
        self._records += 1
        if self.fsync == "always":
            os.fsync(self._fd)
        else:
            self._unsynced = True

    def rotate(self) -> str | None:
        """Starts a new segment if the current one has records; returns the newest closed segment."""
        with self.lock:
            if self._closed:
                return None
            if self._records:
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
        """Deletes the segments found at start, once their writes are journaled again."""
        for name in self.leftovers:
            _unlink(name)
        self.leftovers = []

    def close(self, committed: bool) -> None:
        """Closes the journal; deletes every segment of this process if `committed`."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if self.fsync != "no":
                os.fsync(self._fd)
            os.close(self._fd)
            if committed:
                for name in self._segments:
                    _unlink(name)
                self._segments = []

    def reopen_in_child(self) -> None:
        """After fork: the child appends to segments of its own, never to the parent's."""
        self.lock = threading.Lock()
        os.close(self._fd)
        self._segments = []
        self.leftovers = []
        self._open_segment()
        if self.fsync == "everysec":
            self._start_syncer()

    # ----------------------------------------------------------- replay
    def replay(self) -> Iterator[tuple[Any, Any]]:
        """The (key, value or MISSING) records of the segments found at start, in order."""
        for name in self.leftovers:
            yield from _read_segment(name)


def _read_segment(name: str) -> Iterator[tuple[Any, Any]]:
    with open(name, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            log.warning(
                "lazycache: journal %s ends with a torn record (a crash mid-write); ignored", name
            )
            return
        pos += _HEADER.size + length
        yield pickle.loads(payload)


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
