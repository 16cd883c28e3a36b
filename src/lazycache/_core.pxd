# Declarations of the compiled core, so that other Cython modules can cimport it.
from cpython.object cimport PyObject
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef enum:
    DIRTY = 1       # queued for the writer
    INFLIGHT = 2    # in a batch the writer is saving now
    DELETED = 4     # tombstone: the delete has not reached the store yet
    USED = 16       # the ring slot holds an entry
    VICTIM = 32     # chosen by the current eviction scan
    STALE = 64      # invalidated by another process while its own write was in flight
    PINNED = DIRTY | INFLIGHT | DELETED


ctypedef struct Entry:
    PyObject *key       # NULL: a hole left by a removed entry
    PyObject *value     # NULL: a tombstone (a delete waiting for the store)
    # meta: the hash's low 32 bits | the ring slot << 32 | REF_BIT (CLOCK reference bit)
    uint64_t meta


cdef class Core:
    # The map: a compact hash table laid out like CPython's dict, an index array into an
    # array of entries kept in insertion order (so iteration order is a dict's).
    cdef int32_t *_indices
    cdef size_t _mask
    cdef Entry *_entries
    cdef Py_ssize_t _nentries       # entries appended, holes included
    cdef Py_ssize_t _usable         # capacity of _entries
    cdef Py_ssize_t _used           # live entries and tombstones
    cdef Py_ssize_t _maxsize
    cdef Py_ssize_t _write_threshold
    cdef Py_ssize_t _max_pending
    cdef int64_t _clock
    # The CLOCK ring: one slot per entry, a stable id (entries move when the table is
    # compacted, ring slots never do); per slot: its entry, its flags, when it became pending.
    cdef uint32_t *_pos
    cdef uint8_t *_flags
    cdef int64_t *_since
    cdef uint32_t *_seqs                # per ring slot: version of the entry's latest change
    cdef uint32_t *_free
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _nslots
    cdef Py_ssize_t _nfree
    cdef Py_ssize_t _freecap
    cdef Py_ssize_t _hand
    # Dirty queue: a growable circular buffer of ring slots.
    cdef uint32_t *_queue
    cdef Py_ssize_t _qcap
    cdef Py_ssize_t _qhead
    cdef Py_ssize_t _qlen
    # References to release once the current operation is complete (see _bury).
    cdef PyObject **_grave
    cdef Py_ssize_t _ngrave
    cdef Py_ssize_t _gravecap
    cdef Py_ssize_t _ninflight
    cdef Py_ssize_t _npending
    cdef Py_ssize_t _ntomb
    cdef Py_ssize_t _nslow
    cdef uint32_t _seq
    cdef unsigned long long _epoch
    cdef int _signals
    cdef bint _closed
    cdef bint _read_through
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _sets
    cdef unsigned long long _deletes
    cdef unsigned long long _evictions
    cdef unsigned long long _expirations
    # Expiry (see _core_py): off until asked for; then per ring slot a write and an access
    # deadline on the expiry clock (ns, 0 for none), the arrays made when it is turned on.
    cdef bint _expiry_on
    cdef int64_t _eaw                   # expire_after_write, ns (0: none)
    cdef int64_t _eaa                   # expire_after_access, ns (0: none)
    cdef object _clock_fn               # the cache's clock= (seconds), or None: CLOCK_MONOTONIC
    cdef int64_t *_wdl
    cdef int64_t *_adl
    # Re-entrant lock for operations that may run Python code (keys with Python hash/eq).
    cdef PyThread_type_lock _lock
    cdef unsigned long _owner
    cdef Py_ssize_t _depth

    cdef int _acquire(self) except -1
    cdef void _release(self) noexcept
    cdef inline bint _lock_free(self, object key) noexcept
    cdef int _bury(self) except -1
    cdef int _to_grave(self, PyObject *obj) except -1
    cdef int _check_writable(self) except -1
    cdef int _resize(self, Py_ssize_t minused) except -1
    cdef int _grow_ring(self) except -1
    cdef int _grow_queue(self) except -1
    cdef uint32_t _pop_dirty(self) noexcept
    cdef Py_ssize_t _insert(self, object key, Py_hash_t h, object value, uint8_t flags) except -1
    cdef int _detach(self, uint32_t r) except -1
    cdef int _mark_dirty(self, uint32_t r) except -1
    cdef int _signal(self) noexcept
    cdef int _set(self, object key, object value, PyObject **old, int64_t now,
                  int64_t ttl) except -1
    cdef int _tombstone(self, uint32_t r, PyObject **old) except -1
    cdef object _remove_impl(self, object key)
    cdef object _remove_unlocked(self, object key, int64_t now)
    cdef int64_t _now(self) except? -1
    cdef int _enable_expiry(self) except -1
    cdef void _stamp(self, uint32_t r, int64_t now, int64_t ttl) noexcept
    cdef bint _expired(self, uint32_t r, int64_t now) noexcept
    cdef int _drop_expired(self, uint32_t r) except -1
    cdef int _finish(self, uint32_t r) except -1
    cdef list _snapshot(self, int what, int64_t now)
