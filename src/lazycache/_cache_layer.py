"""The cache layer: everything of `LazyWriterCache` that is not the core.

`lazycache.cache` builds `LazyWriterCache` by mixing `_CacheLayer` over the active core
(compiled when available), the core first in the MRO for the hot dict methods. This layer
adds what needs Python: the store, the writer and pruner threads, backpressure
(`max_pending`, `on_full`), the compound writes, flushing and closing; read-through (one
load per key however many readers miss it) is its base, `lazycache._read_through`. It
calls the core through its private methods (typed by `CoreMapping`, see
`lazycache._contracts`), and the core calls back the hooks below (`_delete_missing`,
`_wake`, `_backpressure`; `_load_missing` is read-through's) without its lock held.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Collection, ItemsView, Iterable, KeysView, ValuesView
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._checks import check_int, check_seconds
from ._core_common import SIGNAL_PRUNE, SIGNAL_WRITE, Full, ttl_ns
from ._journaling import NO_JOURNAL, JournalScope, NoJournal, serializer_for_journal
from ._lifecycle import close_collected, track, untrack
from ._read_through import _ReadThroughLayer
from ._sentinels import ABSENT, MISSING
from ._views import _ItemsView, _KeysView, _ValuesView
from ._worker import Backoff, Worker
from .coherence import Coherence
from .journal import Journal, time_left
from .serializers import SerializerSpec
from .stats import CacheStats
from .stores.base import Store, ttl_writer
from .writer import (
    BackpressureError,
    BatchWriter,
    FlushError,
    FlushResult,
    MergeGenerated,
    OnFlush,
    OnWriteError,
    log_extra,
    log_write_error,
    merge_fields,
    safe_repr,
)

if TYPE_CHECKING:
    # Only for the type checker: typing_extensions is not a runtime dependency.
    from typing_extensions import Self

    from ._core import _Pending as Pending

log = logging.getLogger("lazycache")
coherence_log = logging.getLogger("lazycache.coherence")
journal_log = logging.getLogger("lazycache.journal")
pruner_log = logging.getLogger("lazycache.pruner")

T = TypeVar("T")

OnEvict = Callable[[Any, Any], None]
"""on_evict(key, value): called for each entry the pruner (or `prune()`) evicted."""

_UNSET: Any = object()
_NO_WRITE_THROUGH: Any = object()  # a write that backpressure may delay or refuse, but not perform

ON_FULL_POLICIES = ("block", "raise", "write-through")


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def check_options(where: str, given: Iterable[str], accepted: Collection[str]) -> None:
    """Raises TypeError naming `where` (the public call) for the first name of `given` not in
    `accepted`, with the closest accepted name as a suggestion.

    Python's own message names the function that takes the options (`_CacheLayer.__init__()`)
    and suggests a name only from 3.13 on: this one is the same on every version.
    """
    for name in given:
        if name not in accepted:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f" (it takes: {', '.join(sorted(accepted))})"
            )
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")


class _CacheLayer(_ReadThroughLayer):
    """Everything of LazyWriterCache that is not the core. See LazyWriterCache."""

    implementation: str
    """Which core this class is built on: "cython" or "python"."""
    _journaled: type[Self]
    """This class with the journal's hot writes (see lazycache._journaled_layer)."""

    def __new__(cls, *args: Any, journal: str | None = None, **kwargs: Any) -> Self:
        # Checked here, before __init__ binds them: its TypeError would name _CacheLayer.
        if len(args) + ("store" in kwargs) != 1:
            raise TypeError(
                f"{cls.__name__}() takes the store as its one positional argument "
                f"({len(args)} given); its options are keywords"
            )
        check_options(f"{cls.__name__}()", kwargs, _OPTIONS)
        if journal is not None and not issubclass(cls, cls._journaled):
            cls = cls._journaled  # a journaled cache's writes append to the journal
        return super().__new__(cls)

    def __init__(
        self,
        store: Store[Any, Any],
        *,
        maxsize: int | None = None,
        write_interval: float = 0.5,
        prune_interval: float = 10.0,
        read_through: bool = True,
        batch_size: int = 1000,
        flush_on_close: bool = True,
        merge_generated: MergeGenerated = merge_fields,
        on_write_error: OnWriteError = log_write_error,
        retry_initial: float = 0.1,
        retry_max: float = 30.0,
        max_retries: int | None = None,
        max_pending: int | None = None,
        on_full: str = "block",
        block_timeout: float = 30.0,
        journal: str | None = None,
        journal_fsync: str = "everysec",
        journal_serializer: SerializerSpec | None = None,
        journal_errors: str = "raise",
        coherence: Coherence | None = None,
        exit_timeout: float = 3.0,
        owns_store: bool = False,
        name: str = "default",
        on_flush: OnFlush | None = None,
        on_evict: OnEvict | None = None,
        expire_after_write: float | None = None,
        expire_after_access: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"store must be a lazycache.Store, not {type(store).__name__}")
        check_int("batch_size", batch_size)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty (it labels the cache's metrics)")
        for hook_name, hook in (("on_flush", on_flush), ("on_evict", on_evict)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{hook_name} must be callable or None, not {type(hook).__name__}")
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(
                f"on_full must be one of {', '.join(map(repr, ON_FULL_POLICIES))}, got {on_full!r}"
            )
        write_interval = check_seconds("write_interval", write_interval)
        prune_interval = check_seconds("prune_interval", prune_interval)
        self.block_timeout = check_seconds("block_timeout", block_timeout)
        # A cache left open is closed at exit (or by the garbage collector) within this deadline:
        # a store that hangs must not hang the interpreter's exit, nor lose keys unnamed.
        self.exit_timeout = check_seconds("exit_timeout", exit_timeout)
        self._batch_writer = BatchWriter(
            store,
            batch_size=batch_size,
            merge_generated=merge_generated,
            on_write_error=on_write_error,
            retry_initial=retry_initial,
            retry_max=retry_max,
            max_retries=max_retries,
        )
        if coherence is not None and not isinstance(coherence, Coherence):
            raise TypeError(
                f"coherence must be a lazycache.coherence.Coherence, not {type(coherence).__name__}"
            )
        self._batch_writer.coherence = coherence
        self._batch_writer.on_flush = on_flush
        self.on_evict = on_evict
        self.name = name
        self._coherence = coherence
        self._coherent = True  # False while the coherence channel is down: loads are not cached
        self._init_read_through()
        super().__init__(
            maxsize=maxsize,
            write_threshold=batch_size,
            read_through=read_through,
            # Unbounded while a journal replays (those writes were acknowledged long ago);
            # the bound is set once replay is done.
            max_pending=None if journal is not None else max_pending,
            expire_after_write=expire_after_write,
            expire_after_access=expire_after_access,
            clock=clock,
        )
        self.expire_after_write = expire_after_write
        self.expire_after_access = expire_after_access
        # The store, if it keeps per-entry TTLs (Redis PX, a SQL expiry column): then each
        # batch carries the seconds left to its entries that have a write deadline.
        self._ttl_store = ttl_writer(store)
        self._set_clock(_now_ms())
        # Opened once the other options are known good, and before _is_closed exists (a failed
        # open leaves nothing for __del__ to close): it takes the journal's lock (released by
        # close()) and reads what it must replay, refusing what it cannot.
        self._journal = (
            None
            if journal is None
            else Journal(
                journal,
                journal_fsync,
                serializer_for_journal(store, journal_serializer),
                journal_errors,
                expire_after_write,
            )
        )
        self._batch_writer.journal = self._journal
        self.store = store
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.on_full = on_full
        self.flush_on_close = bool(flush_on_close)
        self.owns_store = bool(owns_store)
        self._close_lock = threading.Lock()
        self._is_closed = False
        self._write_interval = write_interval
        self._prune_interval = prune_interval
        self._start_threads()
        track(self)
        if coherence is not None:
            self._subscribe(coherence)
        if self._journal is not None:
            self._replay_journal(self._journal)
            self._set_max_pending(max_pending)

    def _subscribe(self, coherence: Coherence) -> None:
        # The channel's thread holds only weak references: it must not keep the cache alive.
        ref = weakref.ref(self)

        def on_keys(keys: Any) -> None:
            cache = ref()
            if cache is not None:
                cache._invalidate(keys)

        def on_lost() -> None:
            cache = ref()
            if cache is not None:
                cache._coherence_lost()

        def on_restored() -> None:
            cache = ref()
            if cache is not None:
                cache._coherence_restored()

        coherence.start(on_keys, on_lost, on_restored)

    def _coherence_lost(self) -> None:
        # Writes by other processes may go unannounced: forget what we read, and read through.
        self._coherent = False
        dropped = self._drop_clean()
        coherence_log.warning(
            "the coherence channel is down; dropped %d clean entries, reads go to the store",
            dropped,
            extra=log_extra(count=dropped),
        )

    def _coherence_restored(self) -> None:
        self._drop_clean()
        self._coherent = True
        coherence_log.warning("the coherence channel is back; caching reads again")

    @property
    def coherent(self) -> bool:
        """False while the coherence channel is down (reads then always go to the store)."""
        return self._coherent

    def _replay_journal(self, journal: Journal) -> None:
        """Re-applies the writes a previous process journaled but may not have written.

        Each is journaled again (same record, same deadline) before the segments found at
        open go. Not subject to backpressure: these writes were acknowledged long ago. While
        the store takes them, the backlog is flushed whenever it reaches max_pending. A set
        with a deadline gets the time left to it (see lazycache.journal's "Deadlines"); one
        without, the cache's own expiry options.
        """
        core_set = self._core_set
        drain = bool(self.max_pending)
        replayed = 0
        for entry in journal.recovered:
            if drain and self._backlog_full():
                drain = self._batch_writer.flush(self).ok
                if not drain:
                    journal_log.warning(
                        "the store refused the replayed writes of %s: replaying the "
                        "rest beyond max_pending=%d (they are journaled)",
                        journal.path,
                        self.max_pending,
                    )
            with journal.lock:
                journal.append(entry.payload)
                if entry.value is MISSING:
                    self._discard(entry.key)
                elif entry.deadline is None:
                    core_set(entry.key, entry.value)
                else:
                    self._put(entry.key, entry.value, time_left(entry.deadline))
            replayed += 1
        if replayed:
            journal_log.info(
                "replayed %d journaled writes from %s",
                replayed,
                journal.path,
                extra=log_extra(count=replayed),
            )
        journal.release_leftovers()

    def _core_set(self, key: Any, value: Any) -> None:
        """The core's own set: not journaled (a journaled cache's core applies no backpressure)."""
        super().__setitem__(key, value)

    def _journaling(self) -> NoJournal:
        return NO_JOURNAL if self._journal is None else JournalScope(self._journal)

    def _start_threads(self) -> None:
        self._writer = Worker(
            self._background_flush,
            self._write_interval,
            "lazycache-writer",
            while_backing_off=self._heartbeat,  # the clock keeps time during a long backoff
        )
        self._pruner = Worker(self._background_prune, self._prune_interval, "lazycache-pruner")
        self._writer.start()
        self._pruner.start()

    @property
    def merge_generated(self) -> MergeGenerated:
        return self._batch_writer.merge_generated

    @property
    def on_write_error(self) -> OnWriteError:
        return self._batch_writer.on_write_error

    # ----------------------------------------------------------- hooks called by the core
    def _delete_missing(self, key: Any) -> None:
        if self._fetch(key) is MISSING:
            raise KeyError(key)
        self._discard(key)

    def _wake(self, signal: int) -> None:
        if signal & SIGNAL_PRUNE:
            self._pruner.wake()
        if signal & SIGNAL_WRITE:
            self._writer.wake()

    def _backpressure(self, key: Any, value: Any, wait: _Wait | None = None) -> bool:
        """Applies on_full to a write the core refused (Full): it would add a pending entry
        beyond max_pending. "write-through" writes the entry itself (unless `value` is
        _NO_WRITE_THROUGH); "raise" raises BackpressureError; "block" waits for room.

        `block_timeout` bounds the whole write, however often other writers take the room
        first. Called by the core's own `__setitem__`/`__delitem__` (`wait` None), it writes
        the entry itself once there is room, trying again until the deadline, and returns
        True. A caller that retries its write itself passes its `_Wait` (one per write): this
        returns False once there is room, and every wait of that write shares its deadline.
        """
        if self.on_full == "write-through" and value is not _NO_WRITE_THROUGH:
            self._write_through(key, value)
            return True
        if self.on_full == "raise":
            raise BackpressureError(
                f"{self.pending} writes are waiting for the store (max_pending={self.max_pending}); "
                f"refused the write of {safe_repr(key)}"
            )
        if wait is not None:
            self._block_until_room(key, wait)
            return False
        wait = _Wait()
        while True:
            self._block_until_room(key, wait)
            try:
                if value is MISSING:
                    self._delete(key)
                else:
                    self._put(key, value)
                return True
            except Full:
                continue  # another writer took the room first

    def _backlog_full(self) -> bool:
        """Whether max_pending entries are pending (never without max_pending)."""
        return self.max_pending is not None and self.pending >= self.max_pending

    def _block_until_room(self, key: Any, wait: _Wait) -> None:
        """Waits until fewer than max_pending entries are pending; BackpressureError at the deadline."""
        if wait.deadline is None:
            wait.deadline = time.monotonic() + self.block_timeout
        while self._backlog_full():
            if self._is_closed:
                raise RuntimeError("the cache is closed: it accepts no more writes")
            if time.monotonic() >= wait.deadline:
                raise BackpressureError(
                    f"waited {self.block_timeout}s for the writer to catch up ({self.pending} pending, "
                    f"max_pending={self.max_pending}); refused the write of {safe_repr(key)}"
                )
            self._writer.wake()
            time.sleep(0.002)

    def _admitted(self, key: Any, write: Callable[..., T], *args: Any) -> T:
        """Runs a compound write, applying backpressure (never write-through) each time the
        core refuses it with Full; a refused attempt changed nothing (its journal record is
        undone) and holds no lock. One deadline for all of its waits."""
        wait = _Wait()
        while True:
            try:
                return write(*args)
            except Full:
                self._backpressure(key, _NO_WRITE_THROUGH, wait)

    def _write_through(self, key: Any, value: Any, ttl: int = -1) -> None:
        """Writes one entry to the store now, in order with the batches, then caches it clean.

        `ttl`: the entry's own TTL in ns, or -1 for the cache's expire_after_write.
        """
        writer = self._batch_writer
        with writer.lock:
            if value is MISSING:
                current, _ = self._read_versioned(key)
                if current is ABSENT:
                    current = self._fetch(key)
                if current is MISSING:
                    raise KeyError(key)
                self.store.write([], [key])
            else:
                seconds = ttl / 1e9 if ttl > 0 else self.expire_after_write
                if seconds and self._ttl_store is not None:
                    generated = self._ttl_store.write([(key, value)], [], ttls={key: seconds})
                else:
                    generated = self.store.write([(key, value)], [])
                fields = generated.get(key) if generated else None
                if fields:
                    value = writer.merge_generated(value, fields, True)
            writer.writes += 1
            writer.flushes += 1
            writer.write_errors.pop(key, None)
            self._set_clean(key, value, ttl)

    def _store_ttls(self, items: list[Pending]) -> dict[Any, float] | None:
        """For the writer: per upsert of a batch that has a write deadline, the seconds left to it
        (at least 1 ms: an entry written after its deadline still reaches the store, and so
        replaces the older value there). None when the store keeps no TTLs or none applies."""
        if self._ttl_store is None or not self._expiry_enabled:
            return None
        ttls = {
            key: left
            for (key, value, _, _), left in zip(items, self._ttls(items))
            if left is not None and value is not MISSING
        }
        return ttls or None

    # ----------------------------------------------------------- the rest of the mapping API
    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """`cache[key] = value`, with a time to live of its own: `ttl` seconds from now.

        The entry expires `ttl` seconds after this write (in place of `expire_after_write`),
        or after `expire_after_access` without a read, whichever comes first; a store
        that keeps TTLs (Redis, a SQL table with an expiry column) gets the time left when
        the write reaches it. Without `ttl`, the same as `cache[key] = value`.
        A write pending in memory does not expire before it is written.
        """
        if ttl is None:
            self[key] = value
            return
        self._put_with_ttl(key, value, ttl_ns("ttl", ttl))

    def _put_with_ttl(self, key: Any, value: Any, ttl: int) -> None:
        wait = _Wait()
        while True:
            try:
                self._put(key, value, ttl)
                return
            except Full:
                if self._make_room(key, value, ttl, wait):
                    return

    def _make_room(self, key: Any, value: Any, ttl: int, wait: _Wait) -> bool:
        """`_backpressure` for a write with a TTL of its own, which the caller retries itself:
        write-through keeps the TTL."""
        if ttl > 0 and self.on_full == "write-through":
            self._write_through(key, value, ttl)
            return True
        return self._backpressure(key, value, wait)

    def pop(self, key: Any, default: Any = _UNSET) -> Any:
        """Deletes key (the delete reaches the store in a later flush) and returns its value.

        Reads through to the store when memory does not know the key.
        """
        return self._admitted(key, self._pop, key, default)

    def _pop(self, key: Any, default: Any) -> Any:
        with self._journaling() as journal:
            # Journaled first, undone if nothing was deleted: a failed append changes nothing.
            mark = journal.append(journal.encode(key, MISSING))
            try:
                value = self._remove(key)
                if value is ABSENT:
                    value = self._fetch(key)
                    if value is not MISSING:
                        newer = self._discard(key)
                        # Set by another thread while we read: that is what we deleted.
                        if newer is not MISSING:
                            value = newer
            except BaseException:
                journal.undo(mark)
                raise
            if value is MISSING:
                journal.undo(mark)
        if value is MISSING:
            if default is _UNSET:
                raise KeyError(key)
            return default
        return value

    def popitem(self) -> tuple[Any, Any]:
        """Deletes and returns the most recently inserted item in memory (the store is not consulted)."""
        return self._admitted(None, self._popitem_journaled)

    def _popitem_journaled(self) -> tuple[Any, Any]:
        with self._journaling() as journal:
            key, value = self._popitem()
            try:
                journal.append(journal.encode(key, MISSING))
            except BaseException:
                # Not journaled, so not deleted: the item is put back (pending, same value).
                self._core_set(key, value)
                raise
        return key, value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Returns the value of key (reading through on a miss); sets it to default if there is none."""
        value = self.get(key, MISSING)
        if value is not MISSING:
            return value
        record = self._journaling().encode(key, default)
        return self._admitted(key, self._setdefault, key, default, record)

    def _setdefault(self, key: Any, default: Any, record: Any) -> Any:
        with self._journaling() as journal:
            if journal.enabled:
                current, _ = self._read_versioned(key)
                if current is not ABSENT and current is not MISSING:
                    return current  # set meanwhile: nothing to journal
            mark = journal.append(record)
            try:
                inserted, value = self._insert_if_absent(key, default)
            except BaseException:
                journal.undo(mark)
                raise
            if not inserted:
                journal.undo(mark)
        return value

    def discard(self, key: Any) -> None:
        """Deletes key from the cache and, in a later flush, from the store, whether or not memory holds it."""
        record = self._journaling().encode(key, MISSING)
        self._admitted(key, self._discard_journaled, key, record)

    def _discard_journaled(self, key: Any, record: Any) -> None:
        with self._journaling() as journal:
            mark = journal.append(record)
            try:
                self._discard(key)
            except BaseException:
                journal.undo(mark)
                raise

    def clear(self) -> None:
        """Deletes every key held in memory; each delete reaches the store in a later flush.

        Keys that only the store holds are not touched. To drop memory without deleting
        anything, use `invalidate()`.

        With `max_pending`, the deletes count like any write. If they do not all fit at
        once, on_full="raise" raises BackpressureError and deletes nothing; "block" and
        "write-through" delete the entries one by one, each waiting for room like a
        compound write (`block_timeout` bounds the whole call; if it passes, the entries
        not deleted yet are still there).
        """
        with self._journaling() as journal:
            records = (
                [journal.encode(key, MISSING) for key in self._keys()] if journal.enabled else []
            )
            mark = journal.append(*records) if records else None
            try:
                self._delete_all()
                return
            except Full:  # nothing changed
                journal.undo(mark)
            except BaseException:
                journal.undo(mark)
                raise
        if self.on_full == "raise":
            raise BackpressureError(
                f"{self.pending} writes are waiting for the store (max_pending={self.max_pending}); "
                f"clear() would add a delete for each of the {len(self)} entries in memory: "
                "refused, nothing was deleted"
            )
        wait = _Wait()
        error: Exception | None = None
        for key in self._keys():
            try:
                while True:
                    try:
                        self._remove_journaled(key)
                        break
                    except Full:
                        self._backpressure(key, _NO_WRITE_THROUGH, wait)
            except RuntimeError:  # BackpressureError, or the cache closed meanwhile
                raise
            except Exception as exc:  # a key whose eq raises: the others are deleted all the same
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def _remove_journaled(self, key: Any) -> None:
        """Deletes key if memory holds it live (no read-through); raises Full, changing nothing, if
        that would exceed max_pending."""
        with self._journaling() as journal:
            mark = journal.append(journal.encode(key, MISSING))
            try:
                old = self._remove(key)
            except BaseException:
                journal.undo(mark)
                raise
            if old is ABSENT or old is MISSING:  # deleted or gone meanwhile
                journal.undo(mark)

    def copy(self) -> dict[Any, Any]:
        """A plain dict snapshot of the live entries in memory (not a second cache: one store, one writer)."""
        return dict(self._items())

    def keys(self) -> KeysView[Any]:
        return _KeysView(self)

    def values(self) -> ValuesView[Any]:
        return _ValuesView(self)

    def items(self) -> ItemsView[Any, Any]:
        return _ItemsView(self)

    def update_entry(self, key: Any, fn: Callable[[Any], Any], default: Any = _UNSET) -> Any:
        """Atomically replaces the value of key with `fn(value)` and returns the new value.

        Optimistic: `fn` runs without any lock and is called again if another thread
        changed the key meanwhile, so it must not mutate its argument or have side
        effects. A missing key (after read-through) uses `default`, or raises KeyError.
        """
        while True:
            current, version = self._read_versioned(key)
            expected = current
            if current is ABSENT:
                current = self._fetch(key)
            base = default if current is MISSING else current
            if base is _UNSET:
                raise KeyError(key)
            new = fn(base)
            record = self._journaling().encode(key, new)
            if self._admitted(key, self._swap, key, new, expected, version, record):
                return new  # else changed meanwhile: nothing journaled, fn runs again

    def _swap(self, key: Any, new: Any, expected: Any, version: int, record: Any) -> bool:
        with self._journaling() as journal:
            if journal.enabled and self._read_versioned(key)[1] != version:
                return False
            mark = journal.append(record)
            try:
                done: bool = self._compare_and_set(key, new, expected, version)
            except BaseException:
                journal.undo(mark)
                raise
            if not done:
                journal.undo(mark)
            return done

    # ----------------------------------------------------------- writing and pruning
    def flush(self, timeout: float | None = None) -> FlushResult:
        """Writes everything pending now to the store, in batches, and says what happened.

        Without a timeout, each batch is tried once. With one, recoverable failures are
        retried (with backoff) until the deadline, and the call returns by then even if
        the store hangs. Raises FlushError (carrying the FlushResult) unless everything
        pending at the call was written: `failed_keys` are still pending (the writer
        thread keeps retrying them), `poisoned_keys` were rejected by the store and
        handed to `on_write_error`.
        """
        self._set_clock(_now_ms())
        if timeout is None:
            result = self._batch_writer.flush(self)
        else:
            result = self._flush_within(check_seconds("timeout", timeout))
        if not result.ok:
            raise FlushError(result)
        return result

    def _flush_within(self, timeout: float) -> FlushResult:
        # The store call cannot be interrupted, so it runs in a thread the caller need not wait for.
        started = time.monotonic()
        deadline = started + timeout
        outcome: list[FlushResult] = []
        writer = self._batch_writer
        # Watched from the call on (the helper thread's flush starts watching a little later).
        with writer.watching() as rejected:
            worker = threading.Thread(
                target=lambda: outcome.append(writer.flush(self, deadline, persist=True)),
                name="lazycache-flush",
                daemon=True,
            )
            try:
                worker.start()
            except RuntimeError:
                # CPython 3.12.0-3.12.2 refuse new threads in atexit handlers (cpython#113964):
                # the flush at exit runs here, its deadline kept between attempts, though a
                # store call that never returns cannot be cut short.
                log.warning("no thread can start now; flushing in this thread", exc_info=True)
                outcome.append(writer.flush(self, deadline, persist=True))
            else:
                worker.join(timeout)
            if outcome:
                result = outcome[0]
                if len(rejected) > len(result.poisoned_keys):
                    result = dataclasses.replace(result, poisoned_keys=tuple(rejected))
                return result
            return writer.given_up(
                self,
                started,
                TimeoutError(f"the store did not finish writing within {timeout}s"),
                rejected,
            )

    def _heartbeat(self) -> None:
        """Keeps the core's coarse clock (stamped on entries as they become pending) current."""
        self._set_clock(_now_ms())

    def _background_flush(self) -> Backoff | None:
        """One run of the writer thread; returns the backoff before the next run, if failing."""
        self._set_clock(_now_ms())
        self._batch_writer.flush(self, background=True)  # failures are logged with their keys
        if self.maxsize and len(self) > self.maxsize:
            self._pruner.wake()  # what was just written can be evicted now
        backoff = self._batch_writer.backoff()
        return Backoff(backoff) if backoff else None

    def _background_prune(self) -> None:
        """One run of the pruner thread. Never backs off: eviction needs no store."""
        self.prune()

    def prune(self) -> int:
        """Drops the expired clean entries, then evicts clean entries until the cache is back at
        maxsize; returns how many entries it removed. Run by the pruner."""
        self._set_clock(_now_ms())
        expired: int = self._expire()
        if not self.maxsize:
            return expired
        evicted = expired
        while True:
            excess = len(self) - self.maxsize
            if excess <= 0:
                break
            victims = self._evict(min(excess, 1024))
            if not victims:
                break  # the rest is pending: the writer must catch up first
            evicted += len(victims)
            on_evict = self.on_evict
            if on_evict is not None:  # outside the core's lock: the hook may use the cache
                for key, value in victims:
                    try:
                        on_evict(key, value)
                    except Exception:
                        pruner_log.exception(
                            "on_evict raised for %s (the entry is evicted all the same)",
                            safe_repr(key),
                            extra=log_extra([key]),
                        )
            del victims  # evicted values are released here, outside the core's lock
        return evicted

    def invalidate(self) -> FlushResult:
        """Flushes, then drops every entry from memory (the store keeps everything).

        If the flush fails, FlushError is raised and the entries that could not be written
        stay in memory, still pending: nothing unwritten is dropped.
        """
        result = self._batch_writer.flush(self)
        self._drop_clean()
        if not result.ok:
            raise FlushError(result)
        return result

    def clear_dirty(self) -> int:
        """Forgets every pending write not yet handed to the store; returns how many.

        Dangerous: those changes never reach the store, and the cache keeps values the
        store does not have. Writes already being saved are not recalled.
        """
        return self._clear_dirty()

    @property
    def write_errors(self) -> dict[Any, BaseException]:
        """Keys whose write the store rejected for good (the error path), with the exception.

        A key leaves this list when a later write of it succeeds.
        """
        return dict(self._batch_writer.write_errors)

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        now = _now_ms()
        self._set_clock(now)
        writer = self._batch_writer
        stamps = [
            s for s in (self._oldest_since(), writer.inflight_since) if s is not None and s >= 0
        ]
        hits, misses, sets, deletes, evictions, expirations = self._counters()
        return CacheStats(
            hits=hits,
            misses=misses,
            loads=self._loads,
            stores=sets,
            deletes=deletes,
            evictions=evictions,
            expirations=expirations,
            writes=writer.writes,
            failed_writes=writer.failed_writes,
            flushes=writer.flushes,
            retries=writer.retries,
            write_errors=len(writer.write_errors),
            size=len(self),
            pending=self.pending,
            oldest_pending_age=max(0, now - min(stamps)) / 1000 if stamps and self.pending else 0.0,
            last_flush_duration=writer.last_flush_duration,
            last_batch_size=writer.last_batch_size,
        )

    # ----------------------------------------------------------- lifecycle
    @property
    def closed(self) -> bool:
        return self._is_closed

    def close(self, flush: bool | None = None, timeout: float | None = None) -> FlushResult | None:
        """Refuses further writes, stops the threads and, unless told otherwise, flushes. Idempotent.

        With a timeout, returns or raises within it even if the store is down or hangs.
        Raises FlushError naming the keys not written; they stay in memory, and `flush()`
        may be called again.

        After close, reads are answered from memory only: a key memory holds is read as
        before, but a read that would go to the store (a miss with `read_through`) raises
        RuntimeError, as does every write and entering `with` again. `len`, iteration,
        `copy`, `stats`, `flush()` and `invalidate()` still work.
        """
        deadline = None if timeout is None else time.monotonic() + check_seconds("timeout", timeout)
        with self._close_lock:
            if self._is_closed:
                return None
            self._is_closed = True
        self._mark_closed()
        self._writer.stop(timeout)
        self._pruner.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))
        untrack(self)
        committed = False
        try:
            if not (self.flush_on_close if flush is None else flush):
                return None
            if deadline is None:
                result = self.flush()
            else:
                result = self.flush(timeout=max(deadline - time.monotonic(), 1e-3))
            committed = True
            return result
        finally:
            if self._journal is not None:
                # Unwritten writes stay journaled, for the next process to replay.
                self._journal.close(committed=committed and not self.pending)
            if self._coherence is not None:
                self._coherence.close()
            if self.owns_store:
                self.store.close()

    def _after_fork_in_child(self) -> None:
        """The parent writes what was pending at the fork; the child starts afresh with its own
        connections (the parent's are its server sessions: never used nor closed here).
        The caller then starts the child's threads (`_start_threads`)."""
        self._forget_pending()
        self._fork_release()
        self._batch_writer.reset_after_fork()
        self.store.after_fork_in_child()
        if self._journal is not None:
            self._journal.reopen_in_child()
        if self._coherence is not None:
            # The channel's subscription did not survive the fork: without it the child
            # cannot hear of other writers, so it keeps reading through to the store.
            # The channel lets go of the parent's connections first, so that nothing the
            # child does with it (close() included) reaches them.
            self._coherence.after_fork_in_child()
            self._batch_writer.coherence = self._coherence = None
            self._coherence_lost()
        self._loading = {}
        self._loading_lock = threading.Lock()
        self._close_lock = threading.Lock()

    def __enter__(self) -> Self:
        if self._is_closed:
            raise RuntimeError("the cache is closed: it cannot be used in a with block again")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(
            self, "_is_closed", True
        ):  # absent: __init__ failed before it, nothing to close
            close_collected(self)

    def __repr__(self) -> str:
        return (
            f"<LazyWriterCache ({self.implementation} core) size={len(self)} "
            f"pending={self.pending} store={self.store!r}>"
        )


_OPTIONS = frozenset(
    name for name in inspect.signature(_CacheLayer.__init__).parameters if name != "self"
)
"""The keywords LazyWriterCache (and AsyncLazyWriterCache) takes: `store` and the options."""


class _Wait:
    """The deadline of one write that backpressure holds back, shared by all of its waits."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline: float | None = None  # set at the first wait
