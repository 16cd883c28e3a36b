"""The Prometheus collector, read back by a real scrape over HTTP of prometheus_client's server."""

from __future__ import annotations

import gc
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import FailingStore, LocalCoherence

from lazycache import FlushError
from lazycache.stores.memory import MemoryStore

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lazycache.metrics.prometheus import register, unregister  # noqa: E402

Samples = dict[tuple[str, str, str], float]
"""(sample name, cache label, le label or "") -> value."""


@pytest.fixture
def endpoint() -> Iterator[tuple[Any, str]]:
    """A registry of its own, served over HTTP on a free loopback port: (registry, URL)."""
    registry = prometheus_client.CollectorRegistry()
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, sample.labels["cache"], sample.labels.get("le", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.name.startswith("lazycache_")
    }


def test_a_scrape_reports_every_counter_and_gauge_of_each_cache(make_cache, endpoint) -> None:
    registry, url = endpoint
    store = FailingStore({"in-store": 1, **{f"s{i}": i for i in range(5)}})
    channel = LocalCoherence()
    orders = make_cache(
        store, quiet=True, maxsize=6, name="orders", coherence=channel, close_may_fail=True
    )
    users = make_cache(quiet=True, name="users")
    register(orders, registry)
    register(users, registry)

    orders["a"] = 1
    orders["b"] = 2
    assert orders["a"] == 1  # hit
    assert orders.get("absent") is None  # miss, nothing loaded
    assert orders["in-store"] == 1  # miss, loaded
    orders.flush()
    store.fail = True
    orders["c"] = 3
    with pytest.raises(FlushError):
        orders.flush()  # one failed write, one retry; "c" stays pending
    for i in range(5):
        assert orders[f"s{i}"] == i  # loaded clean: evictable
    evicted = orders.prune()
    users["u"] = 1
    channel.on_lost()  # the coherence channel is down: reads bypass memory

    before = orders.stats
    samples = scrape(url)
    after = orders.stats

    def orders_sample(name: str) -> float:
        return samples[(name, "orders", "")]

    assert orders_sample("lazycache_hits_total") == before.hits == 1
    assert orders_sample("lazycache_misses_total") == before.misses >= 7
    assert orders_sample("lazycache_loads_total") == before.loads == 6
    assert orders_sample("lazycache_writes_total") == 2  # a and b; c failed
    assert orders_sample("lazycache_flushes_total") == 1
    assert orders_sample("lazycache_failed_writes_total") == 1
    assert orders_sample("lazycache_retries_total") == 1
    assert orders_sample("lazycache_evictions_total") == evicted == before.evictions > 0
    assert orders_sample("lazycache_pending") == 1
    assert orders_sample("lazycache_write_errors") == 0
    assert orders_sample("lazycache_coherent") == 0
    assert orders_sample("lazycache_write_interval_seconds") == orders._write_interval
    assert orders_sample("lazycache_size") == before.size == after.size
    age = orders_sample("lazycache_oldest_pending_age_seconds")
    assert before.oldest_pending_age <= age <= after.oldest_pending_age
    # The other cache has its own series.
    assert samples[("lazycache_pending", "users", "")] == 1
    assert samples[("lazycache_writes_total", "users", "")] == 0
    assert samples[("lazycache_coherent", "users", "")] == 1

    channel.on_restored()
    store.fail = False
    orders.flush()
    samples = scrape(url)
    assert samples[("lazycache_coherent", "orders", "")] == 1
    assert samples[("lazycache_pending", "orders", "")] == 0
    assert samples[("lazycache_writes_total", "orders", "")] == 3


def test_a_scrape_reports_flush_duration_and_batch_size_histograms(make_cache, endpoint) -> None:
    registry, url = endpoint
    cache = make_cache(quiet=True, name="batches", batch_size=3)
    register(cache, registry)
    cache.update({i: i for i in range(7)})  # batches of 3, 3 and 1
    result = cache.flush()
    cache[100] = 100
    cache.flush()  # one batch of 1
    assert result.batches == 3
    samples = scrape(url)

    def sample(name: str, le: str = "") -> float:
        return samples[(name, "batches", le)]

    assert sample("lazycache_batch_size_count") == 4
    assert sample("lazycache_batch_size_sum") == 8
    assert sample("lazycache_batch_size_bucket", "1.0") == 2
    assert sample("lazycache_batch_size_bucket", "2.0") == 2
    assert sample("lazycache_batch_size_bucket", "5.0") == 4
    assert sample("lazycache_batch_size_bucket", "+Inf") == 4
    # Two flushes wrote something: each is one observation of the duration histogram.
    assert sample("lazycache_flush_duration_seconds_count") == 2
    assert sample("lazycache_flush_duration_seconds_sum") >= result.duration
    assert sample("lazycache_flush_duration_seconds_bucket", "+Inf") == 2
    buckets = [v for (name, _, le), v in samples.items() if name.endswith("seconds_bucket")]
    assert buckets == sorted(buckets)  # cumulative


def test_a_name_reported_twice_is_refused_and_unregister_frees_it(make_cache, endpoint) -> None:
    registry, url = endpoint
    first = make_cache(quiet=True, name="same")
    second = make_cache(quiet=True, name="same")
    register(first, registry)
    register(first, registry)  # the same cache again: nothing changes
    with pytest.raises(ValueError, match="same"):
        register(second, registry)
    unregister(first, registry)
    register(second, registry)
    second["x"] = 1
    assert scrape(url)[("lazycache_pending", "same", "")] == 1


def test_a_garbage_collected_cache_drops_out_of_the_scrape(cache_cls, endpoint) -> None:
    registry, url = endpoint
    cache = cache_cls(MemoryStore(), name="short-lived")
    register(cache, registry)
    assert ("lazycache_size", "short-lived", "") in scrape(url)
    cache.close()
    del cache
    gc.collect()
    assert ("lazycache_size", "short-lived", "") not in scrape(url)
