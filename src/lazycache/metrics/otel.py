"""OpenTelemetry metrics for lazycache caches (`pip install lazycache[opentelemetry]`).

    from lazycache.metrics.otel import instrument

    cache = LazyWriterCache(store, name="sessions")
    instrument(cache)          # on the global MeterProvider, or pass meter_provider=

Counters and gauges are observable instruments: the SDK's reader calls back at each
collection, which reads the cache's `stats`. The two histograms (flush duration, batch
size) are recorded by the writer thread as flushes happen, never on the cache's hot path.
Every point has the attribute `cache` (the cache's `name`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, Callable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation

from . import (
    BATCH_SIZE,
    BATCH_SIZE_BUCKETS,
    BATCH_SIZE_DOC,
    FLUSH_DURATION,
    FLUSH_DURATION_BUCKETS,
    FLUSH_DURATION_DOC,
    LABEL,
    METRICS,
    Caches,
    Metric,
)

__all__ = ["instrument", "uninstrument"]


def otel_name(name: str) -> str:
    """lazycache.<name>, the unit (s) carried by the instrument rather than the name."""
    return "lazycache." + name.removesuffix("_seconds")


class _Instruments:
    """The instruments of one meter, and the caches they report."""

    def __init__(self, meter: Meter) -> None:
        self.caches = Caches()
        # The histogram listeners each cache's writer calls, to remove on uninstrument.
        self.listeners: dict[int, list[tuple[Any, Callable[[float], None]]]] = {}
        for metric in METRICS:
            create = (
                meter.create_observable_counter
                if metric.kind == "counter"
                else meter.create_observable_gauge
            )
            create(
                otel_name(metric.name),
                callbacks=[self._callback(metric)],
                unit=metric.unit or "1",
                description=metric.doc,
            )
        self.flush_duration = meter.create_histogram(
            otel_name(FLUSH_DURATION),
            unit="s",
            description=FLUSH_DURATION_DOC,
            explicit_bucket_boundaries_advisory=FLUSH_DURATION_BUCKETS,
        )
        self.batch_size = meter.create_histogram(
            otel_name(BATCH_SIZE),
            unit="1",
            description=BATCH_SIZE_DOC,
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )

    def _callback(self, metric: Metric) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(metric.read(cache, cache.stats), {LABEL: cache.name})
                for cache in self.caches
            ]

        return observe

    def add(self, cache: Any) -> None:
        self.caches.add(cache)
        if id(cache) in self.listeners:
            return
        attributes = {LABEL: cache.name}
        writer = cache._batch_writer
        pairs = []
        for histogram, instrument in (
            (writer.flush_durations, self.flush_duration),
            (writer.batch_sizes, self.batch_size),
        ):
            record = _recorder(instrument, attributes)
            histogram.listeners.append(record)
            pairs.append((histogram, record))
        self.listeners[id(cache)] = pairs
        # Keyed by id(), which a later cache may reuse: the entry goes with its cache.
        weakref.finalize(cache, self.listeners.pop, id(cache), None)

    def remove(self, cache: Any) -> None:
        self.caches.remove(cache)
        for histogram, record in self.listeners.pop(id(cache), ()):
            histogram.listeners.remove(record)


def _recorder(instrument: Histogram, attributes: dict[str, str]) -> Callable[[float], None]:
    def record(value: float) -> None:
        instrument.record(value, attributes)

    return record


_instruments: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()


def instrument(cache: Any, meter_provider: MeterProvider | None = None) -> None:
    """Reports `cache` through the meter provider (default: the global one).

    Raises ValueError if a live cache of the same `name` is already reported by it.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    instruments = _instruments.get(provider)
    if instruments is None:
        meter = provider.get_meter("lazycache")
        instruments = _instruments[provider] = _Instruments(meter)
    instruments.add(cache)


def uninstrument(cache: Any, meter_provider: MeterProvider | None = None) -> None:
    """Stops reporting `cache` through the meter provider."""
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    instruments = _instruments.get(provider)
    if instruments is not None:
        instruments.remove(cache)
