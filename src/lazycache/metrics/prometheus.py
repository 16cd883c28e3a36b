"""A Prometheus collector for lazycache caches (`pip install lazycache[prometheus]`).

    from prometheus_client import start_http_server
    from lazycache.metrics.prometheus import register

    cache = LazyWriterCache(store, name="sessions")
    register(cache)            # into prometheus_client's default registry
    start_http_server(9100)

Every scrape reads each cache's `stats` then: the cache does no metrics work between
scrapes. Each series has the label `cache` (the cache's `name`). See the operations guide
for what to alert on.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    REGISTRY,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import (
    BATCH_SIZE,
    BATCH_SIZE_DOC,
    FLUSH_DURATION,
    FLUSH_DURATION_DOC,
    LABEL,
    METRICS,
    Caches,
    Histogram,
)

__all__ = ["CacheCollector", "register", "unregister"]

PREFIX = "lazycache_"


class CacheCollector(Collector):
    """Reports the caches added to it; register one per registry (`register` does)."""

    def __init__(self, *caches: Any) -> None:
        self.caches = Caches()
        for cache in caches:
            self.caches.add(cache)

    def describe(self) -> Iterator[Metric]:
        # Nothing: the registry then does not collect at registration to learn the names.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        caches = [(cache, cache.stats) for cache in self.caches]
        for metric in METRICS:
            family_type = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = family_type(
                PREFIX + metric.name, metric.doc, labels=[LABEL], unit=metric.unit and "seconds"
            )
            for cache, stats in caches:
                family.add_metric([cache.name], metric.read(cache, stats))
            yield family
        for name, doc, unit, attribute in (
            (FLUSH_DURATION, FLUSH_DURATION_DOC, "seconds", "flush_durations"),
            (BATCH_SIZE, BATCH_SIZE_DOC, "", "batch_sizes"),
        ):
            histogram = HistogramMetricFamily(PREFIX + name, doc, labels=[LABEL], unit=unit)
            for cache, _ in caches:
                buckets, total = _buckets(getattr(cache._batch_writer, attribute))
                histogram.add_metric([cache.name], buckets, total)
            yield histogram


def _buckets(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Prometheus' cumulative buckets ("le" bound, count at or below it) and the sum."""
    counts, total = histogram.snapshot()
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip((*histogram.bounds, float("inf")), counts):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return buckets, total


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, CacheCollector] = (
    weakref.WeakKeyDictionary()
)


def register(cache: Any, registry: CollectorRegistry = REGISTRY) -> CacheCollector:
    """Reports `cache` in `registry` (one collector per registry, shared by its caches).

    Raises ValueError if a live cache of the same `name` is already reported there.
    """
    collector = _collectors.get(registry)
    if collector is None:
        collector = _collectors[registry] = CacheCollector()
        registry.register(collector)
    collector.caches.add(cache)
    return collector


def unregister(cache: Any, registry: CollectorRegistry = REGISTRY) -> None:
    """Stops reporting `cache` in `registry` (a garbage-collected cache drops out by itself)."""
    collector = _collectors.get(registry)
    if collector is not None:
        collector.caches.remove(cache)
