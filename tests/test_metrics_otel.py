"""The OpenTelemetry instruments, read back by the SDK's InMemoryMetricReader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import FailingStore

from lazycache import FlushError

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from lazycache.metrics.otel import instrument, uninstrument


@pytest.fixture
def reader() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[tuple[str, str], Any]:
    """(instrument name, cache attribute) -> the data point (value, or histogram point)."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, point.attributes["cache"]): point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }


def test_the_sdk_reads_every_counter_and_gauge_of_each_cache(make_cache, reader) -> None:
    provider, memory = reader
    store = FailingStore({"in-store": 1})
    orders = make_cache(store, quiet=True, name="orders", close_may_fail=True)
    users = make_cache(quiet=True, name="users")
    instrument(orders, provider)
    instrument(users, provider)
    orders["a"] = 1
    assert orders["a"] == 1
    assert orders["in-store"] == 1
    orders.flush()
    store.fail = True
    orders["b"] = 2
    with pytest.raises(FlushError):
        orders.flush()
    users["u"] = 1

    before = orders.stats
    points = collect(memory)
    after = orders.stats

    def value(name: str, cache: str = "orders") -> float:
        return points[(name, cache)].value  # type: ignore[no-any-return]

    assert value("lazycache.hits") == before.hits == 1
    assert value("lazycache.misses") == before.misses == 1
    assert value("lazycache.loads") == 1
    assert value("lazycache.writes") == 1
    assert value("lazycache.flushes") == 1
    assert value("lazycache.failed_writes") == 1
    assert value("lazycache.retries") == 1
    assert value("lazycache.evictions") == 0
    assert value("lazycache.size") == 3  # a, in-store, b
    assert value("lazycache.pending") == 1
    assert value("lazycache.write_errors") == 0
    assert value("lazycache.coherent") == 1
    assert value("lazycache.write_interval") == orders._write_interval
    age = value("lazycache.oldest_pending_age")
    assert before.oldest_pending_age <= age <= after.oldest_pending_age
    assert value("lazycache.pending", "users") == 1
    assert value("lazycache.writes", "users") == 0
    store.fail = False


def test_the_sdk_reads_the_flush_duration_and_batch_size_histograms(make_cache, reader) -> None:
    provider, memory = reader
    cache = make_cache(quiet=True, name="batches", batch_size=3)
    instrument(cache, provider)
    cache.update({i: i for i in range(7)})  # batches of 3, 3 and 1
    result = cache.flush()
    points = collect(memory)
    sizes = points[("lazycache.batch_size", "batches")]
    assert (sizes.count, sizes.sum, sizes.min, sizes.max) == (3, 7, 1, 3)
    bounds = list(sizes.explicit_bounds)
    assert sizes.bucket_counts[bounds.index(1)] == 1  # the batch of 1
    assert sizes.bucket_counts[bounds.index(5)] == 2  # the two of 3, in (2, 5]
    duration = points[("lazycache.flush_duration", "batches")]
    assert duration.count == 1 and duration.sum == pytest.approx(result.duration)


def test_uninstrument_stops_reporting_a_cache(make_cache, reader) -> None:
    provider, memory = reader
    kept = make_cache(quiet=True, name="kept")
    dropped = make_cache(quiet=True, name="dropped")
    instrument(kept, provider)
    instrument(dropped, provider)
    with pytest.raises(ValueError, match="kept"):
        instrument(make_cache(quiet=True, name="kept"), provider)
    uninstrument(dropped, provider)
    dropped["x"] = 1
    dropped.flush()
    points = collect(memory)
    assert ("lazycache.size", "kept") in points
    assert not [key for key in points if key[1] == "dropped"]
