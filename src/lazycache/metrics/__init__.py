"""Metrics of lazycache caches for monitoring systems, read from `cache.stats` when scraped.

The exporters read each cache's `stats` (and its two histograms) at collection time, so
the cache's hot path carries no instrumentation:

* `lazycache.metrics.prometheus`: a `prometheus_client` collector (extra `prometheus`).
* `lazycache.metrics.otel`: OpenTelemetry observable instruments (extra `opentelemetry`).

This module itself imports neither library: it holds the histograms the writer records
(flush durations and batch sizes) and the names the exporters share.
"""

from __future__ import annotations

import bisect
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from ..stats import CacheStats

log = logging.getLogger("lazycache.metrics")

FLUSH_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of the flush duration histogram's buckets."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
)  # fmt: skip
"""Upper bounds (entries) of the batch size histogram's buckets."""


class Histogram:
    """Counts of observed values by bucket, with their sum: what a flush or a batch measured.

    Recorded by the writer (never on the cache's hot path); read by the exporters.
    `listeners` are called with each value (the OpenTelemetry exporter records through one);
    one that raises is logged and the others still run.
    """

    __slots__ = ("_counts", "_lock", "_sum", "bounds", "listeners")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last bucket: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()  # a scrape sees counts and sum of the same observations
        self.listeners: list[Callable[[float], None]] = []

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value
        for listener in list(self.listeners):
            try:
                listener(value)
            except Exception:
                log.exception("a histogram listener raised; the value is still counted")

    def snapshot(self) -> tuple[list[int], float]:
        """(count per bucket, the last one above every bound; sum of the values)."""
        with self._lock:
            return list(self._counts), self._sum


@dataclass(frozen=True)
class Metric:
    """One value every exporter reports per cache, read from a `CacheStats` snapshot."""

    name: str
    """Prometheus' name (lazycache_<name>, counters with _total); OpenTelemetry's is
    lazycache.<name> without a _seconds suffix, the unit saying it."""
    kind: str
    """"counter" (only ever grows) or "gauge"."""
    unit: str
    """"s", or "" for a count."""
    doc: str
    read: Callable[[Any, CacheStats], float]
    """(cache, its stats) -> the value."""


METRICS: tuple[Metric, ...] = (
    Metric("size", "gauge", "", "Live entries in memory.", lambda c, s: s.size),
    Metric("pending", "gauge", "", "Entries whose latest change has not reached the store yet.", lambda c, s: s.pending),
    Metric("oldest_pending_age_seconds", "gauge", "s", "Seconds since the oldest pending change was made (0 if none).", lambda c, s: s.oldest_pending_age),
    Metric("write_interval_seconds", "gauge", "s", "The cache's write_interval: for alert rules in multiples of it.", lambda c, s: c._write_interval),
    Metric("write_errors", "gauge", "", "Keys the store rejected for good, not rewritten since.", lambda c, s: s.write_errors),
    Metric("coherent", "gauge", "", "1 while the coherence channel is up (or there is none), 0 while reads bypass memory.", lambda c, s: int(c.coherent)),
    Metric("hits", "counter", "", "Reads answered from memory.", lambda c, s: s.hits),
    Metric("misses", "counter", "", "Reads that found nothing in memory.", lambda c, s: s.misses),
    Metric("loads", "counter", "", "Values read through from the store.", lambda c, s: s.loads),
    Metric("evictions", "counter", "", "Clean entries evicted to stay near maxsize.", lambda c, s: s.evictions),
    Metric("expirations", "counter", "", "Clean entries dropped because they expired.", lambda c, s: s.expirations),
    Metric("writes", "counter", "", "Entries (upserts and deletes) committed to the store.", lambda c, s: s.writes),
    Metric("failed_writes", "counter", "", "Entries in store writes that failed (each failed attempt counts).", lambda c, s: s.failed_writes),
    Metric("retries", "counter", "", "Batches put back after a recoverable failure, to be retried.", lambda c, s: s.retries),
    Metric("flushes", "counter", "", "Batches committed to the store (one transaction each).", lambda c, s: s.flushes),
)  # fmt: skip
"""What the exporters report for each cache, besides the two histograms below."""

FLUSH_DURATION = "flush_duration_seconds"
FLUSH_DURATION_DOC = "Seconds each flush that wrote something took (all its batches)."
BATCH_SIZE = "batch_size"
BATCH_SIZE_DOC = "Entries in each batch committed to the store (one Store.write call)."

LABEL = "cache"
"""The label (Prometheus) or attribute (OpenTelemetry) naming the cache: its `name`."""


class Caches:
    """The caches an exporter reports, held weakly (a collected cache drops out), by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by id(): a cache is a Mapping, so unhashable.
        self._caches: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def add(self, cache: Any) -> None:
        """Reports `cache` from now on. Raises ValueError if another cache here has its name."""
        with self._lock:
            for other in self._caches.values():
                if other is not cache and other.name == cache.name:
                    raise ValueError(
                        f"another cache named {cache.name!r} is already reported here: "
                        "give each cache its own name= (it is the metrics' label)"
                    )
            self._caches[id(cache)] = cache

    def remove(self, cache: Any) -> None:
        with self._lock:
            if self._caches.get(id(cache)) is cache:
                del self._caches[id(cache)]

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            caches = list(self._caches.values())
        return iter(caches)
