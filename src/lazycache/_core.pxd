# Declarations of the compiled core, so that other Cython modules can cimport it.
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport uint8_t

cdef enum:
    DIRTY = 1       # queued for the writer
    INFLIGHT = 2    # in a batch the writer is saving now
    DELETED = 4     # tombstone: the delete has not reached the store yet
    REF = 8         # CLOCK reference bit
    USED = 16       # the slot holds an entry
    VICTIM = 32     # chosen by the current eviction scan
    PINNED = DIRTY | INFLIGHT | DELETED
    SIGNAL_PRUNE = 1
    SIGNAL_WRITE = 2


cdef class Entry:
    cdef readonly object key
    cdef readonly object value
    cdef readonly unsigned long long seq
    cdef readonly long long since
    cdef Py_ssize_t slot


cdef class Core:
    cdef dict _map
    cdef Entry _spare
    cdef Py_ssize_t _maxsize
    cdef Py_ssize_t _write_threshold
    cdef Py_ssize_t _max_pending
    cdef long long _clock
    # CLOCK ring: one slot per entry, borrowed pointers (the map owns the entries).
    cdef void **_ring
    cdef uint8_t *_flags
    cdef Py_ssize_t *_free
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _nslots
    cdef Py_ssize_t _nfree
    cdef Py_ssize_t _hand
    # Dirty queue: a growable circular buffer of borrowed entry pointers (dirty entries
    # are pinned in the map, so the pointers stay valid while queued).
    cdef void **_queue
    cdef Py_ssize_t _qcap
    cdef Py_ssize_t _qhead
    cdef Py_ssize_t _qlen
    cdef Py_ssize_t _ninflight
    cdef Py_ssize_t _npending
    cdef Py_ssize_t _ntomb
    cdef Py_ssize_t _nslow
    cdef unsigned long long _seq
    cdef unsigned long long _epoch
    cdef int _signals
    cdef bint _closed
    cdef bint _read_through
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _sets
    cdef unsigned long long _deletes
    cdef unsigned long long _evictions
    # Re-entrant lock for operations that may run Python code (keys with Python hash/eq).
    cdef PyThread_type_lock _lock
    cdef unsigned long _owner
    cdef Py_ssize_t _depth

    cdef int _acquire(self) except -1
    cdef void _release(self) noexcept
    cdef inline bint _lock_free(self, object key) noexcept
    cdef inline void _replenish(self) noexcept
    cdef object _remove_impl(self, object key)
    cdef int _check_writable(self) except -1
    cdef int _grow_ring(self) except -1
    cdef int _push_dirty(self, Entry e, bint front) except -1
    cdef Entry _pop_dirty(self)
    cdef Entry _insert(self, object key, object value, uint8_t flags)
    cdef int _detach(self, Entry e) except -1
    cdef int _mark_dirty(self, Entry e) except -1
    cdef int _signal(self) noexcept
    cdef object _set(self, object key, object value)
    cdef object _tombstone(self, Entry e)
    cdef object _remove_unlocked(self, object key)
    cdef int _finish(self, Entry e) except -1
