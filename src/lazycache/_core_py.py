"""Pure-Python twin of the compiled core (``_core.pyx``).

This module is the specification: the compiled core must behave exactly like it,
and every test runs against both. It is deliberately plain.

The core owns three structures:

* the map, ``key -> Entry``;
* the dirty queue, a FIFO of entries whose latest change has not been handed to
  the writer (``DIRTY``); entries the writer is saving are ``INFLIGHT``;
* the eviction ring for CLOCK (second chance): one slot per entry, a hand that
  sweeps the slots, a reference bit set on every access.

A delete leaves a *tombstone* (``DELETED``) in the map until the delete has been
written, so that a read never falls through to the stale row in the store.
Entries that are dirty, in flight or deleted are pinned: eviction skips them.

An entry keeps its key's hash from when the key came in. The core needs a held key's
``__hash__``/``__eq__`` only to find it by key (a caller's lookup, which raises at
that call if they raise): walks over the map read the entries' keys, and an entry
leaves the map even if its key raises or hashes differently now (``_unmap``). So a
key that turns hostile cannot make a commit, an eviction or a delete fail half way,
nor keep other entries in flight (the compiled core uses its stored hashes the same way).

Every change holds one re-entrant lock, so compound operations are atomic even
for keys whose ``__hash__``/``__eq__`` run Python code. Reads take no lock (see
``__getitem__``). The lock is never held while user code other than a key's
hash/eq runs: the hooks
``_load_missing``, ``_delete_missing`` and ``_wake`` are called after it is
released, and replaced or evicted values are dropped after it is released.

Expiry (``expire_after_write``, ``expire_after_access``, a per-entry TTL) is off until
a cache asks for it, and then costs the hot path one flag test when off: each entry
carries two deadlines on the core's expiry clock (nanoseconds), the write deadline
(set by every write or load: the TTL, else ``expire_after_write``) and the access
deadline (``expire_after_access`` past the last read or write); 0 is "none". An entry
is expired once either has passed, unless its change is pending: an acknowledged write
is never dropped by a timer (and the store's older value must not be read instead).
A read that finds a clean entry expired drops it and reads through; the pruner drops
the others (``_expire``). The clock is read before any lock is taken: it may be the
cache's ``clock=``, which is Python code.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ._core_common import (
    LATE_TTL_NS,
    SIGNAL_PRUNE,
    SIGNAL_WRITE,
    Full,
    check_limit,
    clock_ns,
    ttl_ns,
)
from ._sentinels import ABSENT, MISSING

DIRTY = 1  # queued for the writer
INFLIGHT = 2  # in a batch the writer is saving now
DELETED = 4  # tombstone: the delete has not reached the store yet
STALE = 16  # invalidated by another process while its own write was in flight: drop once written
PINNED = DIRTY | INFLIGHT | DELETED

SLICE = 64
"""Entries the writer takes or settles per hold of the lock: setters never wait for a whole batch."""

# One pending item handed to the writer: (key, value or MISSING for a delete, entry, seq).
Pending = tuple[Any, Any, "Entry", int]


class Entry:
    __slots__ = ("adl", "flags", "hash", "key", "ref", "seq", "since", "slot", "value", "wdl")

    def __init__(
        self, key: Any, value: Any, flags: int, seq: int, slot: int, since: int, hash_: int
    ) -> None:
        self.key = key
        self.hash = hash_  # the key's hash when it came in (see _unmap)
        self.value = value  # MISSING for a tombstone
        self.flags = flags
        self.ref = True  # CLOCK reference bit: accessed since the hand last passed
        self.seq = seq
        self.slot = slot
        self.since = since  # the core's clock when the entry last became pending
        self.wdl = 0  # expiry: write deadline (ns on the expiry clock), 0 for none
        self.adl = 0  # expiry: access deadline, 0 for none


class _Held:
    """Stands in the map for the key of an entry that could not be re-inserted by its key
    (its hash or eq raises now; see ``Core._unmap``).

    It hashes as the key did when it came in and equals that key, so a lookup finds the
    entry again once the key works again, as the compiled core's would.
    """

    __slots__ = ("entry", "hash")

    def __init__(self, entry: Entry, hash_: int) -> None:
        self.entry = entry
        self.hash = hash_

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        key = self.entry.key
        if other is key or other is self:
            return True
        if type(other) is _Held:  # two stand-ins never compare their keys
            return False
        return bool(key == other)


class Core:
    """Map, dirty queue and CLOCK eviction bookkeeping (pure Python)."""

    def __init__(
        self,
        maxsize: int | None = None,
        write_threshold: int | None = None,
        read_through: bool = False,
        max_pending: int | None = None,
        expire_after_write: float | None = None,
        expire_after_access: float | None = None,
        clock: Any = None,
    ) -> None:
        self._maxsize = check_limit("maxsize", maxsize)
        self._write_threshold = check_limit("write_threshold", write_threshold)
        self._max_pending = check_limit("max_pending", max_pending)
        self._read_through = bool(read_through)
        self._eaw = ttl_ns("expire_after_write", expire_after_write)
        self._eaa = ttl_ns("expire_after_access", expire_after_access)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, not {type(clock).__name__}")
        self._clock_fn = clock
        self._expiring = bool(self._eaw or self._eaa)  # on for good once a TTL is used
        self._expirations = 0
        self._clock = 0
        self._lock = threading.RLock()
        self._map: dict[Any, Entry] = {}
        self._dirty: deque[Entry] = deque()
        self._ring: list[Entry | None] = []
        self._free: list[int] = []
        self._hand = 0
        self._seq = 0
        self._epoch = 0
        self._ntomb = 0
        self._ninflight = 0
        self._npending = 0  # entries DIRTY or INFLIGHT (or both)
        self._signals = 0
        self._closed = False
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._deletes = 0
        self._evictions = 0

    # ----------------------------------------------------------- hooks
    def _load_missing(self, key: Any) -> Any:
        """Called (without the lock) on a read miss when read_through is on; returns the value or MISSING."""
        return MISSING

    def _delete_missing(self, key: Any) -> None:
        """Called (without the lock) when read_through is on and a deleted key has no entry in memory."""
        raise KeyError(key)

    def _wake(self, signal: int) -> None:
        """Called (without the lock) when SIGNAL_PRUNE or SIGNAL_WRITE is first raised."""

    def _backpressure(self, key: Any, value: Any) -> bool:
        """Called (without the lock) when a write found max_pending entries pending; it is retried.

        value is MISSING for a delete. Returns True if it performed the write itself.
        """
        return False

    def _set_max_pending(self, max_pending: int | None) -> None:
        """Sets the bound admission enforces (None: unbounded, as during journal replay)."""
        self._max_pending = check_limit("max_pending", max_pending)

    # ----------------------------------------------------------- expiry
    def _now(self) -> int:
        """The expiry clock, in nanoseconds. Read without the lock: it may be Python code."""
        clock = self._clock_fn
        return time.monotonic_ns() if clock is None else clock_ns(clock)

    def _enable_expiry(self) -> None:
        """Turns expiry on (for a per-entry TTL in a cache made without expiry); never off."""
        with self._lock:
            self._expiring = True

    def _stamp(self, entry: Entry, now: int, ttl: int) -> None:
        """Sets the deadlines of an entry just written or loaded (ttl: ns, or -1 for the cache's)."""
        if ttl > 0:
            entry.wdl = now + ttl
        else:
            entry.wdl = now + self._eaw if self._eaw else 0
        entry.adl = now + self._eaa if self._eaa else 0

    def _expired(self, entry: Entry, now: int) -> bool:
        """Whether a live entry is past a deadline and clean (a pending change never expires)."""
        return (0 < entry.wdl <= now or 0 < entry.adl <= now) and not entry.flags & PINNED

    def _drop_expired(self, entry: Entry) -> None:
        """Removes an expired entry (lock held); its value is released by the caller, unlocked."""
        self._detach(entry)
        self._expirations += 1

    def _read_expiring(self, key: Any, count: bool) -> Any:
        """A read of memory in an expiring cache: the value, MISSING (a tombstone), or ABSENT
        (unknown or expired: an expired clean entry is dropped here)."""
        now = self._now()
        entry = self._map.get(key)
        if entry is not None:
            value = entry.value
            if value is not MISSING and self._expired(entry, now):
                with self._lock:
                    if self._map.get(key) is entry and self._expired(entry, now):
                        self._drop_expired(entry)
                value = ABSENT
            elif value is not MISSING:
                if count:
                    entry.ref = True
                    self._hits += 1
                if self._eaa:
                    entry.adl = now + self._eaa
                return value
            if count:
                self._misses += 1
            return value
        if count:
            self._misses += 1
        return ABSENT

    def _expire(self) -> int:
        """Drops every expired clean entry (run by the pruner); returns how many."""
        if not self._expiring:
            return 0
        now = self._now()
        with self._lock:
            expired = [e for e in self._ring if e is not None and self._expired(e, now)]
            for entry in expired:
                self._drop_expired(entry)
        return len(expired)

    def _ttls(self, batch: list[Pending]) -> list[float | None]:
        """Per batch item, the seconds to its write deadline (at least LATE_TTL_NS), or None."""
        now = self._now() if self._expiring else 0
        with self._lock:
            return [
                max(entry.wdl - now, LATE_TTL_NS) / 1e9 if entry.wdl else None
                for _, _, entry, _ in batch
            ]

    # ----------------------------------------------------------- internals (lock held)
    def _admit(self, entry: Entry | None) -> None:
        """The one admission check: raises Full if making entry (None: a new one) pending
        would exceed max_pending. Under the lock, so the check and the change are one step."""
        if (
            self._max_pending
            and self._npending >= self._max_pending
            and (entry is None or not entry.flags & (DIRTY | INFLIGHT))
        ):
            raise Full

    def _check_writable(self) -> None:
        if self._closed:
            raise RuntimeError("the cache is closed: it accepts no more writes")

    def _new_entry(self, key: Any, value: Any, flags: int) -> Entry:
        hash_ = hash(key)  # before any change: a key that cannot be hashed raises here
        self._seq += 1
        if self._free:
            slot = self._free.pop()
            entry = Entry(key, value, flags, self._seq, slot, self._clock, hash_)
            self._ring[slot] = entry
        else:
            entry = Entry(key, value, flags, self._seq, len(self._ring), self._clock, hash_)
            self._ring.append(entry)
        try:
            self._map[key] = entry
        except BaseException:
            self._ring[entry.slot] = None
            self._free.append(entry.slot)
            raise
        if flags & DIRTY:
            self._dirty.append(entry)
            self._npending += 1
        if flags & DELETED:
            self._ntomb += 1
        return entry

    def _detach(self, entry: Entry) -> None:
        self._unmap(entry)
        self._ring[entry.slot] = None
        self._free.append(entry.slot)
        if entry.flags & DELETED:
            self._ntomb -= 1
        self._epoch += 1

    def _unmap(self, entry: Entry) -> None:
        """Removes entry from the map, whatever its key's hash and eq do now."""
        key = entry.key
        try:
            if self._map.get(key) is entry:
                del self._map[key]
                return
        except Exception:
            pass  # the key's hash or eq raises now: the map is rebuilt without it
        # The key cannot find its own entry any more (it raises, or hashes differently):
        # rebuild the map in order without the entry. Each other key goes in as itself if
        # it still hashes as it did, else through a stand-in with its stored hash. Rare
        # (a key that turned hostile) and O(n), so the common path stays a plain dict.
        rebuilt: dict[Any, Entry] = {}
        for other in self._map.values():
            if other is entry:
                continue
            try:
                if hash(other.key) == other.hash:
                    rebuilt[other.key] = other
                    continue
            except Exception:
                pass
            try:
                rebuilt[_Held(other, other.hash)] = other
            except Exception:
                # Only if another key of the same hash has an eq that raises too: a
                # stand-in no lookup by key reaches, but that leaves the map by identity.
                rebuilt[_Held(other, id(other))] = other
        self._map = rebuilt

    def _signal(self) -> int:
        """Raises the signals whose threshold has been crossed; returns the new ones."""
        raised = 0
        signals = self._signals
        if (
            self._maxsize
            and not signals & SIGNAL_PRUNE
            and len(self._map) - self._ntomb > self._maxsize
        ):
            raised = SIGNAL_PRUNE
        if (
            self._write_threshold
            and not signals & SIGNAL_WRITE
            and len(self._dirty) >= self._write_threshold
        ):
            raised |= SIGNAL_WRITE
        if raised:
            self._signals = signals | raised
        return raised

    def _set_locked(self, key: Any, value: Any, now: int = 0, ttl: int = -1) -> tuple[Any, int]:
        """Sets key; returns (replaced value or MISSING, signals raised).

        With expiry on, the entry's deadlines count from `now` (its TTL: `ttl` ns, or -1
        for the cache's expire_after_write).
        """
        if self._closed:
            raise RuntimeError("the cache is closed: it accepts no more writes")
        if value is MISSING:
            raise ValueError("lazycache.MISSING stands for 'no value' and cannot be stored")
        entry = self._map.get(key)
        if (
            self._max_pending and self._npending >= self._max_pending
        ):  # spares a call when far below
            self._admit(entry)
        self._sets += 1
        if entry is None:
            entry = self._new_entry(key, value, DIRTY)
            if self._expiring:
                self._stamp(entry, now, ttl)
            return MISSING, self._signal()
        if self._expiring:
            self._stamp(entry, now, ttl)
        old = entry.value
        flags = entry.flags
        revived = flags & DELETED
        if revived:
            flags &= ~DELETED
            self._ntomb -= 1
        self._seq += 1
        entry.value = value
        entry.seq = self._seq
        entry.ref = True
        if flags & DIRTY:
            entry.flags = flags
            # Unless a tombstone came back to life, neither size nor queue grew.
            return old, self._signal() if revived else 0
        if not flags & INFLIGHT:
            self._npending += 1
        entry.since = self._clock
        entry.flags = flags | DIRTY
        self._dirty.append(entry)
        return old, self._signal()

    def _tombstone(self, entry: Entry) -> Any:
        """Marks a live entry deleted and queues its delete; returns its value."""
        old = entry.value
        self._seq += 1
        flags = entry.flags
        if not flags & DIRTY:
            if not flags & INFLIGHT:
                self._npending += 1
            entry.since = self._clock
            self._dirty.append(entry)
        entry.flags = flags | DIRTY | DELETED
        entry.value = MISSING
        entry.seq = self._seq
        self._ntomb += 1
        self._deletes += 1
        return old

    # ----------------------------------------------------------- dict protocol (hot path)
    # Reads take no lock: a tombstone's value is MISSING, so one attribute read tells a
    # live value from a deleted one, and the reference bit is an attribute of its own,
    # so setting it cannot undo a writer's change to the flags.
    def __getitem__(self, key: Any) -> Any:
        if self._expiring:
            value = self._read_expiring(key, True)
            if value is ABSENT and self._read_through:
                value = self._load_missing(key)
            if value is MISSING or value is ABSENT:
                raise KeyError(key)
            return value
        entry = self._map.get(key)
        if entry is not None:
            value = entry.value
            if value is not MISSING:
                entry.ref = True
                self._hits += 1
                return value
            self._misses += 1
            raise KeyError(key)
        self._misses += 1
        if self._read_through:
            value = self._load_missing(key)
            if value is not MISSING:
                return value
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if self._expiring:
            value = self._read_expiring(key, True)
            if value is ABSENT and self._read_through:
                value = self._load_missing(key)
            return default if value is MISSING or value is ABSENT else value
        entry = self._map.get(key)
        if entry is not None:
            value = entry.value
            if value is not MISSING:
                entry.ref = True
                self._hits += 1
                return value
            self._misses += 1
            return default
        self._misses += 1
        if self._read_through:
            value = self._load_missing(key)
            if value is not MISSING:
                return value
        return default

    def _peek(self, key: Any) -> Any:
        """A read of memory only (counted as a hit or a miss): the value, MISSING (a tombstone),
        or ABSENT (memory does not know the key); never reads through."""
        if self._expiring:
            return self._read_expiring(key, True)
        entry = self._map.get(key)
        if entry is None:
            self._misses += 1
            return ABSENT
        value = entry.value
        if value is MISSING:
            self._misses += 1
            return MISSING
        entry.ref = True
        self._hits += 1
        return value

    def __contains__(self, key: Any) -> bool:
        if self._expiring:
            value = self._read_expiring(key, False)
            if value is ABSENT:
                return self._read_through and self._load_missing(key) is not MISSING
            return value is not MISSING
        entry = self._map.get(key)
        if entry is not None:
            return entry.value is not MISSING
        return self._read_through and self._load_missing(key) is not MISSING

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._expiring:  # the one test expiry costs a cache without it
            self._set_expiring(key, value, -1)
            return
        # acquire()/release() rather than `with`, and the common case of _set_locked inline:
        # each halves what its part costs on this path (callgrind), and a set is the hot write.
        lock = self._lock
        while True:
            lock.acquire()
            try:
                entry = self._map.get(key)
                if (
                    entry is None
                    or entry.flags & (DELETED | INFLIGHT)
                    or value is MISSING
                    or self._closed
                ):
                    old, raised = self._set_locked(key, value)
                else:  # a live entry, not being written: _set_locked's path for it
                    flags = entry.flags
                    if (
                        not flags & DIRTY
                        and self._max_pending
                        and self._npending >= self._max_pending
                    ):
                        self._admit(entry)  # spares the call when far below the bound
                    old = entry.value
                    self._sets += 1
                    self._seq += 1
                    entry.value = value
                    entry.seq = self._seq
                    entry.ref = True
                    if flags & DIRTY:
                        return  # already queued: old is released after the lock
                    self._npending += 1
                    entry.since = self._clock
                    entry.flags = flags | DIRTY
                    self._dirty.append(entry)
                    raised = self._signal()
                break
            except Full:
                pass  # nothing changed: backpressure below, without the lock, then again
            finally:
                lock.release()
            if self._backpressure(key, value):
                return  # it wrote the entry itself
        del old  # a replaced value's __del__ runs outside the lock
        if raised:
            self._wake(raised)

    def _set_expiring(self, key: Any, value: Any, ttl: int) -> None:
        """`__setitem__` in an expiring cache (ttl: ns, or -1 for the cache's)."""
        while True:
            try:
                self._put(key, value, ttl)
                return
            except Full:
                if self._backpressure(key, value):
                    return  # it wrote the entry itself

    def _put(self, key: Any, value: Any, ttl: int = -1) -> None:
        """Sets key; raises Full (changing nothing) where __setitem__ would apply backpressure.

        `ttl`: the entry's TTL in ns (turning expiry on), or -1 for the cache's.
        """
        if ttl > 0 and not self._expiring:
            self._enable_expiry()
        now = self._now() if self._expiring else 0
        with self._lock:
            old, raised = self._set_locked(key, value, now, ttl)
        del old
        if raised:
            self._wake(raised)

    def __delitem__(self, key: Any) -> None:
        while True:
            try:
                self._delete(key)
                return
            except Full:
                if self._backpressure(key, MISSING):
                    return  # it wrote the delete itself

    def _delete(self, key: Any) -> None:
        """Deletes key; raises Full (changing nothing) where __delitem__ applies backpressure."""
        old = self._remove(key)
        if old is MISSING or (old is ABSENT and not self._read_through):
            raise KeyError(key)
        if old is ABSENT:
            self._delete_missing(key)

    def __len__(self) -> int:
        lock = self._lock
        lock.acquire()
        try:
            return len(self._map) - self._ntomb
        finally:
            lock.release()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys())

    # ----------------------------------------------------------- compound operations
    def _remove(self, key: Any) -> Any:
        """Deletes a live entry and returns its value; MISSING if already deleted; ABSENT if unknown
        (or expired: dropped)."""
        now = self._now() if self._expiring else 0
        lock = self._lock  # acquire()/release(): see __setitem__
        lock.acquire()
        try:
            self._check_writable()
            entry = self._map.get(key)
            if entry is not None and self._expiring and self._expired(entry, now):
                self._drop_expired(entry)
                entry = None
            if entry is None:
                return ABSENT
            if entry.flags & DELETED:
                return MISSING
            self._admit(entry)
            old = self._tombstone(entry)
            raised = self._signal()
        finally:
            lock.release()
        if raised:
            self._wake(raised)
        return old

    def _discard(self, key: Any) -> Any:
        """Records a delete whether or not memory knows the key; returns the old value or MISSING."""
        now = self._now() if self._expiring else 0
        with self._lock:
            self._check_writable()
            entry = self._map.get(key)
            if entry is not None and self._expiring and self._expired(entry, now):
                self._drop_expired(entry)  # its value is not what this delete removes
                entry = None
            if entry is None or not entry.flags & DELETED:
                self._admit(entry)
            if entry is None:
                self._new_entry(key, MISSING, DIRTY | DELETED)
                self._deletes += 1
                old = MISSING
            elif entry.flags & DELETED:
                old = MISSING
            else:
                old = self._tombstone(entry)
            raised = self._signal()
        if raised:
            self._wake(raised)
        return old

    def _insert_loaded(self, key: Any, value: Any, epoch: int, ttl: int = -1) -> Any:
        """Caches a value read from the store as clean, unless memory changed meanwhile.

        Returns the value a reader should see: the loaded one, or a newer one in memory,
        or MISSING if the key has been deleted since. `ttl`: the entry's TTL in ns
        (turning expiry on), or -1 for the cache's.
        """
        if ttl > 0 and not self._expiring:
            self._enable_expiry()
        now = self._now() if self._expiring else 0
        with self._lock:
            entry = self._map.get(key)
            if entry is not None and self._expiring and self._expired(entry, now):
                self._drop_expired(entry)  # which moves the epoch on: the load is not cached
                entry = None
            if entry is not None:
                return MISSING if entry.flags & DELETED else entry.value
            if epoch == self._epoch and not self._closed:
                entry = self._new_entry(key, value, 0)
                if self._expiring:
                    self._stamp(entry, now, ttl)
                raised = self._signal()
            else:
                raised = 0
        if raised:
            self._wake(raised)
        return value

    def _insert_if_absent(self, key: Any, value: Any) -> tuple[bool, Any]:
        """Sets key to value unless a live value is in memory; returns (inserted, current value)."""
        now = self._now() if self._expiring else 0
        with self._lock:
            entry = self._map.get(key)
            if entry is not None and self._expiring and self._expired(entry, now):
                self._drop_expired(entry)
                entry = None
            if entry is not None and not entry.flags & DELETED:
                entry.ref = True
                return False, entry.value
            old, raised = self._set_locked(key, value, now)
        del old
        if raised:
            self._wake(raised)
        return True, value

    def _read_versioned(self, key: Any) -> tuple[Any, int]:
        """(value or MISSING or ABSENT, version) for optimistic read-modify-write."""
        now = self._now() if self._expiring else 0
        with self._lock:
            entry = self._map.get(key)
            if entry is not None and self._expiring and self._expired(entry, now):
                self._drop_expired(entry)
                entry = None
            if entry is None:
                return ABSENT, self._epoch
            if entry.flags & DELETED:
                return MISSING, entry.seq
            return entry.value, entry.seq

    def _compare_and_set(self, key: Any, value: Any, expected: Any, version: int) -> bool:
        """Sets key to value if memory still holds what _read_versioned saw."""
        now = self._now() if self._expiring else 0
        with self._lock:
            entry = self._map.get(key)
            if expected is ABSENT:
                if entry is not None or self._epoch != version:
                    return False
            elif entry is None or entry.seq != version:
                return False
            old, raised = self._set_locked(key, value, now)
        del old
        if raised:
            self._wake(raised)
        return True

    def _is_pending(self, key: Any) -> bool:
        """Whether key's latest change has not reached the store yet."""
        with self._lock:
            entry = self._map.get(key)
            return entry is not None and bool(entry.flags & (DIRTY | INFLIGHT))

    def _set_clean(self, key: Any, value: Any, ttl: int = -1) -> None:
        """Records a value (MISSING: a delete) the caller has just written to the store itself.

        Does nothing if a newer change of key is pending: that one reaches the store later.
        `ttl`: the entry's TTL in ns (turning expiry on), or -1 for the cache's.
        """
        if ttl > 0 and not self._expiring:
            self._enable_expiry()
        now = self._now() if self._expiring else 0
        with self._lock:
            entry = self._map.get(key)
            if entry is not None and entry.flags & (DIRTY | INFLIGHT):
                return
            if value is MISSING:
                self._deletes += 1
                if entry is not None:
                    self._detach(entry)
                return
            self._sets += 1
            if entry is None:
                entry = self._new_entry(key, value, 0)
                raised = self._signal()
            else:
                # Held until the lock is released: a replaced value's __del__ runs outside it.
                _replaced = entry.value
                entry.value = value
                entry.ref = True
                raised = 0
            if self._expiring:
                self._stamp(entry, now, ttl)
        if raised:
            self._wake(raised)

    def _popitem(self) -> tuple[Any, Any]:
        """Deletes and returns the most recently inserted live item (expired ones are skipped)."""
        now = self._now() if self._expiring else 0
        with self._lock:
            self._check_writable()
            for entry in reversed(self._map.values()):
                if not entry.flags & DELETED and not (self._expiring and self._expired(entry, now)):
                    self._admit(entry)
                    key = entry.key
                    value = self._tombstone(entry)
                    raised = self._signal()
                    break
            else:
                raise KeyError("popitem(): cache is empty")
        if raised:
            self._wake(raised)
        return key, value

    def _delete_all(self) -> int:
        """Deletes every live entry in memory; returns how many.

        Raises Full, changing nothing, if that would make more than max_pending entries pending.
        """
        with self._lock:
            self._check_writable()
            live = [e for e in self._map.values() if not e.flags & DELETED]
            if self._max_pending:
                new = sum(1 for e in live if not e.flags & (DIRTY | INFLIGHT))
                if new and self._npending + new > self._max_pending:
                    raise Full
            olds = [self._tombstone(e) for e in live]
            raised = self._signal()
        del olds
        if raised:
            self._wake(raised)
        return len(live)

    # ----------------------------------------------------------- snapshots
    def _live(self, now: int) -> list[Entry]:
        """The live entries, in insertion order (expired ones left out); lock held."""
        if not self._expiring:
            return [e for e in self._map.values() if not e.flags & DELETED]
        return [
            e for e in self._map.values() if not e.flags & DELETED and not self._expired(e, now)
        ]

    def _keys(self) -> list[Any]:
        now = self._now() if self._expiring else 0
        with self._lock:
            return [e.key for e in self._live(now)]

    def _values(self) -> list[Any]:
        now = self._now() if self._expiring else 0
        with self._lock:
            return [e.value for e in self._live(now)]

    def _items(self) -> list[tuple[Any, Any]]:
        now = self._now() if self._expiring else 0
        with self._lock:
            return [(e.key, e.value) for e in self._live(now)]

    def _pending_keys(self) -> list[Any]:
        """Keys whose latest change has not been written (queued or in flight)."""
        with self._lock:
            return [e.key for e in self._map.values() if e.flags & (DIRTY | INFLIGHT)]

    # ----------------------------------------------------------- writer side
    def _take_batch(self, limit: int) -> list[Pending]:
        """Moves up to limit entries from the dirty queue to in flight, oldest first."""
        batch: list[Pending] = []
        while len(batch) < limit:
            with self._lock:
                end = min(limit, len(batch) + SLICE)
                while self._dirty and len(batch) < end:
                    entry = self._dirty.popleft()
                    entry.flags = (entry.flags & ~DIRTY) | INFLIGHT
                    value = MISSING if entry.flags & DELETED else entry.value
                    batch.append((entry.key, value, entry, entry.seq))
                    self._ninflight += 1
                self._signals &= ~SIGNAL_WRITE
                if not self._dirty:
                    break
        return batch

    def _finish(self, entry: Entry) -> None:
        flags = entry.flags
        entry.flags = flags & ~(INFLIGHT | STALE)
        self._ninflight -= 1
        if not flags & DIRTY:
            self._npending -= 1
            if flags & (DELETED | STALE):
                self._detach(entry)

    def _commit(self, batch: list[Pending]) -> None:
        """The batch is in the store: its entries are clean unless changed meanwhile.

        Every entry is settled even if one raises (the first error is raised at the end):
        none may stay in flight for ever.
        """
        error: BaseException | None = None
        for start in range(0, len(batch), SLICE):
            with self._lock:
                for _key, _value, entry, _seq in batch[start : start + SLICE]:
                    try:
                        self._finish(entry)
                    except BaseException as exc:
                        if error is None:
                            error = exc
        if error is not None:
            raise error

    def _requeue(self, batch: list[Pending]) -> None:
        """The batch failed: unchanged entries go back to the front of the queue, in order.

        Like _commit, settles every entry even if one raises.
        """
        error: BaseException | None = None
        end = len(batch)
        while end > 0:  # from the back, a slice at a time, so the front of the queue ends in order
            start = max(0, end - SLICE)
            with self._lock:
                for _key, _value, entry, seq in reversed(batch[start:end]):
                    try:
                        if entry.seq == seq and not entry.flags & DIRTY:
                            entry.flags |= DIRTY
                            self._dirty.appendleft(entry)
                        self._finish(entry)
                    except BaseException as exc:
                        if error is None:
                            error = exc
            end = start
        if error is not None:
            raise error

    def _oldest_in(self, batch: list[Pending]) -> int:
        """The clock stamp of the batch entry that has been pending longest."""
        return min(entry.since for _, _, entry, _ in batch)

    def _current(self, entry: Entry, seq: int) -> tuple[Any, bool]:
        """(live value or MISSING, whether it changed since seq) for merging store-generated fields."""
        with self._lock:
            if entry.flags & DELETED or self._ring[entry.slot] is not entry:
                return MISSING, True
            return entry.value, entry.seq != seq

    def _swap_value(self, entry: Entry, expected: Any, value: Any) -> bool:
        """Replaces the value without marking it dirty, if it is still `expected`."""
        with self._lock:
            if entry.value is not expected or entry.flags & DELETED:
                return False
            old = entry.value
            entry.value = value
        del old
        return True

    def _forget_pending(self) -> None:
        """In a forked child: the parent writes what was pending at the fork, so the child must not."""
        with self._lock:
            for entry in list(self._map.values()):
                if entry.flags & (DIRTY | INFLIGHT):
                    entry.flags &= ~(DIRTY | INFLIGHT)
                    if entry.flags & DELETED:
                        self._detach(entry)
            self._dirty.clear()
            self._npending = self._ninflight = 0
            self._signals = 0

    def _fork_prepare(self) -> None:
        self._lock.acquire()

    def _fork_release(self) -> None:
        self._lock.release()

    def _clear_dirty(self) -> int:
        """Forgets every queued write; returns how many. In-flight writes are not recalled."""
        with self._lock:
            forgotten = list(self._dirty)
            self._dirty.clear()
            for entry in forgotten:
                entry.flags &= ~DIRTY
                if not entry.flags & INFLIGHT:
                    self._npending -= 1
                    if entry.flags & DELETED:
                        self._detach(entry)
            self._signals &= ~SIGNAL_WRITE
        return len(forgotten)

    # ----------------------------------------------------------- pruner side
    def _evict(self, limit: int) -> list[tuple[Any, Any]]:
        """CLOCK: evicts up to limit clean, unreferenced entries; returns them as (key, value)."""
        victims: list[tuple[Any, Any]] = []
        with self._lock:
            ring = self._ring
            size = len(ring)
            hand = self._hand
            steps = 0
            while len(victims) < limit and steps < 2 * size:
                entry = ring[hand]
                if entry is not None and not entry.flags & PINNED:
                    if entry.ref:
                        entry.ref = False
                    else:
                        victims.append((entry.key, entry.value))
                        self._detach(entry)
                hand = (hand + 1) % size
                steps += 1
            self._hand = hand
            self._evictions += len(victims)
            if not self._maxsize or len(self._map) - self._ntomb <= self._maxsize:
                self._signals &= ~SIGNAL_PRUNE
        return victims

    def _invalidate(self, keys: Any) -> int:
        """Drops the given keys from memory unless a change of theirs is pending; returns how many.

        A key whose lookup raises (it meets a held key of the same hash whose eq raises)
        does not keep the others in memory: its error is raised once they are dropped.
        """
        dropped = []
        error: Exception | None = None
        with self._lock:
            # Even if none is in memory: a read-through load in flight must not cache what it read.
            self._epoch += 1
            for key in keys:
                try:
                    entry = self._map.get(key)
                except Exception as exc:
                    if error is None:
                        error = exc
                    continue
                if entry is None:
                    continue
                if not entry.flags & PINNED:
                    dropped.append(entry)
                    self._detach(entry)
                elif entry.flags & INFLIGHT:
                    # Our write may commit before or after theirs: unless we change the key
                    # again meanwhile, forget it once our write is done and read the store.
                    entry.flags |= STALE
        if error is not None:
            raise error
        return len(dropped)

    def _drop_clean(self) -> int:
        """Removes every entry with no pending write from memory; returns how many."""
        with self._lock:
            self._epoch += 1  # loads in flight must not cache what they read
            clean = [e for e in self._ring if e is not None and not e.flags & PINNED]
            for entry in clean:
                self._detach(entry)
            self._signals &= ~SIGNAL_PRUNE
        return len(clean)

    # ----------------------------------------------------------- state
    def _mark_closed(self) -> None:
        self._closed = True

    def _set_clock(self, now: int) -> None:
        """Sets the coarse clock stamped on entries as they become pending (see _oldest_since)."""
        self._clock = now

    def _oldest_since(self) -> int:
        """The clock stamp of the oldest queued (not in-flight) entry, or -1 if none."""
        with self._lock:
            return self._dirty[0].since if self._dirty else -1

    @property
    def pending(self) -> int:
        """Entries whose latest change has not reached the store yet."""
        return self._npending

    @property
    def read_through(self) -> bool:
        """Whether a miss reads through to the store (fixed at construction)."""
        return self._read_through

    @property
    def _queued(self) -> int:
        """Entries in the dirty queue (pending, not yet in flight)."""
        return len(self._dirty)

    def _counters(self) -> tuple[int, int, int, int, int, int]:
        """(hits, misses, sets, deletes, evictions, expirations)."""
        return (
            self._hits,
            self._misses,
            self._sets,
            self._deletes,
            self._evictions,
            self._expirations,
        )

    @property
    def _expiry_enabled(self) -> bool:
        """Whether expiry is on (from the start, or since the first TTL)."""
        return self._expiring

    @property
    def _memory_epoch(self) -> int:
        return self._epoch
