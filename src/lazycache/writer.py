"""Writing: how pending entries travel from the core to the store, and what happens when that fails.

One `BatchWriter` per cache. It takes batches from the core's dirty queue (oldest
first) and hands each to `Store.write` as one transaction. On failure:

* recoverable (`store.is_recoverable(exc)`: a lost connection, a deadlock): the
  batch goes back to the front of the queue, unless newer values replaced its
  entries, and the writer thread retries after an exponential backoff with
  jitter (`retry_initial` doubling up to `retry_max`). After `max_retries`
  consecutive failures (default: never) the entries take the error path.
* unrecoverable (a constraint violation, a value the store cannot encode): the
  batch is split in halves until the offending entries are isolated; everything
  else is committed, and each offending entry takes the error path.

The error path: `on_write_error(key, value, exc)` is called (default: log at
ERROR with the key), the entry is counted in `stats.failed_writes` and listed in
`cache.write_errors` until a later write of the key succeeds. The value stays
readable in the cache; it is not retried, and becomes evictable only after the
callback has returned.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ._sentinels import MISSING
from .serializers import SerializationError

if TYPE_CHECKING:
    from ._core import _Pending as Pending
    from .coherence import Coherence
    from .journal import Journal
    from .stores.base import Store

log = logging.getLogger("lazycache")

MergeGenerated = Callable[[Any, Mapping[str, Any], bool], Any]
"""merge(current_value, generated_fields, overwrite) -> value to keep in the cache."""

OnWriteError = Callable[[Any, Any, BaseException], None]
"""on_write_error(key, value, exception); value is lazycache.MISSING for a delete."""

_KEYS_IN_LOG = 20


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
    """Keys whose write failed for good and went to `on_write_error`."""
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
        cause = f": {result.errors[-1]!r}" if result.errors else ""
        if len(result.errors) > 1 and isinstance(result.errors[-1], TimeoutError):
            cause += f", after {result.errors[-2]!r}"  # the deadline, and the store error behind it
        super().__init__("; ".join(parts) + cause)


class BackpressureError(RuntimeError):
    """A write was refused because `max_pending` entries are already waiting for the store."""


def describe_keys(keys: list[Any]) -> str:
    shown = ", ".join(map(repr, keys[:_KEYS_IN_LOG]))
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


def log_write_error(key: Any, value: Any, exc: BaseException) -> None:
    """The default `on_write_error`: one ERROR line on the `lazycache` logger, naming the key."""
    what = "delete" if value is MISSING else "write"
    log.error(
        "lazycache: the store rejected the %s of %r; it will not be retried: %r", what, key, exc
    )


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class _Accumulator:
    """What one flush has done so far."""

    __slots__ = ("batches", "deleted", "errors", "incomplete", "poisoned", "written")

    def __init__(self) -> None:
        self.written = self.deleted = self.batches = 0
        self.poisoned: list[Any] = []
        self.errors: list[BaseException] = []
        self.incomplete = False  # something pending at the call was neither written nor rejected


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
        self.retry_initial = _check_seconds("retry_initial", retry_initial)
        self.retry_max = _check_seconds("retry_max", retry_max)
        if self.retry_max < self.retry_initial:
            raise ValueError(
                f"retry_max ({retry_max!r}) must not be less than retry_initial ({retry_initial!r})"
            )
        if max_retries is not None:
            if isinstance(max_retries, bool) or not isinstance(max_retries, int):
                raise TypeError(
                    f"max_retries must be None (unlimited) or an int, not {type(max_retries).__name__}"
                )
            if max_retries < 0:
                raise ValueError(
                    f"max_retries must be None (unlimited) or a non-negative integer, got {max_retries!r}"
                )
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
        # The store's error behind the current run of failures: a flush that times out
        # before its own attempt (another thread holds the writer) still reports the cause.
        self.last_store_error: BaseException | None = None
        self.last_flush_duration = 0.0
        self.last_batch_size = 0
        self.inflight_since: int | None = None
        self.write_errors: dict[Any, BaseException] = {}
        self.journal: Journal | None = None
        self.coherence: Coherence | None = None

    def reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        self.consecutive_failures = 0
        self.last_store_error = None
        self.inflight_since = None

    # ----------------------------------------------------------- policy
    def backoff(self) -> float:
        """Seconds to wait before retrying after the current run of failures (with jitter)."""
        if not self.consecutive_failures:
            return 0.0
        exponent = min(self.consecutive_failures - 1, 62)
        delay = min(self.retry_max, self.retry_initial * 2.0**exponent)
        return delay * random.uniform(0.5, 1.0)

    def _retries_exhausted(self) -> bool:
        return self.max_retries is not None and self.consecutive_failures > self.max_retries

    # ----------------------------------------------------------- flushing
    def flush(
        self, cache: Any, deadline: float | None = None, persist: bool = False
    ) -> FlushResult:
        """Writes every entry queued now, batch by batch.

        Stops at the first recoverable failure, unless `persist`, in which case it backs
        off and retries until `deadline` (time.monotonic()). Never raises for store errors.
        """
        started = time.monotonic()
        acc = _Accumulator()
        timeout = -1 if deadline is None else max(0.0, deadline - started)
        if not self.lock.acquire(timeout=timeout):
            return self._result(cache, acc, started, TimeoutError("another flush is still running"))
        try:
            # Every journaled change made before this point is queued now; once this pass
            # has written all of them, the segments holding them can go.
            covered = self.journal.rotate() if self.journal is not None else None
            todo = cache._queued
            while todo > 0:
                if deadline is not None and time.monotonic() >= deadline:
                    return self._result(cache, acc, started, TimeoutError("flush deadline passed"))
                batch = cache._take_batch(min(self.batch_size, todo))
                if not batch:
                    break
                todo -= len(batch)
                unwritten = self._write(cache, batch, acc)
                if not unwritten:
                    continue
                cache._requeue(unwritten)  # back to the front of the queue, in order
                self.retries += 1
                todo = cache._queued
                if not persist:
                    acc.incomplete = True
                    break
                pause = self.backoff()
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
            if covered is not None and not acc.incomplete:
                self.journal.release(covered)  # type: ignore[union-attr]
        finally:
            self.lock.release()
        return self._result(cache, acc, started)

    def given_up(self, cache: Any, started: float, error: BaseException) -> FlushResult:
        """The result of a flush abandoned at its deadline: every pending key failed, and why."""
        return self._result(cache, _Accumulator(), started, error)

    def _result(
        self, cache: Any, acc: _Accumulator, started: float, extra: BaseException | None = None
    ) -> FlushResult:
        if extra is not None:
            if not acc.errors and self.consecutive_failures and self.last_store_error is not None:
                acc.errors.append(self.last_store_error)
            acc.errors.append(extra)
            acc.incomplete = True
        failed = tuple(cache._pending_keys()) if acc.incomplete else ()
        duration = time.monotonic() - started
        if acc.batches:
            self.last_flush_duration = duration
        return FlushResult(
            acc.written,
            acc.deleted,
            acc.batches,
            failed,
            tuple(acc.poisoned),
            tuple(acc.errors),
            duration,
        )

    def _write(self, cache: Any, batch: list[Pending], acc: _Accumulator) -> list[Pending]:
        """Writes one batch, isolating poison; returns the entries to retry later, in order."""
        upserts = [(key, value) for key, value, _, _ in batch if value is not MISSING]
        deletes = [key for key, value, _, _ in batch if value is MISSING]
        self.inflight_since = cache._oldest_in(batch)
        try:
            generated = self.store.write(upserts, deletes)
        except Exception as exc:
            acc.errors.append(exc)
            self.last_store_error = exc
            self.failed_writes += len(batch)
            return self._handle_failure(cache, batch, acc, exc)
        finally:
            self.inflight_since = None
        if generated:
            self._merge_generated(cache, batch, generated)
        cache._commit(batch)
        self.consecutive_failures = 0
        self.last_store_error = None
        self.writes += len(batch)
        self.flushes += 1
        self.last_batch_size = len(batch)
        if self.write_errors:
            for key, _, _, _ in batch:
                self.write_errors.pop(key, None)
        if self.coherence is not None:
            try:
                self.coherence.publish([key for key, _, _, _ in batch])
            except Exception:
                log.exception(
                    "lazycache: publishing %d written keys on the coherence channel failed",
                    len(batch),
                )
        acc.written += len(upserts)
        acc.deleted += len(deletes)
        acc.batches += 1
        return []

    def _handle_failure(
        self, cache: Any, batch: list[Pending], acc: _Accumulator, exc: Exception
    ) -> list[Pending]:
        poison_key = exc.key if isinstance(exc, SerializationError) else MISSING
        recoverable = poison_key is MISSING and self.store.is_recoverable(exc)
        if recoverable:
            self.consecutive_failures += 1
            if not self._retries_exhausted():
                keys = [key for key, _, _, _ in batch]
                log.warning(
                    "lazycache: writing %d entries failed (attempt %d), retrying in the background: %s: %r",
                    len(keys),
                    self.consecutive_failures,
                    describe_keys(keys),
                    exc,
                )
                return batch
            self._poison(cache, batch, acc, exc)  # retries exhausted: report every entry
            return []
        if len(batch) == 1:
            self._poison(cache, batch, acc, exc)
            return []
        if poison_key is not MISSING:
            culprits = [item for item in batch if item[0] == poison_key]
            if culprits:
                self._poison(cache, culprits, acc, exc)
                rest = [item for item in batch if item[0] != poison_key]
                return self._write(cache, rest, acc) if rest else []
        half = len(batch) // 2
        left, right = batch[:half], batch[half:]
        unwritten = self._write(cache, left, acc)
        if unwritten:
            return unwritten + right  # the store went down: retry the rest later, in order
        return self._write(cache, right, acc)

    def _poison(
        self, cache: Any, items: list[Pending], acc: _Accumulator, exc: BaseException
    ) -> None:
        """The error path: tell the user about each entry, then let it go (still readable)."""
        for key, value, _, _ in items:
            self.write_errors[key] = exc
            acc.poisoned.append(key)
            try:
                self.on_write_error(key, value, exc)
            except Exception:
                log.exception(
                    "lazycache: on_write_error raised for %r (the entry was not written)", key
                )
        cache._commit(items)  # unpins the entries: they are no longer pending

    def _merge_generated(
        self, cache: Any, batch: list[Pending], generated: Mapping[Any, Mapping[str, Any]]
    ) -> None:
        merge = self.merge_generated
        for key, _value, entry, seq in batch:
            fields = generated.get(key)
            if not fields:
                continue
            current, changed = cache._current(entry, seq)
            if current is MISSING:
                continue
            try:
                merged = merge(current, fields, not changed)
            except Exception:
                log.exception("lazycache: merging store-generated fields into %r failed", key)
                continue
            if merged is not current:
                cache._swap_value(entry, current, merged)
