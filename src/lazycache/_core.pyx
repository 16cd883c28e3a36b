# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
# cython: freethreading_compatible=True
"""Compiled core of lazycache: the map, the dirty queue and CLOCK eviction.

It behaves exactly like its pure-Python twin, ``_core_py`` (read that first: it
is the specification, and every test runs against both). What differs is how
the work is done:

* The map is a hash table of its own, laid out like CPython's dict: an index
  array into an array of entries kept in insertion order. An entry is 24 bytes,
  like a dict's: the key, the value, and one word holding the hash's low 32 bits,
  the entry's ring slot and the CLOCK reference bit; a read touches the same
  memory a dict read does, and marking the entry referenced writes a line already
  loaded (and only when the bit is clear).
* Per-entry state (dirty, in flight, deleted, version) lives in C arrays indexed by the
  entry's ring slot, a stable id (entries move when the table is compacted, ring
  slots do not). The dirty queue is a C circular buffer of ring slots.
* Reads (``[]``, ``get``, ``in``, ``len``) and writes (``[]=``, ``del``) of keys of
  an exact builtin type (str, int, bytes, float) take no lock, as long as no key
  with Python-level ``__hash__``/``__eq__`` is in the map (and, for writes, no
  other thread holds the lock): then neither the lookup nor the update can run
  Python code, so the GIL makes the whole compound operation atomic. Nothing in
  such an operation allocates a Python object (a garbage collection could run
  finalisers, hence other threads), and released references are dropped only
  once the operation is complete (``_bury``). Every other operation takes the
  core's re-entrant lock; a thread waiting for it releases the GIL.

On a free-threaded CPython build (no GIL), and in a build with Cython line tracing
(whose tracer runs Python code between lines), nothing makes a lock-free operation
atomic, so there every operation takes the core's lock: the module then reports
``LOCKS_EVERY_OPERATION = True``. Setting ``LAZYCACHE_FORCE_LOCKING=1`` before
the import does the same on a GIL build, which is how the tests check that the
locked paths alone are complete.

Expiry (see ``_core_py``) keeps two deadlines per ring slot in C arrays made when
it is turned on; a cache without it pays one flag test on the hot path. The expiry
clock is ``CLOCK_MONOTONIC`` (what ``time.monotonic_ns`` reads), or the cache's
``clock=``, which is Python code: it is read before a lock-free section starts or the
lock is taken. A lock-free read only finds an entry expired; dropping it takes the
lock (a lock holder may be sweeping the ring without the GIL).

The GIL is released while choosing eviction victims: the CLOCK hand sweeps the
C arrays under the core's lock (which keeps writers out) but without the GIL,
so readers carry on. The other operations cannot release it: they compare keys
(which may run Python ``__eq__``), create Python objects, or are a few
nanoseconds long.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport Py_EQ, PyObject, PyObject_Hash, PyObject_RichCompareBool
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
)
from cpython.ref cimport Py_XDECREF, Py_XINCREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memset

import os

from lazycache import _core_common
from lazycache._core_common import Full, check_limit, clock_ns, ttl_ns
from lazycache._sentinels import ABSENT, MISSING

cdef extern from "Python.h":
    ctypedef struct PyASCIIObject:
        Py_hash_t hash
    ctypedef int (*visitproc)(PyObject *, void *) noexcept
    ctypedef int (*traverseproc)(PyObject *, visitproc, void *) noexcept
    ctypedef int (*inquiry)(PyObject *) noexcept
    ctypedef struct PyTypeObject:
        traverseproc tp_traverse
        inquiry tp_clear

cdef extern from *:
    """
    #ifdef Py_GIL_DISABLED
    #define LAZYCACHE_FREE_THREADED 1
    #else
    #define LAZYCACHE_FREE_THREADED 0
    #endif
    /* A line-traced build (for coverage) calls the tracer, Python code, between any two
       lines: the GIL no longer makes a run of C code atomic there either. */
    #if LAZYCACHE_FREE_THREADED || (defined(CYTHON_TRACE) && CYTHON_TRACE) \
        || (defined(CYTHON_TRACE_NOGIL) && CYTHON_TRACE_NOGIL)
    #define LAZYCACHE_GIL_NOT_ATOMIC 1
    #else
    #define LAZYCACHE_GIL_NOT_ATOMIC 0
    #endif
    """
    const bint LAZYCACHE_FREE_THREADED
    const bint LAZYCACHE_GIL_NOT_ATOMIC

cdef extern from *:
    """
    #ifdef _WIN32
    #include <windows.h>
    static int64_t lazycache_monotonic_ns(void) {
        LARGE_INTEGER count, frequency;
        QueryPerformanceCounter(&count);
        QueryPerformanceFrequency(&frequency);
        return (int64_t)(count.QuadPart / frequency.QuadPart) * 1000000000
            + (int64_t)(count.QuadPart % frequency.QuadPart) * 1000000000 / frequency.QuadPart;
    }
    #else
    #include <time.h>
    static int64_t lazycache_monotonic_ns(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (int64_t)now.tv_sec * 1000000000 + (int64_t)now.tv_nsec;
    }
    #endif
    """
    int64_t lazycache_monotonic_ns() noexcept nogil

# The lock-free paths run only while _nslow == 0. Starting every core's count of
# slow keys at this bias keeps it non-zero for good, so every operation locks,
# at no cost to the hot path of a GIL build (2**30: fits a 32-bit Py_ssize_t).
cdef Py_ssize_t _SLOW_BIAS = (
    1 << 30 if LAZYCACHE_GIL_NOT_ATOMIC or os.environ.get("LAZYCACHE_FORCE_LOCKING") else 0
)
LOCKS_EVERY_OPERATION = _SLOW_BIAS != 0
FREE_THREADED_BUILD = bool(LAZYCACHE_FREE_THREADED)

cdef object _MISSING = MISSING
cdef object _ABSENT = ABSENT
cdef object _EXPIRED = object()  # a lock-free read's find of an expired entry (see _read_expiring)

# The signal bits passed to _wake, defined once for both cores (_core_common); C ints here,
# so raising and clearing them touches no Python object.
cdef int SIGNAL_PRUNE = _core_common.SIGNAL_PRUNE
cdef int SIGNAL_WRITE = _core_common.SIGNAL_WRITE
# The shortest TTL a store is given (a write past its deadline), shared with the journal's replay.
cdef int64_t LATE_TTL_NS = _core_common.LATE_TTL_NS

cdef enum:
    EMPTY = -1      # index slot never used
    DUMMY = -2      # index slot of a removed entry
    MINSIZE = 8

# Entry.meta: the hash's low 32 bits, the entry's ring slot (31 bits), the reference bit.
cdef uint64_t REF_BIT = 1ULL << 63


cdef inline uint32_t _ring(Entry *ep) noexcept nogil:
    return <uint32_t>((ep.meta >> 32) & 0x7fffffffu)


cdef inline uint64_t _meta(Py_hash_t h, uint32_t r) noexcept nogil:
    return <uint64_t>(<uint32_t>h) | (<uint64_t>r << 32)


cdef inline bint _simple(object key) noexcept:
    """Whether hashing and comparing the key can run no Python code."""
    t = type(key)
    return t is str or t is int or t is bytes or t is float


cdef void *_grown(void *block, size_t nbytes) except NULL:
    """PyMem_Realloc, raising MemoryError on failure (the old block then stays valid)."""
    cdef void *grown = PyMem_Realloc(block, nbytes)
    if grown == NULL:
        raise MemoryError()
    return grown


cdef inline size_t _next_probe(size_t i, size_t *perturb, size_t mask) noexcept nogil:
    perturb[0] >>= 5
    return (i * 5 + perturb[0] + 1) & mask


cdef Py_ssize_t _clock_scan(uint8_t *flags, uint32_t *pos, Entry *entries, Py_ssize_t size,
                            Py_ssize_t *hand, Py_ssize_t limit, Py_ssize_t *chosen) noexcept nogil:
    """Sweeps the CLOCK hand: clears reference bits, marks up to limit victims."""
    cdef Py_ssize_t n = 0, steps = 0, h = hand[0]
    cdef uint8_t f
    cdef Entry *ep
    while n < limit and steps < 2 * size:
        f = flags[h]
        if f & USED and not f & (PINNED | VICTIM):
            ep = &entries[pos[h]]
            if ep.meta & REF_BIT:
                ep.meta &= ~REF_BIT
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


# Hot-path helpers are module functions, not methods: a cdef method of a class that
# Python code subclasses is called through a vtable, which the C compiler cannot inline.
cdef inline Py_ssize_t _lookup(Core self, object key, Py_hash_t h) except -2:
    """The index of key's entry, or -1. Restarts if a comparison changed the table."""
    cdef size_t mask, i, perturb
    cdef int32_t ix
    cdef Entry *ep
    cdef Entry *entries
    cdef PyObject *startkey
    cdef int cmp
    while True:
        if self._indices == NULL:
            return -1
        mask = self._mask
        i = <size_t>(<uint32_t>h) & mask
        perturb = <size_t>(<uint32_t>h)
        while True:
            ix = self._indices[i]
            if ix == EMPTY:
                return -1
            if ix >= 0:
                ep = &self._entries[ix]
                if ep.key == <PyObject *>key:
                    return ix
                if <uint32_t>ep.meta == <uint32_t>h:
                    startkey = ep.key
                    entries = self._entries
                    Py_XINCREF(startkey)
                    try:
                        cmp = PyObject_RichCompareBool(<object>startkey, key, Py_EQ)
                    finally:
                        Py_XDECREF(startkey)
                    if entries != self._entries or self._entries[ix].key != startkey:
                        break  # the comparison changed the table: look again
                    if cmp:
                        return ix
            i = _next_probe(i, &perturb, mask)

cdef inline Py_hash_t _hash(object key) except? -1:
    cdef Py_hash_t h
    if type(key) is str:
        h = (<PyASCIIObject *>key).hash  # str caches its hash: no call when it is known
        if h != -1:
            return h
    return PyObject_Hash(key)

cdef inline Py_ssize_t _find(Core self, object key) except -2:
    return _lookup(self, key, _hash(key))

cdef inline object _outcome(Core self, Py_ssize_t ix, bint count):
    """What a read of the entry at ix sees: its value, MISSING (a tombstone) or ABSENT."""
    cdef Entry *ep
    if ix < 0:
        if count:
            self._misses += 1
        return _ABSENT
    ep = &self._entries[ix]
    if ep.value == NULL:
        if count:
            self._misses += 1
        return _MISSING
    if count:
        if not ep.meta & REF_BIT:  # most reads find it set: leave the cache line clean
            ep.meta |= REF_BIT
        self._hits += 1
    return <object>ep.value

cdef inline object _read(Core self, object key, bint count):
    if self._nslow == 0 and _simple(key):
        return _outcome(self, _find(self, key), count)
    self._acquire()
    try:
        return _outcome(self, _find(self, key), count)
    finally:
        self._release()


cdef object _outcome_expiring(Core self, Py_ssize_t ix, bint count, int64_t now):
    """_outcome in an expiring cache: _EXPIRED for an expired clean entry (counted a miss)."""
    cdef uint32_t r
    if ix >= 0 and self._entries[ix].value != NULL:
        r = _ring(&self._entries[ix])
        if self._expired(r, now):
            if count:
                self._misses += 1
            return _EXPIRED
        if self._eaa:
            self._adl[r] = now + self._eaa
    return _outcome(self, ix, count)


cdef object _read_expiring(Core self, object key, bint count):
    """_read in an expiring cache: an expired clean entry is dropped and reads as ABSENT."""
    cdef int64_t now = self._now()  # first: it may run Python code (the cache's clock=)
    cdef Py_ssize_t ix
    if self._nslow == 0 and _simple(key):
        value = _outcome_expiring(self, _find(self, key), count, now)
    else:
        self._acquire()
        try:
            value = _outcome_expiring(self, _find(self, key), count, now)
        finally:
            self._release()
    if value is not _EXPIRED:
        return value
    self._acquire()  # a change: under the lock, whatever the key
    try:
        ix = _find(self, key)
        if ix >= 0 and self._entries[ix].value != NULL:
            if self._expired(_ring(&self._entries[ix]), now):
                self._drop_expired(_ring(&self._entries[ix]))
    finally:
        self._release()
        self._bury()
    return _ABSENT


cdef inline int _push_dirty(Core self, uint32_t r, bint front) except -1:
    """Queues ring slot r for the writer (at the front: a batch put back after a failure)."""
    if self._qlen == self._qcap:
        self._grow_queue()
    if front:
        self._qhead = (self._qhead - 1) & (self._qcap - 1)
        self._queue[self._qhead] = r
    else:
        self._queue[(self._qhead + self._qlen) & (self._qcap - 1)] = r
    self._qlen += 1
    return 0

cdef inline bint _full(Core self, bint new, uint8_t f) noexcept:
    """The one admission check: whether making an entry pending (new: a new entry; else one of
    flags f) would exceed max_pending. Made under the lock (or the GIL, with no Python call
    between it and the change), so the check and the change are one step."""
    return (self._max_pending and self._npending >= self._max_pending
            and (new or not f & (DIRTY | INFLIGHT)))


cdef inline int _put_entry(Core self, object key, object value, int64_t now,
                           int64_t ttl) except -1:
    """Sets key; returns 1, changing nothing, if that would exceed max_pending."""
    cdef int raised, full
    cdef PyObject *old = NULL
    if self._lock_free(key):
        full = self._set(key, value, &old, now, ttl)
        raised = self._signal()
    else:
        self._acquire()
        try:
            full = self._set(key, value, &old, now, ttl)
            raised = self._signal()
        finally:
            self._release()
    Py_XDECREF(old)  # the replaced value, released once every change is made
    if raised:
        self._wake(raised)
    return full


cdef class Core:
    """Map, dirty queue and CLOCK eviction bookkeeping (compiled)."""

    def __cinit__(self, *args, **kwargs):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError("cannot allocate the core's lock")
        self._nslow = _SLOW_BIAS

    def __init__(self, maxsize=None, write_threshold=None, read_through=False, max_pending=None,
                 expire_after_write=None, expire_after_access=None, clock=None):
        self._maxsize = check_limit("maxsize", maxsize)
        self._write_threshold = check_limit("write_threshold", write_threshold)
        self._max_pending = check_limit("max_pending", max_pending)
        self._read_through = bool(read_through)
        self._eaw = ttl_ns("expire_after_write", expire_after_write)
        self._eaa = ttl_ns("expire_after_access", expire_after_access)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, not {type(clock).__name__}")
        self._clock_fn = clock
        if self._eaw or self._eaa:
            self._enable_expiry()

    def __dealloc__(self):
        cdef Py_ssize_t ix
        if self._entries != NULL:
            for ix in range(self._nentries):
                Py_XDECREF(self._entries[ix].key)
                Py_XDECREF(self._entries[ix].value)
        while self._ngrave:
            self._ngrave -= 1
            Py_XDECREF(self._grave[self._ngrave])
        PyMem_Free(self._indices)
        PyMem_Free(self._entries)
        PyMem_Free(self._pos)
        PyMem_Free(self._flags)
        PyMem_Free(self._since)
        PyMem_Free(self._seqs)
        PyMem_Free(self._wdl)
        PyMem_Free(self._adl)
        PyMem_Free(self._free)
        PyMem_Free(self._queue)
        PyMem_Free(self._grave)
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    # ----------------------------------------------------------- hooks
    def _load_missing(self, key):
        """Called (without the lock) on a read miss when read_through is on.

        Returns the value or MISSING.
        """
        return _MISSING

    def _delete_missing(self, key):
        """Called (without the lock) when read_through is on and a deleted key is not in memory."""
        raise KeyError(key)

    def _wake(self, int signal):
        """Called (without the lock) when SIGNAL_PRUNE or SIGNAL_WRITE is first raised."""

    def _backpressure(self, key, value):
        """Called (without the lock) when a write found max_pending entries pending; it is retried.

        value is MISSING for a delete. Returns True if it performed the write itself.
        """
        return False

    def _set_max_pending(self, max_pending):
        """Sets the bound admission enforces (None: unbounded, as during journal replay)."""
        self._max_pending = check_limit("max_pending", max_pending)

    # ----------------------------------------------------------- expiry
    cdef int64_t _now(self) except? -1:
        """The expiry clock, in nanoseconds. Read without the lock: clock= is Python code."""
        if self._clock_fn is None:
            return lazycache_monotonic_ns()
        return clock_ns(self._clock_fn)

    cdef int _enable_expiry(self) except -1:
        """Turns expiry on (for a per-entry TTL in a cache made without expiry); never off."""
        cdef int64_t *wdl
        cdef int64_t *adl
        self._acquire()
        try:
            if self._expiry_on:
                return 0
            if self._cap:
                wdl = <int64_t *>PyMem_Malloc(self._cap * sizeof(int64_t))
                adl = <int64_t *>PyMem_Malloc(self._cap * sizeof(int64_t))
                if wdl == NULL or adl == NULL:
                    PyMem_Free(wdl)
                    PyMem_Free(adl)
                    raise MemoryError()
                memset(wdl, 0, self._cap * sizeof(int64_t))  # entries so far: no deadline
                memset(adl, 0, self._cap * sizeof(int64_t))
                self._wdl = wdl
                self._adl = adl
            self._expiry_on = True
        finally:
            self._release()
        return 0

    cdef void _stamp(self, uint32_t r, int64_t now, int64_t ttl) noexcept:
        """Sets the deadlines of an entry just written or loaded (ttl: ns; -1: the cache's)."""
        if ttl > 0:
            self._wdl[r] = now + ttl
        else:
            self._wdl[r] = now + self._eaw if self._eaw else 0
        self._adl[r] = now + self._eaa if self._eaa else 0

    cdef bint _expired(self, uint32_t r, int64_t now) noexcept:
        """Whether a live entry is past a deadline and clean (a pending change never expires)."""
        cdef int64_t w = self._wdl[r], a = self._adl[r]
        return ((0 < w <= now) or (0 < a <= now)) and not self._flags[r] & PINNED

    cdef int _drop_expired(self, uint32_t r) except -1:
        self._detach(r)
        self._expirations += 1
        return 0

    def _expire(self):
        """Drops every expired clean entry (run by the pruner); returns how many."""
        cdef int64_t now
        cdef uint32_t r
        cdef Py_ssize_t n = 0
        if not self._expiry_on:
            return 0
        now = self._now()
        self._acquire()
        try:
            for r in range(<uint32_t>self._nslots):
                if self._flags[r] & USED and self._entries[self._pos[r]].value != NULL:
                    if self._expired(r, now):
                        self._drop_expired(r)
                        n += 1
        finally:
            self._release()
            self._bury()
        return n

    def _ttls(self, list batch):
        """Per batch item, the seconds to its write deadline (at least LATE_TTL_NS), or None."""
        cdef int64_t now = self._now() if self._expiry_on else 0
        cdef int64_t w
        cdef list out = []
        self._acquire()
        try:
            for item in batch:
                w = self._wdl[<uint32_t>item[2]] if self._expiry_on else 0
                out.append(max(w - now, LATE_TTL_NS) / 1e9 if w else None)
        finally:
            self._release()
        return out

    @property
    def _expiry_enabled(self):
        """Whether expiry is on (from the start, or since the first TTL)."""
        return self._expiry_on

    # ----------------------------------------------------------- lock and released references
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
        return self._owner == 0 and self._nslow == 0 and _simple(key)

    cdef int _to_grave(self, PyObject *obj) except -1:
        """Keeps a reference to release after the operation (its __del__ may run Python code)."""
        cdef Py_ssize_t cap
        if obj == NULL:
            return 0
        if self._ngrave == self._gravecap:
            cap = self._gravecap * 2 if self._gravecap else 64
            self._grave = <PyObject **>_grown(self._grave, cap * sizeof(PyObject *))
            self._gravecap = cap
        self._grave[self._ngrave] = obj
        self._ngrave += 1
        return 0

    cdef int _bury(self) except -1:
        """Releases the references the last operations let go of; call without the lock."""
        cdef PyObject *obj
        while self._ngrave:  # one at a time: a __del__ may run an operation that adds more
            if LAZYCACHE_GIL_NOT_ATOMIC:  # other threads may bury at the same time
                self._acquire()
                obj = NULL
                if self._ngrave:
                    self._ngrave -= 1
                    obj = self._grave[self._ngrave]
                self._release()
            else:
                self._ngrave -= 1
                obj = self._grave[self._ngrave]
            Py_XDECREF(obj)
        return 0

    # ----------------------------------------------------------- the hash table
    cdef int _resize(self, Py_ssize_t minused) except -1:
        """Rebuilds the table for at least minused entries, compacting out the holes."""
        cdef size_t newsize = MINSIZE, i, perturb, mask
        cdef Py_ssize_t usable, ix, j = 0
        cdef int32_t *indices
        cdef Entry *entries
        cdef Entry *ep
        while newsize < <size_t>(minused * 2):
            newsize <<= 1
        usable = (newsize * 2) // 3
        indices = <int32_t *>PyMem_Malloc(newsize * sizeof(int32_t))
        entries = <Entry *>PyMem_Malloc(usable * sizeof(Entry))
        if indices == NULL or entries == NULL:
            PyMem_Free(indices)
            PyMem_Free(entries)
            raise MemoryError()
        memset(indices, 0xff, newsize * sizeof(int32_t))  # all EMPTY
        mask = newsize - 1
        for ix in range(self._nentries):
            ep = &self._entries[ix]
            if ep.key == NULL:
                continue
            entries[j] = ep[0]
            self._pos[_ring(ep)] = <uint32_t>j
            i = <size_t>(<uint32_t>ep.meta) & mask
            perturb = <size_t>(<uint32_t>ep.meta)
            while indices[i] != EMPTY:
                i = _next_probe(i, &perturb, mask)
            indices[i] = <int32_t>j
            j += 1
        PyMem_Free(self._indices)
        PyMem_Free(self._entries)
        self._indices = indices
        self._entries = entries
        self._mask = mask
        self._usable = usable
        self._nentries = j
        return 0

    cdef int _grow_ring(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2 if self._cap else 64
        self._pos = <uint32_t *>_grown(self._pos, cap * sizeof(uint32_t))
        self._flags = <uint8_t *>_grown(self._flags, cap * sizeof(uint8_t))
        self._since = <int64_t *>_grown(self._since, cap * sizeof(int64_t))
        self._seqs = <uint32_t *>_grown(self._seqs, cap * sizeof(uint32_t))
        if self._expiry_on:
            self._wdl = <int64_t *>_grown(self._wdl, cap * sizeof(int64_t))
            self._adl = <int64_t *>_grown(self._adl, cap * sizeof(int64_t))
            memset(self._wdl + self._cap, 0, (cap - self._cap) * sizeof(int64_t))
            memset(self._adl + self._cap, 0, (cap - self._cap) * sizeof(int64_t))
        self._cap = cap
        return 0

    cdef int _grow_queue(self) except -1:
        cdef Py_ssize_t cap = self._qcap * 2 if self._qcap else 64  # a power of two: see the masks
        cdef Py_ssize_t i
        cdef uint32_t *queue = <uint32_t *>PyMem_Malloc(cap * sizeof(uint32_t))
        if queue == NULL:
            raise MemoryError()
        for i in range(self._qlen):
            queue[i] = self._queue[(self._qhead + i) & (self._qcap - 1)]
        PyMem_Free(self._queue)
        self._queue = queue
        self._qcap = cap
        self._qhead = 0
        return 0

    cdef uint32_t _pop_dirty(self) noexcept:
        cdef uint32_t r = self._queue[self._qhead]
        self._qhead = (self._qhead + 1) & (self._qcap - 1)
        self._qlen -= 1
        return r

    cdef Py_ssize_t _insert(self, object key, Py_hash_t h, object value, uint8_t flags) except -1:
        """Adds an entry for a key known to be absent (value None with DELETED: a tombstone)."""
        cdef uint32_t r
        cdef size_t i, perturb
        cdef Py_ssize_t ix
        cdef Entry *ep
        if self._nentries == self._usable:
            self._resize(self._used + 1)
        if self._nfree:
            self._nfree -= 1
            r = self._free[self._nfree]
        else:
            if self._nslots == self._cap:
                self._grow_ring()
            r = <uint32_t>self._nslots
            self._nslots += 1
        i = <size_t>(<uint32_t>h) & self._mask
        perturb = <size_t>(<uint32_t>h)
        while self._indices[i] >= 0:
            i = _next_probe(i, &perturb, self._mask)
        ix = self._nentries
        ep = &self._entries[ix]
        ep.key = <PyObject *>key
        Py_XINCREF(ep.key)
        if flags & DELETED:
            ep.value = NULL
        else:
            ep.value = <PyObject *>value
            Py_XINCREF(ep.value)
        ep.meta = _meta(h, r) | REF_BIT
        self._seq += 1
        self._seqs[r] = self._seq
        self._indices[i] = <int32_t>ix
        self._nentries += 1
        self._used += 1
        self._pos[r] = <uint32_t>ix
        self._flags[r] = flags | USED
        self._since[r] = self._clock
        if not _simple(key):
            self._nslow += 1
        if flags & DIRTY:
            _push_dirty(self, r, False)
            self._npending += 1
        if flags & DELETED:
            self._ntomb += 1
        return r

    cdef int _detach(self, uint32_t r) except -1:
        """Removes an entry from the map and the ring; its key and value go to the grave."""
        cdef Py_ssize_t ix = self._pos[r], cap
        cdef Entry *ep = &self._entries[ix]
        cdef size_t i = <size_t>(<uint32_t>ep.meta) & self._mask
        cdef size_t perturb = <size_t>(<uint32_t>ep.meta)
        while self._indices[i] != ix:
            i = _next_probe(i, &perturb, self._mask)
        self._indices[i] = DUMMY
        if not _simple(<object>ep.key):
            self._nslow -= 1
        self._to_grave(ep.key)
        self._to_grave(ep.value)
        ep.key = NULL
        ep.value = NULL
        self._used -= 1
        if self._flags[r] & DELETED:
            self._ntomb -= 1
        self._flags[r] = 0
        if self._nfree == self._freecap:  # grown on demand: a cache that never evicts needs none
            cap = self._freecap * 2 if self._freecap else 64
            self._free = <uint32_t *>_grown(self._free, cap * sizeof(uint32_t))
            self._freecap = cap
        self._free[self._nfree] = r
        self._nfree += 1
        self._epoch += 1
        return 0

    cdef int _mark_dirty(self, uint32_t r) except -1:
        cdef uint8_t f = self._flags[r]
        if not f & DIRTY:
            _push_dirty(self, r, False)
            if not f & INFLIGHT:
                self._npending += 1
            self._since[r] = self._clock
            self._flags[r] = f | DIRTY
        return 0

    cdef int _signal(self) noexcept:
        cdef int raised = 0
        if (self._maxsize and not self._signals & SIGNAL_PRUNE
                and self._used - self._ntomb > self._maxsize):
            raised = SIGNAL_PRUNE
        if (self._write_threshold and not self._signals & SIGNAL_WRITE
                and self._qlen >= self._write_threshold):
            raised |= SIGNAL_WRITE
        self._signals |= raised
        return raised

    cdef int _check_writable(self) except -1:
        if self._closed:
            raise RuntimeError("the cache is closed: it accepts no more writes")
        return 0

    cdef int _set(self, object key, object value, PyObject **old, int64_t now,
                  int64_t ttl) except -1:
        """Sets key; hands the replaced value's reference to *old (to release after the lock).

        Returns 1, changing nothing, if that would exceed max_pending (see _full). With
        expiry on, the deadlines count from now (ttl: ns, or -1 for expire_after_write).
        """
        cdef Py_hash_t h
        cdef Py_ssize_t ix
        cdef Entry *ep
        cdef uint32_t r
        cdef uint8_t f
        self._check_writable()
        if value is _MISSING:
            raise ValueError("lazycache.MISSING stands for 'no value' and cannot be stored")
        h = _hash(key)
        ix = _lookup(self, key, h)
        if ix < 0:
            if _full(self, True, 0):
                return 1
            self._sets += 1
            r = <uint32_t>self._insert(key, h, value, DIRTY)
            if self._expiry_on:
                self._stamp(r, now, ttl)
            return 0
        ep = &self._entries[ix]
        r = _ring(ep)
        f = self._flags[r]
        if _full(self, False, f):
            return 1
        self._sets += 1
        if f & DELETED:
            f &= ~DELETED
            self._ntomb -= 1
        old[0] = ep.value
        Py_XINCREF(<PyObject *>value)
        ep.value = <PyObject *>value
        self._seq += 1
        self._seqs[r] = self._seq
        ep.meta |= REF_BIT
        if not f & DIRTY:
            _push_dirty(self, r, False)
            if not f & INFLIGHT:
                self._npending += 1
            self._since[r] = self._clock
            f |= DIRTY
        self._flags[r] = f
        if self._expiry_on:
            self._stamp(r, now, ttl)
        return 0

    cdef int _tombstone(self, uint32_t r, PyObject **old) except -1:
        cdef Entry *ep = &self._entries[self._pos[r]]
        old[0] = ep.value
        ep.value = NULL
        self._seq += 1
        self._seqs[r] = self._seq
        self._mark_dirty(r)
        self._flags[r] |= DELETED
        self._ntomb += 1
        self._deletes += 1
        return 0

    cdef object _remove_unlocked(self, object key, int64_t now):
        cdef Py_ssize_t ix
        cdef PyObject *old = NULL
        self._check_writable()
        ix = _find(self, key)
        if ix < 0:
            return _ABSENT
        if self._entries[ix].value == NULL:
            return _MISSING
        if self._expiry_on and self._expired(_ring(&self._entries[ix]), now):
            self._drop_expired(_ring(&self._entries[ix]))
            return _ABSENT
        if _full(self, False, self._flags[_ring(&self._entries[ix])]):
            raise Full
        self._tombstone(_ring(&self._entries[ix]), &old)
        value = <object>old
        Py_XDECREF(old)  # `value` holds it now
        return value

    # ----------------------------------------------------------- dict protocol (hot path)
    def __getitem__(self, key):
        value = _read_expiring(self, key, True) if self._expiry_on else _read(self, key, True)
        if value is _ABSENT:
            if not self._read_through:
                raise KeyError(key)
            value = self._load_missing(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        value = _read_expiring(self, key, True) if self._expiry_on else _read(self, key, True)
        if value is _ABSENT:
            if not self._read_through:
                return default
            value = self._load_missing(key)
        return default if value is _MISSING else value

    def _peek(self, key):
        """A read of memory only (counted as a hit or a miss): the value, MISSING (a tombstone),
        or ABSENT (memory does not know the key); never reads through."""
        return _read_expiring(self, key, True) if self._expiry_on else _read(self, key, True)

    def __contains__(self, key):
        value = _read_expiring(self, key, False) if self._expiry_on else _read(self, key, False)
        if value is _ABSENT:
            return self._read_through and self._load_missing(key) is not _MISSING
        return value is not _MISSING

    def __setitem__(self, key, value):
        cdef int64_t now = 0
        while True:
            if self._expiry_on:  # the one test expiry costs a cache without it
                now = self._now()
            if not _put_entry(self, key, value, now, -1):
                return
            if self._backpressure(key, value):
                return  # it wrote the entry itself

    def _put(self, key, value, long long ttl=-1):
        """Sets key; raises Full (changing nothing) where __setitem__ would apply backpressure.

        ttl: the entry's TTL in ns (turning expiry on), or -1 for the cache's.
        """
        cdef int64_t now = 0
        if ttl > 0 and not self._expiry_on:
            self._enable_expiry()
        if self._expiry_on:
            now = self._now()
        if _put_entry(self, key, value, now, ttl):
            raise Full

    def __delitem__(self, key):
        while True:
            try:
                self._delete(key)
                return
            except Full:
                if self._backpressure(key, _MISSING):
                    return  # it wrote the delete itself

    def _delete(self, key):
        """Deletes key; raises Full (changing nothing) where __delitem__ applies backpressure."""
        old = self._remove_impl(key)
        if old is _MISSING or (old is _ABSENT and not self._read_through):
            raise KeyError(key)
        if old is _ABSENT:
            self._delete_missing(key)

    def __len__(self):
        if not LAZYCACHE_GIL_NOT_ATOMIC:  # the GIL makes the two reads one
            return self._used - self._ntomb
        self._acquire()
        try:
            return self._used - self._ntomb
        finally:
            self._release()

    def __iter__(self):
        return iter(self._keys())

    # ----------------------------------------------------------- compound operations
    def _remove(self, key):
        """Deletes a live entry and returns its value.

        MISSING if already deleted; ABSENT if unknown.
        """
        return self._remove_impl(key)

    cdef object _remove_impl(self, object key):
        cdef int raised
        cdef int64_t now = self._now() if self._expiry_on else 0
        if self._lock_free(key):
            old = self._remove_unlocked(key, now)
            raised = self._signal()
        else:
            self._acquire()
            try:
                old = self._remove_unlocked(key, now)
                raised = self._signal()
            finally:
                self._release()
        if self._ngrave:  # an expired entry it dropped
            self._bury()
        if raised:
            self._wake(raised)
        return old

    def _discard(self, key):
        """Records a delete whether or not memory knows the key.

        Returns the old value or MISSING.
        """
        cdef int raised
        cdef int64_t now = self._now() if self._expiry_on else 0
        self._acquire()
        try:
            old = self._remove_unlocked(key, now)
            if old is _ABSENT:
                if _full(self, True, 0):
                    raise Full
                self._insert(key, _hash(key), None, DIRTY | DELETED)
                self._deletes += 1
                old = _MISSING
            raised = self._signal()
        finally:
            self._release()
            self._bury()
        if raised:
            self._wake(raised)
        return old

    def _insert_loaded(self, key, value, unsigned long long epoch, long long ttl=-1):
        """Caches a value read from the store as clean, unless memory changed meanwhile.

        ttl: the entry's TTL in ns (turning expiry on), or -1 for the cache's.
        """
        cdef Py_hash_t h
        cdef Py_ssize_t ix
        cdef uint32_t r
        cdef int raised = 0
        cdef int64_t now = 0
        if ttl > 0 and not self._expiry_on:
            self._enable_expiry()
        if self._expiry_on:
            now = self._now()
        self._acquire()
        try:
            h = _hash(key)
            ix = _lookup(self, key, h)
            if (ix >= 0 and self._expiry_on and self._entries[ix].value != NULL
                    and self._expired(_ring(&self._entries[ix]), now)):
                # Dropping it moves the epoch on: the load is not cached.
                self._drop_expired(_ring(&self._entries[ix]))
                ix = -1
            if ix >= 0:
                if self._entries[ix].value == NULL:
                    return _MISSING
                return <object>self._entries[ix].value
            if epoch == self._epoch and not self._closed:
                r = <uint32_t>self._insert(key, h, value, 0)
                if self._expiry_on:
                    self._stamp(r, now, ttl)
                raised = self._signal()
        finally:
            self._release()
            self._bury()
        if raised:
            self._wake(raised)
        return value

    def _insert_if_absent(self, key, value):
        """Sets key to value unless a live value is in memory; returns (inserted, current value)."""
        cdef Py_ssize_t ix
        cdef PyObject *old = NULL
        cdef int raised = 0
        cdef int64_t now = self._now() if self._expiry_on else 0
        self._acquire()
        try:
            ix = _find(self, key)
            if (ix >= 0 and self._expiry_on and self._entries[ix].value != NULL
                    and self._expired(_ring(&self._entries[ix]), now)):
                self._drop_expired(_ring(&self._entries[ix]))
                ix = -1
            if ix >= 0 and self._entries[ix].value != NULL:
                self._entries[ix].meta |= REF_BIT
                return False, <object>self._entries[ix].value
            if self._set(key, value, &old, now, -1):
                raise Full
            raised = self._signal()
        finally:
            self._release()
            self._bury()
        Py_XDECREF(old)
        if raised:
            self._wake(raised)
        return True, value

    def _read_versioned(self, key):
        """(value or MISSING or ABSENT, version) for optimistic read-modify-write."""
        cdef Py_ssize_t ix
        cdef Entry *ep
        cdef int64_t now = self._now() if self._expiry_on else 0
        self._acquire()
        try:
            ix = _find(self, key)
            if (ix >= 0 and self._expiry_on and self._entries[ix].value != NULL
                    and self._expired(_ring(&self._entries[ix]), now)):
                self._drop_expired(_ring(&self._entries[ix]))
                ix = -1
            if ix < 0:
                return _ABSENT, self._epoch
            ep = &self._entries[ix]
            if ep.value == NULL:
                return _MISSING, self._seqs[_ring(ep)]
            return <object>ep.value, self._seqs[_ring(ep)]
        finally:
            self._release()
            self._bury()

    def _compare_and_set(self, key, value, expected, unsigned long long version):
        """Sets key to value if memory still holds what _read_versioned saw."""
        cdef Py_ssize_t ix
        cdef PyObject *old = NULL
        cdef int raised = 0
        cdef int64_t now = self._now() if self._expiry_on else 0
        self._acquire()
        try:
            ix = _find(self, key)
            if expected is _ABSENT:
                if ix >= 0 or self._epoch != version:
                    return False
            elif ix < 0 or self._seqs[_ring(&self._entries[ix])] != version:
                return False
            if self._set(key, value, &old, now, -1):
                raise Full
            raised = self._signal()
        finally:
            self._release()
        Py_XDECREF(old)
        if raised:
            self._wake(raised)
        return True

    def _is_pending(self, key):
        """Whether key's latest change has not reached the store yet."""
        cdef Py_ssize_t ix
        self._acquire()
        try:
            ix = _find(self, key)
            return ix >= 0 and (self._flags[_ring(&self._entries[ix])] & (DIRTY | INFLIGHT)) != 0
        finally:
            self._release()

    def _set_clean(self, key, value, long long ttl=-1):
        """Records a value (MISSING: a delete) the caller has just written to the store itself.

        Does nothing if a newer change of key is pending: that one reaches the store later.
        ttl: the entry's TTL in ns (turning expiry on), or -1 for the cache's.
        """
        cdef Py_hash_t h
        cdef Py_ssize_t ix
        cdef uint32_t r
        cdef Entry *ep
        cdef PyObject *old = NULL
        cdef int raised = 0
        cdef int64_t now = 0
        if ttl > 0 and not self._expiry_on:
            self._enable_expiry()
        if self._expiry_on:
            now = self._now()
        self._acquire()
        try:
            h = _hash(key)
            ix = _lookup(self, key, h)
            if ix >= 0:
                r = _ring(&self._entries[ix])
                if self._flags[r] & (DIRTY | INFLIGHT):
                    return
            if value is _MISSING:
                self._deletes += 1
                if ix >= 0:
                    self._detach(r)
                return
            self._sets += 1
            if ix < 0:
                r = <uint32_t>self._insert(key, h, value, 0)
                raised = self._signal()
            else:
                ep = &self._entries[ix]
                old = ep.value
                Py_XINCREF(<PyObject *>value)
                ep.value = <PyObject *>value
                ep.meta |= REF_BIT
            if self._expiry_on:
                self._stamp(r, now, ttl)
        finally:
            self._release()
            Py_XDECREF(old)
            self._bury()
        if raised:
            self._wake(raised)

    def _popitem(self):
        """Deletes and returns the most recently inserted live item (expired ones are skipped)."""
        cdef Py_ssize_t ix
        cdef PyObject *old = NULL
        cdef int raised = 0
        cdef int64_t now = self._now() if self._expiry_on else 0
        self._acquire()
        try:
            self._check_writable()
            ix = self._nentries - 1
            while ix >= 0 and (
                self._entries[ix].key == NULL or self._entries[ix].value == NULL
                or (self._expiry_on and self._expired(_ring(&self._entries[ix]), now))
            ):
                ix -= 1
            if ix < 0:
                raise KeyError("popitem(): cache is empty")
            if _full(self, False, self._flags[_ring(&self._entries[ix])]):
                raise Full
            key = <object>self._entries[ix].key
            self._tombstone(_ring(&self._entries[ix]), &old)
            value = <object>old
            Py_XDECREF(old)
            raised = self._signal()
        finally:
            self._release()
        if raised:
            self._wake(raised)
        return key, value

    def _delete_all(self):
        """Deletes every live entry in memory; returns how many.

        Raises Full, changing nothing, if that would make more than max_pending entries pending.
        """
        cdef Py_ssize_t ix, n = 0, new = 0
        cdef PyObject *old
        cdef int raised
        self._acquire()
        try:
            self._check_writable()
            if self._max_pending:
                for ix in range(self._nentries):
                    if (self._entries[ix].key != NULL and self._entries[ix].value != NULL
                            and not self._flags[_ring(&self._entries[ix])] & (DIRTY | INFLIGHT)):
                        new += 1
                if new and self._npending + new > self._max_pending:
                    raise Full
            for ix in range(self._nentries):
                if self._entries[ix].key != NULL and self._entries[ix].value != NULL:
                    old = NULL
                    self._tombstone(_ring(&self._entries[ix]), &old)
                    self._to_grave(old)
                    n += 1
            raised = self._signal()
        finally:
            self._release()
            self._bury()
        if raised:
            self._wake(raised)
        return n

    # ----------------------------------------------------------- snapshots
    cdef list _snapshot(self, int what, int64_t now):
        """The live entries' keys (0), values (1) or (key, value) items (2), in insertion order
        (expired ones left out)."""
        cdef Py_ssize_t ix
        cdef Entry *ep
        cdef list out = []
        self._acquire()
        try:
            for ix in range(self._nentries):
                ep = &self._entries[ix]
                if ep.key == NULL or ep.value == NULL:
                    continue
                if self._expiry_on and self._expired(_ring(ep), now):
                    continue
                if what == 0:
                    out.append(<object>ep.key)
                elif what == 1:
                    out.append(<object>ep.value)
                else:
                    out.append((<object>ep.key, <object>ep.value))
        finally:
            self._release()
        return out

    def _keys(self):
        return self._snapshot(0, self._now() if self._expiry_on else 0)

    def _values(self):
        return self._snapshot(1, self._now() if self._expiry_on else 0)

    def _items(self):
        return self._snapshot(2, self._now() if self._expiry_on else 0)

    def _pending_keys(self):
        """Keys whose latest change has not been written (queued or in flight)."""
        cdef Py_ssize_t ix
        cdef list out = []
        self._acquire()
        try:
            for ix in range(self._nentries):
                if (self._entries[ix].key != NULL
                        and self._flags[_ring(&self._entries[ix])] & (DIRTY | INFLIGHT)):
                    out.append(<object>self._entries[ix].key)
        finally:
            self._release()
        return out

    # ----------------------------------------------------------- writer side
    def _take_batch(self, Py_ssize_t limit):
        """Moves up to limit entries from the dirty queue to in flight, oldest first.

        Each item is (key, value or MISSING for a delete, ring slot, seq).
        """
        cdef list batch = []
        cdef uint32_t r
        cdef uint8_t f
        cdef Entry *ep
        self._acquire()
        try:
            while self._qlen and len(batch) < limit:
                r = self._pop_dirty()
                f = (self._flags[r] & ~DIRTY) | INFLIGHT
                self._flags[r] = f
                self._ninflight += 1
                ep = &self._entries[self._pos[r]]
                batch.append((<object>ep.key, _MISSING if ep.value == NULL else <object>ep.value,
                              r, self._seqs[r]))
            self._signals &= ~SIGNAL_WRITE
            if self._qlen == 0 and self._qcap > 1024:  # the backlog is gone: give its memory back
                PyMem_Free(self._queue)
                self._queue = NULL
                self._qcap = self._qhead = 0
        finally:
            self._release()
        return batch

    cdef int _finish(self, uint32_t r) except -1:
        cdef uint8_t f = self._flags[r]
        self._flags[r] = f & ~(INFLIGHT | STALE)
        self._ninflight -= 1
        if not f & DIRTY:
            self._npending -= 1
            if f & (DELETED | STALE):
                self._detach(r)
        return 0

    def _commit(self, list batch):
        """The batch is in the store: its entries are clean unless changed meanwhile.

        Every entry is settled even if one raises (the first error is raised at the end):
        none may stay in flight for ever.
        """
        error = None
        self._acquire()
        try:
            for item in batch:
                try:
                    self._finish(<uint32_t>item[2])
                except BaseException as exc:
                    if error is None:
                        error = exc
        finally:
            self._release()
            self._bury()
        if error is not None:
            raise error

    def _requeue(self, list batch):
        """The batch failed: unchanged entries go back to the front of the queue, in order.

        Like _commit, settles every entry even if one raises.
        """
        cdef Py_ssize_t i
        cdef uint32_t r
        error = None
        self._acquire()
        try:
            for i in range(len(batch) - 1, -1, -1):
                item = batch[i]
                r = item[2]
                try:
                    if self._seqs[r] == <uint32_t>item[3] and not self._flags[r] & DIRTY:
                        _push_dirty(self, r, True)
                        self._flags[r] |= DIRTY
                    self._finish(r)
                except BaseException as exc:
                    if error is None:
                        error = exc
        finally:
            self._release()
            self._bury()
        if error is not None:
            raise error

    def _oldest_in(self, list batch):
        """The clock stamp of the batch entry that has been pending longest."""
        self._acquire()  # a concurrent write may grow (move) the array
        try:
            return min([self._since[<uint32_t>item[2]] for item in batch])
        finally:
            self._release()

    def _current(self, uint32_t r, uint32_t seq):
        """(live value or MISSING, whether it changed since seq).

        For merging store-generated fields.
        """
        cdef Entry *ep
        self._acquire()
        try:
            if not self._flags[r] & USED or self._flags[r] & DELETED:
                return _MISSING, True
            ep = &self._entries[self._pos[r]]
            return <object>ep.value, self._seqs[r] != seq
        finally:
            self._release()

    def _swap_value(self, uint32_t r, expected, value):
        """Replaces the value without marking it dirty, if it is still `expected`."""
        cdef Entry *ep
        cdef PyObject *old = NULL
        self._acquire()
        try:
            if not self._flags[r] & USED or self._flags[r] & DELETED:
                return False
            ep = &self._entries[self._pos[r]]
            if ep.value != <PyObject *>expected:
                return False
            old = ep.value
            Py_XINCREF(<PyObject *>value)
            ep.value = <PyObject *>value
        finally:
            self._release()
            Py_XDECREF(old)
        return True

    def _clear_dirty(self):
        """Forgets every queued write; returns how many. In-flight writes are not recalled."""
        cdef uint32_t r
        cdef Py_ssize_t n = 0
        cdef uint8_t f
        self._acquire()
        try:
            while self._qlen:
                r = self._pop_dirty()
                n += 1
                f = self._flags[r] & ~DIRTY
                self._flags[r] = f
                if not f & INFLIGHT:
                    self._npending -= 1
                    if f & DELETED:
                        self._detach(r)
            self._signals &= ~SIGNAL_WRITE
        finally:
            self._release()
            self._bury()
        return n

    def _forget_pending(self):
        """In a forked child: the parent writes what was pending at the fork; the child must not."""
        cdef Py_ssize_t ix
        cdef uint32_t r
        self._acquire()
        try:
            for ix in range(self._nentries):
                if self._entries[ix].key == NULL:
                    continue
                r = _ring(&self._entries[ix])
                if self._flags[r] & (DIRTY | INFLIGHT):
                    self._flags[r] &= ~(DIRTY | INFLIGHT)
                    if self._flags[r] & DELETED:
                        self._detach(r)
            self._qhead = self._qlen = 0
            self._npending = self._ninflight = 0
            self._signals = 0
        finally:
            self._release()
            self._bury()

    def _fork_prepare(self):
        self._acquire()

    def _fork_release(self):
        self._release()

    # ----------------------------------------------------------- pruner side
    def _evict(self, Py_ssize_t limit):
        """CLOCK: evicts up to limit clean, unreferenced entries; returns them as (key, value)."""
        cdef list victims = []
        cdef Py_ssize_t *chosen = NULL
        cdef Py_ssize_t n, i, size, hand
        cdef uint32_t r
        cdef Entry *ep
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
                n = _clock_scan(self._flags, self._pos, self._entries, size, &hand, limit, chosen)
            self._hand = hand
            for i in range(n):
                r = <uint32_t>chosen[i]
                self._flags[r] &= ~VICTIM
                ep = &self._entries[self._pos[r]]
                if ep.meta & REF_BIT:
                    continue  # read while the hand was sweeping: a second chance
                victims.append((<object>ep.key, <object>ep.value))
                self._detach(r)
            self._evictions += len(victims)
            if not self._maxsize or self._used - self._ntomb <= self._maxsize:
                self._signals &= ~SIGNAL_PRUNE
        finally:
            PyMem_Free(chosen)
            self._release()
            self._bury()
        return victims

    def _invalidate(self, keys):
        """Drops the given keys from memory unless a change of theirs is pending.

        Returns how many. A key whose lookup raises (it meets a held key of the same hash
        whose eq raises) does not keep the others in memory: its error is raised once they
        are dropped.
        """
        cdef Py_ssize_t ix, n = 0
        cdef uint32_t r
        error = None
        self._acquire()
        try:
            # Even if none is in memory: a read-through load in flight must not cache what it read.
            self._epoch += 1
            for key in keys:
                try:
                    ix = _find(self, key)
                except Exception as exc:
                    if error is None:
                        error = exc
                    continue
                if ix >= 0:
                    r = _ring(&self._entries[ix])
                    if not self._flags[r] & PINNED:
                        self._detach(r)
                        n += 1
                    elif self._flags[r] & INFLIGHT:
                        # Our write may commit before or after theirs: unless we change the key
                        # again meanwhile, forget it once our write is done and read the store.
                        self._flags[r] |= STALE
        finally:
            self._release()
            self._bury()
        if error is not None:
            raise error
        return n

    def _drop_clean(self):
        """Removes every entry with no pending write from memory; returns how many."""
        cdef Py_ssize_t n = 0
        cdef uint32_t r
        self._acquire()
        try:
            self._epoch += 1  # loads in flight must not cache what they read
            for r in range(<uint32_t>self._nslots):
                if self._flags[r] & USED and not self._flags[r] & PINNED:
                    self._detach(r)
                    n += 1
            self._signals &= ~SIGNAL_PRUNE
        finally:
            self._release()
            self._bury()
        return n

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
            return self._since[self._queue[self._qhead]] if self._qlen else -1
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
        """(hits, misses, sets, deletes, evictions, expirations)."""
        return (self._hits, self._misses, self._sets, self._deletes, self._evictions,
                self._expirations)

    @property
    def _memory_epoch(self):
        return self._epoch


# ----------------------------------------------------------------------------- garbage collection
# The keys and values live in C arrays, where the cyclic garbage collector cannot see them;
# LazyWriterCache (a Python subclass, collected by the GC) calls these through its base
# type's slots, so that a cycle through a cached value (a value that refers to its cache)
# is found, finalised (the cache flushes in __del__) and broken like any other.
# Never traced: the collector runs them, and a tracer is Python code.
@cython.linetrace(False)
@cython.profile(False)
cdef int _core_traverse(PyObject *o, visitproc visit, void *arg) noexcept:
    cdef Core self = <Core>o
    cdef int err
    if not LAZYCACHE_GIL_NOT_ATOMIC:
        return _visit_all(self, visit, arg)
    # Here another thread may hold the lock in the middle of an operation, its arrays
    # half updated. Then visit nothing: the collector takes what the core holds for
    # referenced from outside, which keeps it alive (a cycle is collected later).
    if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
        return 0
    err = _visit_all(self, visit, arg)
    PyThread_release_lock(self._lock)
    return err


@cython.linetrace(False)
@cython.profile(False)
cdef int _visit_all(Core self, visitproc visit, void *arg) noexcept:
    cdef Py_ssize_t ix
    cdef int err
    for ix in range(self._nentries):
        if self._entries[ix].key != NULL:
            err = visit(self._entries[ix].key, arg)
            if err:
                return err
        if self._entries[ix].value != NULL:
            err = visit(self._entries[ix].value, arg)
            if err:
                return err
    for ix in range(self._ngrave):
        err = visit(self._grave[ix], arg)
        if err:
            return err
    return 0


@cython.linetrace(False)
@cython.profile(False)
cdef int _core_clear(PyObject *o) noexcept:
    """Empties the core (it is about to be freed): every reference goes to the grave, then out."""
    cdef Core self = <Core>o
    cdef Py_ssize_t ix
    for ix in range(self._nentries):
        self._to_grave(self._entries[ix].key)
        self._to_grave(self._entries[ix].value)
        self._entries[ix].key = NULL
        self._entries[ix].value = NULL
    if self._indices != NULL:
        memset(self._indices, 0xff, (self._mask + 1) * sizeof(int32_t))  # all EMPTY
    self._nentries = self._used = self._ntomb = 0
    self._nslow = _SLOW_BIAS
    if self._flags != NULL:
        memset(self._flags, 0, self._cap * sizeof(uint8_t))
    self._nslots = self._nfree = self._hand = 0
    self._qhead = self._qlen = 0
    self._npending = self._ninflight = 0
    self._bury()
    return 0


(<PyTypeObject *>Core).tp_traverse = <traverseproc>_core_traverse
(<PyTypeObject *>Core).tp_clear = <inquiry>_core_clear
