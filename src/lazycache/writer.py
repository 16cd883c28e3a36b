"""Writing: how pending entries travel from the core to the store, and what happens when that fails.

One `BatchWriter` per cache. It takes batches from the core's dirty queue (oldest
first) and hands each to `Store.write` as one transaction. A batch is worked through
as a list of chunks (never by recursion: a batch full of bad values costs work in
proportion to the batch). On failure:

* recoverable (`store.is_recoverable(exc)`: a lost connection, a deadlock): the
  batch goes back to the front of the queue, unless newer values replaced its
  entries, and the writer thread retries after an exponential backoff with
  jitter (`retry_initial` doubling up to `retry_max`). After `max_retries`
  consecutive failures (default: never) the entries take the error path.
* recoverable, but only for one entry (a value larger than MariaDB's
  max_allowed_packet makes the server drop the connection): after _PROBE_AFTER
  failed rounds in a row (with max_retries, from the last two rounds before it
  gives up) a round sends one half of the batch instead of the whole, the other
  half first in the next round, so an outage still costs one call a round. Once a
  chunk is committed the store is known to be up, and failing chunks are split
  like poison (failures allowed only in proportion to the chunks committed: an
  outage that starts mid-round is not split down to single entries) until the
  entry that fails alone is isolated. That entry, a *suspect*, stays pending and
  is tried alone, with its own backoff in the writer thread (once per explicit
  flush), while everything else flows; after max_retries failures (counting the
  failed rounds of its batch) it takes the error path, and with unlimited retries
  it stays pending until the store takes it. A new value of the key is not suspect.
* unrecoverable (a constraint violation, a value the store cannot encode): the
  batch is split in halves until the offending entries are isolated; everything
  else is committed, and each offending entry takes the error path. A
  SerializationError names its entry, isolated at once; if the store encodes with
  a lazycache `Serializer` (its `serializer` attribute), every value of the chunk is
  checked with it then, so that many bad values cost two calls, not one each.

The error path: `on_write_error(key, value, exc)` is called (default: log at
ERROR with the key), the entry is counted in `stats.failed_writes` and listed in
`cache.write_errors` until a later write of the key succeeds. The value stays
readable in the cache; it is not retried, and becomes evictable only after the
callback has returned. A key whose hash or eq raises takes it too (it cannot be
listed in write_errors: a line says so); a repr that raises is replaced by a
placeholder in every report.

Nothing taken from the queue is lost: whatever raises while a batch is written, its
entries are committed, reported or put back, and an unexpected exception fails the
flush (a BaseException that is no Exception is re-raised after). A flush reports
success only if the core agrees: nothing left in flight, nothing pending in a closed cache.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ._checks import check_int_or_none, check_seconds
from ._pacing import sharing
from ._sentinels import MISSING
from .metrics import BATCH_SIZE_BUCKETS, FLUSH_DURATION_BUCKETS, Histogram
from .serializers import SerializationError, Serializer
from .stores.base import ttl_writer

if TYPE_CHECKING:
    from ._contracts import Flushable
    from ._core import _Pending as Pending
    from .coherence import Coherence
    from .journal import Journal
    from .stores.base import Store

BACKGROUND_SHARE = 0.25
"""The share of the wall clock a routine background batch may work for (see `lazycache._pacing`):
the writer thread's batch when the backlog fits in it and writers are not near max_pending.
A backlog, a flush someone waits for and a cache near max_pending go at full speed."""

log = logging.getLogger("lazycache.writer")

MergeGenerated = Callable[[Any, Mapping[str, Any], bool], Any]
"""merge(current_value, generated_fields, overwrite) -> value to keep in the cache."""

OnWriteError = Callable[[Any, Any, BaseException], None]
"""on_write_error(key, value, exception); value is lazycache.MISSING for a delete."""

OnFlush = Callable[["FlushResult"], None]
"""on_flush(result): called after each flush that wrote, failed or rejected something."""

_KEYS_IN_LOG = 20

_PROBE_AFTER = 4
"""Failed rounds in a row after which a batch failing recoverably is probed by halves."""


@dataclass(frozen=True)
class FlushResult:
    """What one `flush()` did."""

    written: int = 0
    """Upserts committed."""
    deleted: int = 0
    """Deletes committed."""
    batches: int = 0
    """Batches (transactions) committed."""
    failed_keys: tuple[Any, ...] = ()
    """Keys still pending after the flush (their batch failed, or the deadline passed)."""
    poisoned_keys: tuple[Any, ...] = ()
    """Keys whose write failed for good and went to `on_write_error` between the call and its
    return, whichever flush wrote them (the writer thread's, or another caller's)."""
    errors: tuple[BaseException, ...] = field(default=(), repr=False)
    """The exceptions raised by the store; a flush that hit its deadline ends with a TimeoutError."""
    duration: float = 0.0
    """Seconds the flush took."""

    @property
    def ok(self) -> bool:
        """Everything pending at the time of the call reached the store."""
        return not self.failed_keys and not self.poisoned_keys


class FlushError(Exception):
    """A flush (explicit, or on close) could not write everything; `result` says exactly what."""

    def __init__(self, result: FlushResult) -> None:
        self.result = result
        parts = []
        if result.failed_keys:
            parts.append(
                f"{len(result.failed_keys)} entries still pending ({describe_keys(list(result.failed_keys))})"
            )
        if result.poisoned_keys:
            parts.append(
                f"{len(result.poisoned_keys)} rejected ({describe_keys(list(result.poisoned_keys))})"
            )
        cause = f": {safe_repr(result.errors[-1])}" if result.errors else ""
        if len(result.errors) > 1 and isinstance(result.errors[-1], TimeoutError):
            cause += f", after {safe_repr(result.errors[-2])}"  # the deadline, and the store error behind it
        super().__init__("; ".join(parts) + cause)


class BackpressureError(RuntimeError):
    """A write was refused because `max_pending` entries are already waiting for the store."""


def safe_repr(obj: Any) -> str:
    """repr(obj), or a description of it if its __repr__ raises: a report must not fail on it."""
    try:
        return repr(obj)
    except Exception as exc:
        return f"<{type(obj).__qualname__} object at {id(obj):#x} (its repr raised {type(exc).__name__})>"


def describe_keys(keys: list[Any]) -> str:
    shown = ", ".join(map(safe_repr, keys[:_KEYS_IN_LOG]))
    more = len(keys) - _KEYS_IN_LOG
    return f"{shown}, ... and {more} more" if more > 0 else shown


def merge_fields(value: Any, generated: Mapping[str, Any], overwrite: bool) -> Any:
    """Default merge of store-generated fields into a cached value.

    Mappings get the fields as items, other objects as attributes (frozen dataclasses
    and named tuples are replaced by an updated copy). With `overwrite` false (the value
    changed after the batch was taken), only fields the value lacks or holds as None are set.
    """

    def wanted(current: Any) -> bool:
        return overwrite or current is None

    if isinstance(value, MutableMapping):
        for name, new in generated.items():
            if wanted(value.get(name)):
                value[name] = new
        return value
    changes = {name: new for name, new in generated.items() if wanted(getattr(value, name, None))}
    if not changes:
        return value
    if (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and value.__dataclass_params__.frozen  # type: ignore[attr-defined]
    ):
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_replace"):
        return value._replace(**changes)
    for name, new in changes.items():
        setattr(value, name, new)
    return value


def log_extra(keys: list[Any] | None = None, count: int | None = None) -> dict[str, Any]:
    """The `extra` of a log record about entries: their keys and how many, for structured logging."""
    extra: dict[str, Any] = {}
    if keys is not None:
        extra["lazycache_keys"] = keys
        extra["lazycache_count"] = len(keys) if count is None else count
    elif count is not None:
        extra["lazycache_count"] = count
    return extra


def log_write_error(key: Any, value: Any, exc: BaseException) -> None:
    """The default `on_write_error`: one ERROR line on the `lazycache.writer` logger, naming the key."""
    what = "delete" if value is MISSING else "write"
    log.error(
        "the store rejected the %s of %s; it will not be retried: %s",
        what,
        safe_repr(key),
        safe_repr(exc),
        extra=log_extra([key]),
    )


class _Accumulator:
    """What one flush has done so far."""

    __slots__ = ("batches", "deferred", "deleted", "errors", "incomplete", "poisoned", "written")

    def __init__(self, poisoned: list[Any] | None = None) -> None:
        self.written = self.deleted = self.batches = 0
        # Every key rejected while the flush runs, by it or by another flush (see BatchWriter.watching).
        self.poisoned: list[Any] = [] if poisoned is None else poisoned
        self.errors: list[BaseException] = []
        self.incomplete = False  # something pending at the call was neither written nor rejected
        # Suspects put back in this flush: taken again (they are at the front of the queue),
        # they go straight back, so that the flush moves on to the entries behind them.
        self.deferred: set[Any] = set()


class _Suspect:
    """An entry whose write kept failing recoverably while the entries around it were written."""

    __slots__ = ("failures", "not_before", "seq")

    def __init__(self, seq: int, failures: int, not_before: float) -> None:
        self.seq = seq  # the version that failed: a new value of the key is not suspect
        self.failures = failures
        self.not_before = not_before  # time.monotonic() before which the writer thread leaves it


class _Round:
    """The state of one attempt at writing a batch: what is settled, what is still held."""

    __slots__ = ("back", "batch", "current", "failures", "lone", "successes", "work")

    def __init__(
        self, batch: list[Pending], work: list[list[Pending]], lone: list[Pending]
    ) -> None:
        self.batch = batch
        self.work = work  # chunks still to try: a stack, the next one last
        self.lone = lone  # suspects to try one by one after the rest, next one first
        self.current: list[Pending] | None = None  # the chunk being tried
        self.back: list[Pending] = []  # entries to put back in the queue
        self.successes = 0  # chunks committed in this round: the store is up
        self.failures = 0  # recoverable failures in this round

    def held(self) -> list[Pending]:
        """The entries to write together that are neither committed nor in `back` yet."""
        held = list(self.current or ())
        for chunk in self.work:
            held += chunk
        return _in_order(self.batch, held)


def _near_full(cache: Flushable) -> bool:
    """Whether half of max_pending is pending: writers may soon wait for the writer."""
    limit = cache.max_pending
    return limit is not None and cache.pending * 2 >= limit


class BatchWriter:
    """Flushes one cache's pending entries to its store, with retries and poison isolation."""

    def __init__(
        self,
        store: Store[Any, Any],
        *,
        batch_size: int,
        merge_generated: MergeGenerated,
        on_write_error: OnWriteError,
        retry_initial: float,
        retry_max: float,
        max_retries: int | None,
    ) -> None:
        if not callable(merge_generated):
            raise TypeError("merge_generated must be callable")
        if not callable(on_write_error):
            raise TypeError("on_write_error must be callable")
        self.retry_initial = check_seconds("retry_initial", retry_initial)
        self.retry_max = check_seconds("retry_max", retry_max)
        if self.retry_max < self.retry_initial:
            raise ValueError(
                f"retry_max ({retry_max!r}) must not be less than retry_initial ({retry_initial!r})"
            )
        check_int_or_none("max_retries", max_retries, minimum=0)  # None: unlimited
        self.store = store
        self.batch_size = batch_size
        self.merge_generated = merge_generated
        self.on_write_error = on_write_error
        self.max_retries = max_retries
        # One batch at a time, in queue order; re-entrant so that on_write_error may flush.
        self.lock = threading.RLock()
        self.writes = 0
        self.failed_writes = 0
        self.flushes = 0
        self.retries = 0
        self.consecutive_failures = 0
        self.outage_since: float | None = None  # time.monotonic() of the first failed attempt
        # The store's error behind the current run of failures: a flush that times out
        # before its own attempt (another thread holds the writer) still reports the cause.
        self.last_store_error: BaseException | None = None
        self.last_flush_duration = 0.0
        self.last_batch_size = 0
        # For the metrics exporters: every flush that wrote something, every batch committed.
        self.flush_durations = Histogram(FLUSH_DURATION_BUCKETS)
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        self.on_flush: OnFlush | None = None
        self.inflight_since: int | None = None
        self.write_errors: dict[Any, BaseException] = {}
        # Entries isolated by a recoverable failure that their neighbours did not share,
        # by the core's handle of the entry (Pending[2]): tried alone, with their own backoff.
        self.suspects: dict[Any, _Suspect] = {}
        self.journal: Journal | None = None
        self.coherence: Coherence | None = None
        # The rejected-key lists of the flushes running now (see `watching`).
        self._watchers: list[list[Any]] = []
        self._watchers_lock = threading.Lock()

    def reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        self._watchers = []
        self._watchers_lock = threading.Lock()
        self.consecutive_failures = 0
        self.outage_since = None
        self.last_store_error = None
        self.inflight_since = None
        self.suspects = {}

    # ----------------------------------------------------------- policy
    def backoff(self) -> float:
        """Seconds to wait before retrying after the current run of failures (with jitter)."""
        return self._backoff(self.consecutive_failures)

    def _backoff(self, failures: int) -> float:
        if not failures:
            return 0.0
        exponent = min(failures - 1, 62)
        delay = min(self.retry_max, self.retry_initial * 2.0**exponent)
        return delay * random.uniform(0.5, 1.0)

    def _probe_from(self) -> int:
        """After how many failed rounds in a row a batch is probed by halves (at least one).

        Late enough that a store that is briefly down costs one call a round and takes the
        batch whole when it is back; early enough that both halves are tried before
        max_retries gives the batch up.
        """
        if self.max_retries is None:
            return _PROBE_AFTER
        return max(1, min(_PROBE_AFTER, self.max_retries - 1))

    def _exhausted(self, failures: int) -> bool:
        return self.max_retries is not None and failures > self.max_retries

    def _is_recoverable(self, exc: BaseException) -> bool:
        try:
            return bool(self.store.is_recoverable(exc))
        except Exception:
            # A broken classifier must not send data to the error path: retry (max_retries bounds it).
            log.exception("%r.is_recoverable raised; the failure is retried", self.store)
            return True

    # ----------------------------------------------------------- flushing
    @contextmanager
    def watching(self) -> Iterator[list[Any]]:
        """A list that receives every key rejected for good (the error path) while the block runs,
        whichever flush rejected it.

        A flush watches from its call to its return: one that waited for the writer's lock
        while another flush rejected an entry pending at its call must report that entry
        too, though it never saw it (nothing is left in the queue for it).
        """
        rejected: list[Any] = []
        with self._watchers_lock:
            self._watchers.append(rejected)
        try:
            yield rejected
        finally:
            with self._watchers_lock:
                self._watchers = [other for other in self._watchers if other is not rejected]

    def flush(
        self,
        cache: Flushable,
        deadline: float | None = None,
        persist: bool = False,
        background: bool = False,
    ) -> FlushResult:
        """Writes every entry queued now, batch by batch.

        Stops at the first recoverable failure, unless `persist`, in which case it backs
        off and retries until `deadline` (time.monotonic()). Never raises for store errors.
        `background` (the writer thread): suspects are tried only once their backoff is over.
        Its `poisoned_keys` are every key rejected from the call to the return, by this
        flush or a concurrent one (see `watching`).
        Then calls `on_flush` (with the writer's lock released) unless the flush did nothing.
        """
        with self.watching() as rejected:
            result = self._flush(cache, deadline, persist, background, rejected)
        on_flush = self.on_flush
        if on_flush is not None and (
            result.batches or result.failed_keys or result.poisoned_keys or result.errors
        ):
            try:
                on_flush(result)
            except Exception:
                log.exception("on_flush raised (the flush itself is done)")
        return result

    def _flush(
        self,
        cache: Flushable,
        deadline: float | None,
        persist: bool,
        background: bool,
        rejected: list[Any],
    ) -> FlushResult:
        started = time.monotonic()
        acc = _Accumulator(rejected)
        timeout = -1 if deadline is None else max(0.0, deadline - started)
        if not self.lock.acquire(timeout=timeout):
            return self._result(cache, acc, started, TimeoutError("another flush is still running"))
        try:
            # Every journaled change made before this point is queued now; once this pass
            # has written all of them, the segments holding them can go.
            journal = self.journal
            covered = journal.rotate() if journal is not None else None
            todo = cache._queued
            while todo > 0:
                if deadline is not None and time.monotonic() >= deadline:
                    return self._result(cache, acc, started, TimeoutError("flush deadline passed"))
                # Suspects put back in this pass sit at the front of the queue: take them
                # too, so that each batch still holds up to batch_size entries to write.
                batch = cache._take_batch(min(self.batch_size, todo) + len(acc.deferred))
                if not batch:
                    break
                # A routine batch spreads its work out, so that a request served meanwhile
                # meets it in small pieces rather than all at once.
                routine = background and todo <= self.batch_size and not _near_full(cache)
                with sharing(BACKGROUND_SHARE if routine else 1.0):
                    unwritten, down, seen = self._write(cache, batch, acc, background)
                todo -= len(batch) - seen
                if unwritten:
                    cache._requeue(unwritten)  # back to the front of the queue, in order
                    acc.incomplete = True
                if not down:
                    if seen == len(batch):
                        break  # only suspects already put back in this pass are left
                    continue
                self.retries += 1
                todo = cache._queued
                if not persist:
                    break
                acc.deferred.clear()  # after the backoff, suspects get another try too
                pause = self.backoff()
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
            if self._orphans(cache):
                acc.incomplete = True
            if journal is not None and covered is not None and not acc.incomplete:
                journal.release(covered)
            if self.suspects and not cache.pending:
                self.suspects.clear()  # records of entries forgotten (clear_dirty) go too
        finally:
            self.lock.release()
        return self._result(cache, acc, started)

    def _orphans(self, cache: Flushable) -> bool:
        """Whether an entry is still in flight though no batch is (the writer's lock is held).

        Such an entry was neither committed nor put back: a bug, or a core operation that
        raised half way. The flush must not report success then. A setter may be between
        counting an entry pending and queueing it, so only a difference that lasts counts.
        """
        for _ in range(3):
            if cache.pending <= cache._queued:
                return False
            time.sleep(0)
        log.error(
            "%d entries are in flight though no batch is being written; "
            "they are reported as not written",
            cache.pending - cache._queued,
            extra=log_extra(count=cache.pending - cache._queued),
        )
        return True

    def given_up(
        self, cache: Flushable, started: float, error: BaseException, rejected: list[Any]
    ) -> FlushResult:
        """The result of a flush abandoned at its deadline: every pending key failed, and why;
        `rejected`: the keys rejected since its call (from `watching`)."""
        return self._result(cache, _Accumulator(rejected), started, error)

    def _result(
        self,
        cache: Flushable,
        acc: _Accumulator,
        started: float,
        extra: BaseException | None = None,
    ) -> FlushResult:
        if extra is not None:
            if not acc.errors and self.consecutive_failures and self.last_store_error is not None:
                acc.errors.append(self.last_store_error)
            acc.errors.append(extra)
            acc.incomplete = True
        if not acc.incomplete and cache.closed and cache.pending:
            # Nothing can change a closed cache: anything pending now was not written.
            acc.incomplete = True
        failed = tuple(cache._pending_keys()) if acc.incomplete else ()
        duration = time.monotonic() - started
        if acc.batches:
            self.last_flush_duration = duration
            self.flush_durations.observe(duration)
        return FlushResult(
            acc.written,
            acc.deleted,
            acc.batches,
            failed,
            tuple(acc.poisoned),
            tuple(acc.errors),
            duration,
        )

    def _write(
        self, cache: Flushable, batch: list[Pending], acc: _Accumulator, background: bool
    ) -> tuple[list[Pending], bool, int]:
        """Writes one batch, isolating poison and suspects.

        Returns (the entries to put back, in queue order; whether the store looks down, so
        that the flush should stop or back off; how many entries were suspects already put
        back in this flush). Whatever raises, every entry taken is committed, reported or
        put back: an unexpected exception is put back with its batch and reported as a
        failure of the flush (a BaseException that is not an Exception is re-raised).
        """
        regular, lone, back = self._sort_out_suspects(batch, acc, background)
        seen = len(back)
        started_failing = self.consecutive_failures  # failed rounds before this one
        work: list[list[Pending]] = []
        probe_from = self._probe_from()
        probing = started_failing >= probe_from and len(regular) > 1
        if probing:
            # The batch keeps failing: send a half instead of the whole, so that an entry
            # the store chokes on cannot keep its neighbours out for ever (see the module
            # docstring). Each round starts with the other half: one call a round still.
            half = len(regular) // 2
            first, second = regular[:half], regular[half:]
            if started_failing % 2 == 0:
                first, second = second, first
            work = [second, first]
        elif regular:
            work = [regular]
        # Failures with nothing committed yet that the round may take before it calls the
        # store down: one, except at the last try before max_retries hands the batch to the
        # error path, where both halves get their chance (unless the previous round, a
        # probe too, tried the other half).
        blind = 1
        if (
            len(regular) > 1
            and self._exhausted(started_failing + 1)
            and started_failing - 1 < probe_from
        ):
            blind = 2 if probing else 3
        state = _Round(batch, work, lone)
        state.back = back
        try:
            down = self._isolate(cache, state, acc, started_failing, blind)
            if not down:
                self._try_suspects(cache, state, acc, started_failing)
        except BaseException as exc:
            state.back += state.held() + state.lone
            state.current = None
            state.work = []
            state.lone = []
            if not isinstance(exc, Exception):
                cache._requeue(_in_order(batch, state.back))
                raise
            log.exception(
                "unexpected error while writing %d entries; they stay pending",
                len(batch),
                extra=log_extra([key for key, _, _, _ in batch]),
            )
            acc.errors.append(exc)
            self.consecutive_failures += 1
            return _in_order(batch, state.back), True, seen
        return _in_order(batch, state.back), down, seen

    def _sort_out_suspects(
        self, batch: list[Pending], acc: _Accumulator, background: bool
    ) -> tuple[list[Pending], list[Pending], list[Pending]]:
        """(entries to write together, suspects to try alone now, suspects to put back untried)."""
        suspects = self.suspects
        if not suspects:
            return batch, [], []
        regular: list[Pending] = []
        lone: list[Pending] = []
        back: list[Pending] = []
        now = time.monotonic()
        for item in batch:
            handle = item[2]
            record = suspects.get(handle)
            if record is not None and record.seq != item[3]:
                del suspects[handle]  # a newer value: not suspect
                acc.deferred.discard(handle)
                record = None
            if record is None:
                regular.append(item)
            elif handle in acc.deferred or (background and now < record.not_before):
                back.append(item)
                acc.deferred.add(handle)
            else:
                lone.append(item)
        return regular, lone, back

    def _isolate(
        self, cache: Flushable, state: _Round, acc: _Accumulator, started_failing: int, blind: int
    ) -> bool:
        """Writes the chunks of `state.work`, splitting failing ones; True if the store looks down."""
        work = state.work
        while work:
            items = state.current = work.pop()
            exc = self._attempt(cache, state, acc)
            if exc is None:
                state.successes += 1
                continue
            poison_key = exc.key if isinstance(exc, SerializationError) else MISSING
            if poison_key is not MISSING or not self._is_recoverable(exc):
                # The data's fault: isolate the entries the store rejects, write the rest.
                if len(items) > 1 and poison_key is not MISSING:
                    culprits = self._culprits(items, poison_key, exc)
                    if culprits:
                        rest = [item for item in items if id(item) not in culprits]
                        if rest:
                            work.append(rest)
                        state.current = None
                        bad = [(item, culprits[id(item)]) for item in items if id(item) in culprits]
                        self._poison(cache, bad, acc)
                        continue
                if len(items) > 1:
                    _split(work, items)
                    state.current = None
                    continue
                state.current = None
                self._poison(cache, [(items[0], exc)], acc)
                continue
            state.failures += 1
            if state.successes:
                # The store took other chunks of this round: the failure follows the data.
                # A budget in proportion to what was written keeps an outage that starts
                # now from splitting everything down to single entries.
                if state.failures <= 2 * state.successes + 2:
                    state.current = None
                    if len(items) > 1:
                        _split(work, items)
                    else:
                        self._suspect(cache, state, acc, items[0], started_failing + 1, exc)
                    continue
            elif state.failures < blind and work:
                # The last try before the error path: try the other half before calling it an
                # outage; if it succeeds, this chunk is split after it.
                state.current = None
                sibling = work.pop()
                if len(items) > 1:
                    _split(work, items)
                else:
                    work.append(items)
                work.append(sibling)
                continue
            elif state.failures < blind:
                state.current = None
                _split(work, items)
                continue
            return self._outage(cache, state, acc, exc)
        return False

    def _outage(
        self, cache: Flushable, state: _Round, acc: _Accumulator, exc: BaseException
    ) -> bool:
        """A recoverable failure with no sign that the store is up: retry later, or give up."""
        self.consecutive_failures += 1
        held = state.held()
        state.current = None
        state.work.clear()
        state.back += state.lone  # suspects are not tried while the store looks down
        state.lone = []
        if self._exhausted(self.consecutive_failures):
            self._poison(cache, [(item, exc) for item in held], acc)
            return False
        self.failed_writes += len(held)
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        attempt = self.consecutive_failures
        # A store that stays down is not one WARNING per attempt: the first failure, then a
        # summary each time the count of attempts doubles (the rest at DEBUG).
        log.log(
            logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG,
            "writing %d entries failed (attempt %d, failing for %.1fs), retrying in the "
            "background: %s: %s",
            len(held),
            attempt,
            now - self.outage_since,
            describe_keys([key for key, _, _, _ in held]),
            safe_repr(exc),
            extra=log_extra([key for key, _, _, _ in held]),
        )
        state.back += held
        return True

    def _try_suspects(
        self, cache: Flushable, state: _Round, acc: _Accumulator, started_failing: int
    ) -> None:
        """Tries each suspect alone: written, rejected for good, or put back with its own backoff."""
        while state.lone:
            item = state.lone.pop(0)
            state.current = [item]
            exc = self._attempt(cache, state, acc)
            if exc is None:
                self.suspects.pop(item[2], None)
                continue
            state.current = None
            if isinstance(exc, SerializationError) or not self._is_recoverable(exc):
                self.suspects.pop(item[2], None)
                self._poison(cache, [(item, exc)], acc)
                continue
            record = self.suspects.get(item[2])
            failures = (record.failures if record is not None else started_failing) + 1
            self._suspect(cache, state, acc, item, failures, exc)

    def _suspect(
        self,
        cache: Flushable,
        state: _Round,
        acc: _Accumulator,
        item: Pending,
        failures: int,
        exc: BaseException,
    ) -> None:
        """An entry that failed alone while others were written: error path, or back with a backoff."""
        key = item[0]
        if self._exhausted(failures):
            self.suspects.pop(item[2], None)
            self._poison(cache, [(item, exc)], acc)
            return
        self.failed_writes += 1
        pause = self._backoff(failures)
        self.suspects[item[2]] = _Suspect(item[3], failures, time.monotonic() + pause)
        acc.deferred.add(item[2])
        state.back.append(item)
        log.warning(
            "the write of %s failed again while other entries were written "
            "(attempt %d); it is retried alone in %.1fs: %s",
            safe_repr(key),
            failures,
            pause,
            safe_repr(exc),
            extra=log_extra([key]),
        )

    def _attempt(self, cache: Flushable, state: _Round, acc: _Accumulator) -> BaseException | None:
        """One call of Store.write with `state.current`; commits it and returns None, or returns the error."""
        items = state.current
        assert items is not None
        upserts = [(key, value) for key, value, _, _ in items if value is not MISSING]
        deletes = [key for key, value, _, _ in items if value is MISSING]
        self.inflight_since = cache._oldest_in(items)
        ttls = cache._store_ttls(items)  # None unless the store keeps TTLs and some apply
        ttl_store = None if ttls is None else ttl_writer(self.store)
        try:
            if ttl_store is None:
                generated = self.store.write(upserts, deletes)
            else:
                generated = ttl_store.write(upserts, deletes, ttls=ttls)
        except Exception as exc:
            acc.errors.append(exc)
            self.last_store_error = exc
            return exc
        finally:
            self.inflight_since = None
        if generated:
            self._merge_generated(cache, items, generated)
        if self.write_errors:
            # Before the commit: once a key is no longer pending, it must not be listed as failed.
            for key, _, _, _ in items:
                try:
                    self.write_errors.pop(key, None)
                except Exception:  # a key whose hash or eq raises cannot be listed anyway
                    pass
        state.current = None  # settled from here on: never put back, even if commit raises
        cache._commit(items)
        if self.outage_since is not None:
            log.warning(
                "the store is back after %.1fs and %d failed attempts; wrote %d entries",
                time.monotonic() - self.outage_since,
                self.consecutive_failures,
                len(items),
                extra=log_extra([key for key, _, _, _ in items]),
            )
            self.outage_since = None
        self.consecutive_failures = 0
        self.last_store_error = None
        self.writes += len(items)
        self.flushes += 1
        self.last_batch_size = len(items)
        self.batch_sizes.observe(len(items))
        if self.coherence is not None:
            try:
                self.coherence.publish([key for key, _, _, _ in items])
            except Exception:
                log.exception(
                    "publishing %d written keys on the coherence channel failed",
                    len(items),
                    extra=log_extra([key for key, _, _, _ in items]),
                )
        acc.written += len(upserts)
        acc.deleted += len(deletes)
        acc.batches += 1
        return None

    def _culprits(
        self, items: list[Pending], key: Any, exc: BaseException
    ) -> dict[int, BaseException]:
        """The entries of `items` a SerializationError condemns, by id(): the one it names and,
        if the store encodes with a lazycache Serializer, every other value that fails to encode,
        so that a batch with many bad values costs two store calls, not one per bad value."""
        named = [item for item in items if item[0] is key]
        if not named:
            named = [item for item in items if _same_key(item[0], key)]
        if not named:
            return {}
        culprits: dict[int, BaseException] = {id(item): exc for item in named}
        serializer = getattr(self.store, "serializer", None)
        if isinstance(serializer, Serializer):
            for item in items:
                if item[1] is MISSING or id(item) in culprits:
                    continue
                try:
                    serializer.encode(item[0], item[1])
                except Exception as error:  # SerializationError, or the key's repr raising in it
                    culprits[id(item)] = error
        return culprits

    def _poison(
        self, cache: Flushable, rejected: list[tuple[Pending, BaseException]], acc: _Accumulator
    ) -> None:
        """The error path: tell the user about each entry, then let it go (still readable)."""
        self.failed_writes += len(rejected)
        try:
            for (key, value, _, _), exc in rejected:
                with self._watchers_lock:  # acc.poisoned is one of them
                    for watcher in self._watchers:
                        watcher.append(key)
                try:
                    self.write_errors[key] = exc
                except Exception as error:
                    log.error(
                        "the write of %s failed for good, and the key cannot be listed "
                        "in write_errors (it raised %s): %s",
                        safe_repr(key),
                        safe_repr(error),
                        safe_repr(exc),
                        extra=log_extra([key]),
                    )
                try:
                    self.on_write_error(key, value, exc)
                except Exception:
                    log.exception(
                        "on_write_error raised for %s (the entry was not written)",
                        safe_repr(key),
                        extra=log_extra([key]),
                    )
        finally:
            # Unpins the entries: they are no longer pending. In a finally: whatever raised
            # above, they must not stay in flight, neither written nor put back.
            cache._commit([item for item, _ in rejected])

    def _merge_generated(
        self, cache: Flushable, batch: list[Pending], generated: Mapping[Any, Mapping[str, Any]]
    ) -> None:
        merge = self.merge_generated
        for key, _value, entry, seq in batch:
            try:
                fields = generated.get(key)
            except Exception:  # a key whose hash or eq raises: its value keeps what it has
                log.exception("looking up the generated fields of %s failed", safe_repr(key))
                continue
            if not fields:
                continue
            current, changed = cache._current(entry, seq)
            if current is MISSING:
                continue
            try:
                merged = merge(current, fields, not changed)
            except Exception:
                log.exception("merging store-generated fields into %s failed", safe_repr(key))
                continue
            if merged is not current:
                cache._swap_value(entry, current, merged)


def _split(work: list[list[Pending]], items: list[Pending]) -> None:
    """Pushes the halves of `items` on the work stack, the first half on top."""
    half = len(items) // 2
    work.append(items[half:])
    work.append(items[:half])


def _in_order(batch: list[Pending], items: list[Pending]) -> list[Pending]:
    """`items` (entries of `batch`) in their order in `batch`: the queue's order is kept."""
    if len(items) < 2:
        return items
    position = {id(item): n for n, item in enumerate(batch)}
    return sorted(items, key=lambda item: position[id(item)])


def _same_key(a: Any, b: Any) -> bool:
    """a == b, where an __eq__ that raises means not equal."""
    try:
        return bool(a == b)
    except Exception:
        return False
