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
from typing import Callable

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
