# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled core of lazycache: the map, the dirty queue and CLOCK eviction.

It behaves exactly like its pure-Python twin, ``_core_py`` (read that first: it
is the specification, and every test runs against both). What differs is how
the work is done:

* Entries live in a dict ``key -> Entry``; per-entry state (dirty, in flight,
  deleted, referenced) lives in a C byte array indexed by the entry's ring slot,
  and the dirty queue is a C circular buffer of entry pointers. Setting an entry
  dirty or referenced is a byte write, not a container operation.
* Reads (``[]``, ``get``, ``in``, ``len``) never take a lock: one dict lookup,
  then C code that cannot release the GIL, so they see each entry either before
  or after any concurrent change.
* Writes (``[]=``, ``del``) with keys of an exact builtin type (str, int, bytes,
  float) take no lock either, as long as no key with Python-level ``__hash__`` /
  ``__eq__`` is in the map and no other thread holds the lock: then neither the
  lookup nor the update can run Python code, so the GIL makes the whole compound
  operation atomic. New entries are allocated before the map is touched, and
  replaced values are released only at the end, because an allocation (garbage
  collection) or a ``__del__`` could run Python code and switch threads.
  Every other operation takes the core's re-entrant lock; a thread waiting for
  it releases the GIL.

The GIL is released while choosing eviction victims: the CLOCK hand sweeps the
C flag array under the core's lock (which keeps writers out) but without the
GIL, so readers carry on. The other operations cannot release it: they look
keys up in a dict, run Python ``__hash__``/``__eq__`` or create Python objects.
"""
cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_DelItem, PyDict_Next, PyDict_Size
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
)
from libc.stdint cimport uint8_t

from lazycache._core_py import _check_size
from lazycache._sentinels import ABSENT, MISSING

cdef extern from "Python.h":
    PyObject* PyDict_SetDefault(object mp, object key, object default_value) except NULL


cdef object _MISSING = MISSING
cdef object _ABSENT = ABSENT


cdef inline bint _simple(object key) noexcept:
    """Whether hashing and comparing the key can run no Python code."""
    t = type(key)
    return t is str or t is int or t is bytes or t is float


@cython.final
cdef class Entry:
    """One cached key: its value and the version (seq) of its latest change."""

    def __repr__(self):
        return f"Entry({self.key!r}, {self.value!r}, seq={self.seq})"


cdef Py_ssize_t _clock_scan(uint8_t *flags, Py_ssize_t size, Py_ssize_t *hand,
                            Py_ssize_t limit, Py_ssize_t *chosen) noexcept nogil:
    """Sweeps the CLOCK hand: clears reference bits, marks up to limit victims."""
    cdef Py_ssize_t n = 0, steps = 0, h = hand[0]
    cdef uint8_t f
    while n < limit and steps < 2 * size:
        f = flags[h]
        if f & USED and not f & (PINNED | VICTIM):
            if f & REF:
                flags[h] = f & ~REF
            else:
                flags[h] = f | VICTIM
                chosen[n] = h
                n += 1
        h += 1
        if h == size:
            h = 0
        steps += 1
    hand[0] = h
    return n


cdef class Core:
    """Map, dirty queue and CLOCK eviction bookkeeping (compiled)."""

    def __cinit__(self, *args, **kwargs):
        self._map = {}
        self._spare = Entry.__new__(Entry)
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError("cannot allocate the core's lock")

    def __init__(self, maxsize=None, write_threshold=None, read_through=False, max_pending=None):
        self._maxsize = _check_size("maxsize", maxsize)
        self._write_threshold = _check_size("write_threshold", write_threshold)
        self._max_pending = _check_size("max_pending", max_pending)
        self._read_through = bool(read_through)

    def __dealloc__(self):
        PyMem_Free(self._ring)
        PyMem_Free(self._flags)
        PyMem_Free(self._free)
        PyMem_Free(self._queue)
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    # ----------------------------------------------------------- hooks
    def _load_missing(self, key):
        """Called (without the lock) on a read miss when read_through is on; returns the value or MISSING."""
        return _MISSING

    def _delete_missing(self, key):
        """Called (without the lock) when read_through is on and a deleted key has no entry in memory."""
        raise KeyError(key)

    def _wake(self, int signal):
        """Called (without the lock) when SIGNAL_PRUNE or SIGNAL_WRITE is first raised."""

    def _backpressure(self, key, value):
        """Called (without the lock) before a write when max_pending entries are pending.

        value is MISSING for a delete. Returns True if it performed the write itself.
        """
        return False

    # ----------------------------------------------------------- lock
    cdef int _acquire(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if self._owner == me:
            self._depth += 1
            return 0
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
        self._owner = me
        self._depth = 1
        return 0

    cdef void _release(self) noexcept:
        self._depth -= 1
        if self._depth == 0:
            self._owner = 0
            PyThread_release_lock(self._lock)

    cdef inline bint _lock_free(self, object key) noexcept:
        # The spare entry lets an insert proceed without allocating (see _insert).
        return self._owner == 0 and self._nslow == 0 and self._spare is not None and _simple(key)

    cdef inline void _replenish(self) noexcept:
        # Called after an operation's changes are complete, when allocating is harmless.
        if self._spare is None:
            try:
                self._spare = Entry.__new__(Entry)
            except MemoryError:
                pass

    # ----------------------------------------------------------- internals
    cdef int _check_writable(self) except -1:
        if self._closed:
            raise RuntimeError("the cache is closed: it accepts no more writes")
        return 0

    cdef int _grow_ring(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2 if self._cap else 64
        cdef void **ring = <void **>PyMem_Realloc(self._ring, cap * sizeof(void *))
        if ring == NULL:
            raise MemoryError()
        self._ring = ring
        cdef uint8_t *flags = <uint8_t *>PyMem_Realloc(self._flags, cap * sizeof(uint8_t))
        if flags == NULL:
            raise MemoryError()
        self._flags = flags
        cdef Py_ssize_t *free = <Py_ssize_t *>PyMem_Realloc(self._free, cap * sizeof(Py_ssize_t))
        if free == NULL:
            raise MemoryError()
        self._free = free
        self._cap = cap
        return 0

    cdef int _push_dirty(self, Entry e, bint front) except -1:
        cdef Py_ssize_t cap, i
        cdef void **queue
        if self._qlen == self._qcap:
            cap = self._qcap * 2 if self._qcap else 64
            queue = <void **>PyMem_Malloc(cap * sizeof(void *))
            if queue == NULL:
                raise MemoryError()
            for i in range(self._qlen):
                queue[i] = self._queue[(self._qhead + i) % self._qcap]
            PyMem_Free(self._queue)
            self._queue = queue
            self._qcap = cap
            self._qhead = 0
        if front:
            self._qhead = (self._qhead - 1 + self._qcap) % self._qcap
            self._queue[self._qhead] = <void *>e
        else:
            self._queue[(self._qhead + self._qlen) % self._qcap] = <void *>e
        self._qlen += 1
        return 0

    cdef Entry _pop_dirty(self):
        cdef Entry e = <Entry>self._queue[self._qhead]
        self._qhead = (self._qhead + 1) % self._qcap
        self._qlen -= 1
        return e

    cdef Entry _insert(self, object key, object value, uint8_t flags):
        """Adds a new entry; returns None, or the entry another thread inserted first.

        Uses the spare entry when there is one: allocating a GC-tracked object may run
        a garbage collection, hence finalisers, hence other threads, which a lock-free
        operation cannot allow in its middle. Without the lock there is always a spare.
        """
        cdef Entry e = self._spare
        if e is None:
            e = Entry.__new__(Entry)
        else:
            self._spare = None
        cdef Py_ssize_t slot
        cdef PyObject *existing
        e.key = key
        e.value = value
        e.since = self._clock
        if self._nfree:
            self._nfree -= 1
            slot = self._free[self._nfree]
        else:
            if self._nslots == self._cap:
                self._grow_ring()
            slot = self._nslots
            self._nslots += 1
        e.slot = slot
        self._ring[slot] = <void *>e
        self._flags[slot] = flags | USED
        try:
            existing = PyDict_SetDefault(self._map, key, e)
        except BaseException:
            self._flags[slot] = 0
            self._ring[slot] = NULL
            self._free[self._nfree] = slot
            self._nfree += 1
            raise
        if existing != <PyObject *>e:
            self._flags[slot] = 0
            self._ring[slot] = NULL
            self._free[self._nfree] = slot
            self._nfree += 1
            return <Entry>existing
        self._seq += 1
        e.seq = self._seq
        if not _simple(key):
            self._nslow += 1
        if flags & DIRTY:
            self._push_dirty(e, False)
            self._npending += 1
        if flags & DELETED:
            self._ntomb += 1
        return None

    cdef int _detach(self, Entry e) except -1:
        """Removes an entry from the map and the ring. The caller holds a reference to e."""
        cdef Py_ssize_t slot = e.slot
        cdef uint8_t f = self._flags[slot]
        PyDict_DelItem(self._map, e.key)
        self._ring[slot] = NULL
        self._flags[slot] = 0
        self._free[self._nfree] = slot
        self._nfree += 1
        if f & DELETED:
            self._ntomb -= 1
        if not _simple(e.key):
            self._nslow -= 1
        self._epoch += 1
        return 0

    cdef int _mark_dirty(self, Entry e) except -1:
        cdef uint8_t f = self._flags[e.slot]
        if not f & DIRTY:
            self._push_dirty(e, False)
            if not f & INFLIGHT:
                self._npending += 1
            e.since = self._clock
            self._flags[e.slot] = f | DIRTY
        return 0

    cdef int _signal(self) noexcept:
        cdef int raised = 0
        if (self._maxsize and PyDict_Size(self._map) - self._ntomb > self._maxsize
                and not self._signals & SIGNAL_PRUNE):
            raised |= SIGNAL_PRUNE
        if self._write_threshold and self._qlen >= self._write_threshold and not self._signals & SIGNAL_WRITE:
            raised |= SIGNAL_WRITE
        self._signals |= raised
        return raised

    cdef object _set(self, object key, object value):
        """Sets key; returns the replaced value (to be released by the caller after the lock)."""
        cdef PyObject *p
        cdef Entry e
        cdef uint8_t f
        self._check_writable()
        if value is _MISSING:
            raise ValueError("lazycache.MISSING stands for 'no value' and cannot be stored")
        p = PyDict_GetItemWithError(self._map, key)
        if p == NULL:
            e = self._insert(key, value, DIRTY | REF)
            if e is None:
                self._sets += 1
                return _MISSING
        else:
            e = <Entry>p
        old = e.value
        f = self._flags[e.slot]
        if f & DELETED:
            f &= ~DELETED
            self._ntomb -= 1
        self._seq += 1
        e.value = value
        e.seq = self._seq
        if not f & DIRTY:
            self._push_dirty(e, False)
            if not f & INFLIGHT:
                self._npending += 1
            e.since = self._clock
            f |= DIRTY
        self._flags[e.slot] = f | REF
        self._sets += 1
        return old

    cdef object _tombstone(self, Entry e):
        old = e.value
        self._seq += 1
        e.value = None
        e.seq = self._seq
        self._flags[e.slot] |= DELETED
        self._ntomb += 1
        self._mark_dirty(e)
        self._deletes += 1
        return old

    cdef object _remove_unlocked(self, object key):
        cdef PyObject *p
        cdef Entry e
        self._check_writable()
        p = PyDict_GetItemWithError(self._map, key)
        if p == NULL:
            return _ABSENT
        e = <Entry>p
        if self._flags[e.slot] & DELETED:
            return _MISSING
        return self._tombstone(e)

    # ----------------------------------------------------------- dict protocol (hot path)
    def __getitem__(self, key):
        cdef PyObject *p = PyDict_GetItemWithError(self._map, key)
        cdef Entry e
        if p != NULL:
            e = <Entry>p
            if not self._flags[e.slot] & DELETED:
                self._flags[e.slot] |= REF
                self._hits += 1
                return e.value
            self._misses += 1
            raise KeyError(key)
        self._misses += 1
        if not self._read_through:
            raise KeyError(key)
        value = self._load_missing(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        cdef PyObject *p = PyDict_GetItemWithError(self._map, key)
        cdef Entry e
        if p != NULL:
            e = <Entry>p
            if not self._flags[e.slot] & DELETED:
                self._flags[e.slot] |= REF
                self._hits += 1
                return e.value
            self._misses += 1
            return default
        self._misses += 1
        if not self._read_through:
            return default
        value = self._load_missing(key)
        return default if value is _MISSING else value

    def __contains__(self, key):
        cdef PyObject *p = PyDict_GetItemWithError(self._map, key)
        if p != NULL:
            return not self._flags[(<Entry>p).slot] & DELETED
        return self._read_through and self._load_missing(key) is not _MISSING

    def __setitem__(self, key, value):
        cdef int raised
        if self._max_pending and self._npending >= self._max_pending and self._backpressure(key, value):
            return
        if self._lock_free(key):
            old = self._set(key, value)
        else:
            self._acquire()
            try:
                old = self._set(key, value)
            finally:
                self._release()
        raised = self._signal()
        self._replenish()
        if raised:
            self._wake(raised)
        # `old` (a replaced value) is released only now, after every change is made.

    def __delitem__(self, key):
        if self._max_pending and self._npending >= self._max_pending and self._backpressure(key, _MISSING):
            return
        old = self._remove_impl(key)
        if old is _MISSING or (old is _ABSENT and not self._read_through):
            raise KeyError(key)
        if old is _ABSENT:
            self._delete_missing(key)

    def __len__(self):
        return PyDict_Size(self._map) - self._ntomb

    def __iter__(self):
        return iter(self._keys())

    # ----------------------------------------------------------- compound operations
    def _remove(self, key):
        """Deletes a live entry and returns its value; MISSING if already deleted; ABSENT if unknown."""
        return self._remove_impl(key)

    cdef object _remove_impl(self, object key):
        cdef int raised
        if self._lock_free(key):
            old = self._remove_unlocked(key)
        else:
            self._acquire()
            try:
                old = self._remove_unlocked(key)
            finally:
                self._release()
        raised = self._signal()
        if raised:
            self._wake(raised)
        return old

    def _discard(self, key):
        """Records a delete whether or not memory knows the key; returns the old value or MISSING."""
        cdef int raised
        self._acquire()
        try:
            old = self._remove_unlocked(key)
            if old is _ABSENT:
                self._insert(key, None, DIRTY | DELETED)
                self._deletes += 1
                old = _MISSING
            raised = self._signal()
        finally:
            self._release()
        self._replenish()
        if raised:
            self._wake(raised)
        return old

    def _insert_loaded(self, key, value, unsigned long long epoch):
        """Caches a value read from the store as clean, unless memory changed meanwhile."""
        cdef PyObject *p
        cdef int raised = 0
        self._acquire()
        try:
            p = PyDict_GetItemWithError(self._map, key)
            if p != NULL:
                return _MISSING if self._flags[(<Entry>p).slot] & DELETED else (<Entry>p).value
            if epoch == self._epoch and not self._closed:
                self._insert(key, value, REF)
                raised = self._signal()
        finally:
            self._release()
        self._replenish()
        if raised:
            self._wake(raised)
        return value

    def _insert_if_absent(self, key, value):
        """Sets key to value unless a live value is in memory; returns (inserted, current value)."""
        cdef PyObject *p
        cdef int raised = 0
        self._acquire()
        try:
            p = PyDict_GetItemWithError(self._map, key)
            if p != NULL and not self._flags[(<Entry>p).slot] & DELETED:
                self._flags[(<Entry>p).slot] |= REF
                return False, (<Entry>p).value
            old = self._set(key, value)
            raised = self._signal()
        finally:
            self._release()
        self._replenish()
        if raised:
            self._wake(raised)
        return True, value

    def _read_versioned(self, key):
        """(value or MISSING or ABSENT, version) for optimistic read-modify-write."""
        cdef PyObject *p
        cdef Entry e
        self._acquire()
        try:
            p = PyDict_GetItemWithError(self._map, key)
            if p == NULL:
                return _ABSENT, self._epoch
            e = <Entry>p
            if self._flags[e.slot] & DELETED:
                return _MISSING, e.seq
            return e.value, e.seq
        finally:
            self._release()

    def _compare_and_set(self, key, value, expected, unsigned long long version):
        """Sets key to value if memory still holds what _read_versioned saw."""
        cdef PyObject *p
        cdef int raised = 0
        self._acquire()
        try:
            p = PyDict_GetItemWithError(self._map, key)
            if expected is _ABSENT:
                if p != NULL or self._epoch != version:
                    return False
            elif p == NULL or (<Entry>p).seq != version:
                return False
            old = self._set(key, value)
            raised = self._signal()
        finally:
            self._release()
        self._replenish()
        if raised:
            self._wake(raised)
        return True

    def _is_pending(self, key):
        """Whether key's latest change has not reached the store yet."""
        cdef PyObject *p
        self._acquire()
        try:
            p = PyDict_GetItemWithError(self._map, key)
            return p != NULL and (self._flags[(<Entry>p).slot] & (DIRTY | INFLIGHT)) != 0
        finally:
            self._release()

    def _set_clean(self, key, value):
        """Records a value (MISSING: a delete) the caller has just written to the store itself.

        Does nothing if a newer change of key is pending: that one reaches the store later.
        """
        cdef PyObject *p
        cdef Entry e = None
        cdef int raised = 0
        self._acquire()
        try:
            p = PyDict_GetItemWithError(self._map, key)
            if p != NULL:
                e = <Entry>p
                if self._flags[e.slot] & (DIRTY | INFLIGHT):
                    return
            if value is _MISSING:
                self._deletes += 1
                if e is not None:
                    self._detach(e)
                return
            self._sets += 1
            if e is None:
                self._insert(key, value, REF)
                raised = self._signal()
            else:
                old = e.value
                e.value = value
                self._flags[e.slot] |= REF
        finally:
            self._release()
        self._replenish()
        if raised:
            self._wake(raised)

    def _popitem(self):
        """Deletes and returns the most recently inserted live item."""
        cdef Entry e
        cdef int raised = 0
        self._acquire()
        try:
            self._check_writable()
            for key in reversed(self._map):
                e = self._map[key]
                if not self._flags[e.slot] & DELETED:
                    value = self._tombstone(e)
                    raised = self._signal()
                    break
            else:
                raise KeyError("popitem(): cache is empty")
        finally:
            self._release()
        if raised:
            self._wake(raised)
        return key, value

    def _delete_all(self):
        """Deletes every live entry in memory; returns how many."""
        cdef list olds = []
        cdef Entry e
        cdef int raised
        self._acquire()
        try:
            self._check_writable()
            for e in list(self._map.values()):
                if not self._flags[e.slot] & DELETED:
                    olds.append(self._tombstone(e))
            raised = self._signal()
        finally:
            self._release()
        if raised:
            self._wake(raised)
        return len(olds)

    # ----------------------------------------------------------- snapshots
    def _keys(self):
        cdef PyObject *k = NULL
        cdef PyObject *v = NULL
        cdef Py_ssize_t pos = 0
        cdef list out = []
        self._acquire()
        try:
            while PyDict_Next(self._map, &pos, &k, &v):
                if not self._flags[(<Entry>v).slot] & DELETED:
                    out.append(<object>k)
        finally:
            self._release()
        return out

    def _values(self):
        cdef PyObject *k = NULL
        cdef PyObject *v = NULL
        cdef Py_ssize_t pos = 0
        cdef list out = []
        self._acquire()
        try:
            while PyDict_Next(self._map, &pos, &k, &v):
                if not self._flags[(<Entry>v).slot] & DELETED:
                    out.append((<Entry>v).value)
        finally:
            self._release()
        return out

    def _items(self):
        cdef PyObject *k = NULL
        cdef PyObject *v = NULL
        cdef Py_ssize_t pos = 0
        cdef list out = []
        self._acquire()
        try:
            while PyDict_Next(self._map, &pos, &k, &v):
                if not self._flags[(<Entry>v).slot] & DELETED:
                    out.append((<object>k, (<Entry>v).value))
        finally:
            self._release()
        return out

    def _pending_keys(self):
        """Keys whose latest change has not been written (queued or in flight)."""
        cdef PyObject *k = NULL
        cdef PyObject *v = NULL
        cdef Py_ssize_t pos = 0
        cdef list out = []
        self._acquire()
        try:
            while PyDict_Next(self._map, &pos, &k, &v):
                if self._flags[(<Entry>v).slot] & (DIRTY | INFLIGHT):
                    out.append(<object>k)
        finally:
            self._release()
        return out

    # ----------------------------------------------------------- writer side
    def _take_batch(self, Py_ssize_t limit):
        """Moves up to limit entries from the dirty queue to in flight, oldest first."""
        cdef list batch = []
        cdef Entry e
        cdef uint8_t f
        self._acquire()
        try:
            while self._qlen and len(batch) < limit:
                e = self._pop_dirty()
                f = (self._flags[e.slot] & ~DIRTY) | INFLIGHT
                self._flags[e.slot] = f
                self._ninflight += 1
                batch.append((e.key, _MISSING if f & DELETED else e.value, e, e.seq))
            self._signals &= ~SIGNAL_WRITE
        finally:
            self._release()
        return batch

    cdef int _finish(self, Entry e) except -1:
        cdef uint8_t f = self._flags[e.slot] & ~INFLIGHT
        self._flags[e.slot] = f
        self._ninflight -= 1
        if not f & DIRTY:
            self._npending -= 1
            if f & DELETED:
                self._detach(e)
        return 0

    def _commit(self, list batch):
        """The batch is in the store: its entries are clean unless changed meanwhile."""
        cdef Entry e
        self._acquire()
        try:
            for item in batch:
                e = item[2]
                self._finish(e)
        finally:
            self._release()

    def _requeue(self, list batch):
        """The batch failed: unchanged entries go back to the front of the queue, in order."""
        cdef Entry e
        cdef Py_ssize_t i
        self._acquire()
        try:
            for i in range(len(batch) - 1, -1, -1):
                item = batch[i]
                e = item[2]
                if e.seq == item[3] and not self._flags[e.slot] & DIRTY:
                    self._push_dirty(e, True)
                    self._flags[e.slot] |= DIRTY
                self._finish(e)
        finally:
            self._release()

    def _current(self, Entry e, unsigned long long seq):
        """(live value or MISSING, whether it changed since seq) for merging store-generated fields."""
        self._acquire()
        try:
            if self._ring[e.slot] != <void *>e or self._flags[e.slot] & DELETED:
                return _MISSING, True
            return e.value, e.seq != seq
        finally:
            self._release()

    def _swap_value(self, Entry e, expected, value):
        """Replaces the value without marking it dirty, if it is still `expected`."""
        self._acquire()
        try:
            if e.value is not expected or self._flags[e.slot] & DELETED:
                return False
            old = e.value
            e.value = value
        finally:
            self._release()
        return True

    def _forget_pending(self):
        """In a forked child: the parent writes what was pending at the fork, so the child must not."""
        cdef Py_ssize_t slot
        cdef Entry e
        cdef list dropped = []
        self._acquire()
        try:
            for slot in range(self._nslots):
                if self._flags[slot] & (DIRTY | INFLIGHT):
                    self._flags[slot] &= ~(DIRTY | INFLIGHT)
                    if self._flags[slot] & DELETED:
                        e = <Entry>self._ring[slot]
                        dropped.append(e)
                        self._detach(e)
            self._qhead = self._qlen = 0
            self._npending = self._ninflight = 0
            self._signals = 0
        finally:
            self._release()

    def _fork_prepare(self):
        self._acquire()

    def _fork_release(self):
        self._release()

    def _clear_dirty(self):
        """Forgets every queued write; returns how many. In-flight writes are not recalled."""
        cdef Entry e
        cdef Py_ssize_t n = 0
        cdef uint8_t f
        cdef list dropped = []
        self._acquire()
        try:
            while self._qlen:
                e = self._pop_dirty()
                n += 1
                f = self._flags[e.slot] & ~DIRTY
                self._flags[e.slot] = f
                if not f & INFLIGHT:
                    self._npending -= 1
                    if f & DELETED:
                        dropped.append(e)
                        self._detach(e)
            self._signals &= ~SIGNAL_WRITE
        finally:
            self._release()
        return n

    # ----------------------------------------------------------- pruner side
    def _evict(self, Py_ssize_t limit):
        """CLOCK: evicts up to limit clean, unreferenced entries; returns them as (key, value)."""
        cdef list victims = []
        cdef Py_ssize_t *chosen = NULL
        cdef Py_ssize_t n, i, slot, size, hand
        cdef uint8_t f
        cdef Entry e
        self._acquire()
        try:
            size = self._nslots
            if size == 0 or limit <= 0:
                return victims
            if limit > size:
                limit = size
            chosen = <Py_ssize_t *>PyMem_Malloc(limit * sizeof(Py_ssize_t))
            if chosen == NULL:
                raise MemoryError()
            hand = self._hand
            # Writers are held off by the lock; readers go on and may set reference bits.
            with nogil:
                n = _clock_scan(self._flags, size, &hand, limit, chosen)
            self._hand = hand
            for i in range(n):
                slot = chosen[i]
                f = self._flags[slot] & ~VICTIM
                self._flags[slot] = f
                if f & REF:
                    continue  # read while the hand was sweeping: a second chance
                e = <Entry>self._ring[slot]
                victims.append((e.key, e.value))
                self._detach(e)
            self._evictions += len(victims)
            if not self._maxsize or PyDict_Size(self._map) - self._ntomb <= self._maxsize:
                self._signals &= ~SIGNAL_PRUNE
        finally:
            PyMem_Free(chosen)
            self._release()
        return victims

    def _invalidate(self, keys):
        """Drops the given keys from memory unless a change of theirs is pending; returns how many."""
        cdef list dropped = []
        cdef PyObject *p
        cdef Entry e
        self._acquire()
        try:
            for key in keys:
                p = PyDict_GetItemWithError(self._map, key)
                if p != NULL and not self._flags[(<Entry>p).slot] & PINNED:
                    e = <Entry>p
                    dropped.append(e)
                    self._detach(e)
        finally:
            self._release()
        return len(dropped)

    def _drop_clean(self):
        """Removes every entry with no pending write from memory; returns how many."""
        cdef list dropped = []
        cdef Py_ssize_t slot
        cdef Entry e
        self._acquire()
        try:
            for slot in range(self._nslots):
                if self._flags[slot] & USED and not self._flags[slot] & PINNED:
                    e = <Entry>self._ring[slot]
                    dropped.append(e)
                    self._detach(e)
            self._signals &= ~SIGNAL_PRUNE
        finally:
            self._release()
        return len(dropped)

    # ----------------------------------------------------------- state
    def _mark_closed(self):
        self._closed = True

    def _set_clock(self, long long now):
        """Sets the coarse clock stamped on entries as they become pending (see _oldest_since)."""
        self._clock = now

    def _oldest_since(self):
        """The clock stamp of the oldest queued (not in-flight) entry, or -1 if none."""
        self._acquire()
        try:
            return (<Entry>self._queue[self._qhead]).since if self._qlen else -1
        finally:
            self._release()

    @property
    def pending(self):
        """Entries whose latest change has not reached the store yet."""
        return self._npending

    @property
    def read_through(self):
        """Whether a miss reads through to the store (fixed at construction)."""
        return self._read_through

    @property
    def _queued(self):
        """Entries in the dirty queue (pending, not yet in flight)."""
        return self._qlen

    def _counters(self):
        """(hits, misses, sets, deletes, evictions)."""
        return self._hits, self._misses, self._sets, self._deletes, self._evictions

    @property
    def _memory_epoch(self):
        return self._epoch
