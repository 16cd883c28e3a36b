"""Flushing: how pending entries travel from the core to the store, one batch at a time."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Tuple

from ._sentinels import MISSING

if TYPE_CHECKING:
    from .cache import LazyWriterCache

log = logging.getLogger("lazycache")

MergeGenerated = Callable[[Any, Mapping[str, Any], bool], Any]
"""merge(current_value, generated_fields, overwrite) -> value to keep in the cache."""

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
    failed_keys: Tuple[Any, ...] = ()
    """Keys still pending after the flush because their batch failed."""
    errors: Tuple[BaseException, ...] = field(default=(), repr=False)
    """The exceptions raised by the store."""
    duration: float = 0.0
    """Seconds the flush took."""

    @property
    def ok(self) -> bool:
        return not self.errors


class FlushError(Exception):
    """A flush (explicit, or on close) could not write everything; `result.failed_keys` says what."""

    def __init__(self, result: FlushResult) -> None:
        self.result = result
        keys = ", ".join(map(repr, result.failed_keys[:_KEYS_IN_LOG]))
        more = len(result.failed_keys) - _KEYS_IN_LOG
        super().__init__(
            f"{len(result.failed_keys)} entries not written ({keys}{f', ... {more} more' if more > 0 else ''}): "
            f"{result.errors[0]!r}"
        )


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
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_replace"):
        return value._replace(**changes)
    for name, new in changes.items():
        setattr(value, name, new)
    return value


def describe_keys(keys: List[Any]) -> str:
    shown = ", ".join(map(repr, keys[:_KEYS_IN_LOG]))
    return f"{shown}, ... ({len(keys)} keys)" if len(keys) > _KEYS_IN_LOG else shown


def flush_pending(cache: "LazyWriterCache[Any, Any]") -> FlushResult:
    """Writes every entry queued now, batch by batch; stops at the first failed batch.

    The caller holds the cache's flush lock, so batches never overlap.
    """
    started = time.perf_counter()
    store = cache.store
    written = deleted = batches = 0
    failed: List[Any] = []
    errors: List[BaseException] = []
    todo = cache._queued
    while todo > 0:
        batch = cache._take_batch(min(cache.batch_size, todo))
        if not batch:
            break
        todo -= len(batch)
        upserts = [(key, value) for key, value, _, _ in batch if value is not MISSING]
        deletes = [key for key, value, _, _ in batch if value is MISSING]
        try:
            generated = store.write(upserts, deletes)
        except Exception as exc:
            cache._requeue(batch)
            cache._failed_writes += len(batch)
            keys = [key for key, _, _, _ in batch]
            log.error("lazycache: writing %d entries failed, they stay pending: %s: %r", len(keys), describe_keys(keys), exc)
            failed.extend(cache._pending_keys())
            errors.append(exc)
            break
        if generated:
            _merge_generated(cache, batch, generated)
        cache._commit(batch)
        cache._writes += len(batch)
        cache._flushes += 1
        written += len(upserts)
        deleted += len(deletes)
        batches += 1
    return FlushResult(written, deleted, batches, tuple(failed), tuple(errors), time.perf_counter() - started)


def _merge_generated(cache: "LazyWriterCache[Any, Any]", batch: list, generated: Mapping[Any, Mapping[str, Any]]) -> None:
    merge = cache.merge_generated
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
