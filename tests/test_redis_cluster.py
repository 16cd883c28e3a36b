"""RedisStore and RedisCoherence on a 3-master Redis Cluster started by the tests (tests/redis_cluster.py).

A batch spread over every one of the 16384 hash slots lands in full, as one MULTI/EXEC
per slot and one round trip per node; keys sharing a hash tag are one transaction; a
slot that moved is found again (MOVED); invalidations published through one node reach
a subscriber on another.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import FakeClock, close_caches, recording, wait_until
from redis.crc import key_slot
from redis_cluster import Cluster, redis_cluster  # noqa: F401  (fixture)
from services import unique_name

from lazycache import FlushError, open_redis
from lazycache.coherence.redis import RedisCoherence
from lazycache.stores.redis import RedisStore

SLOTS = 16384


@pytest.fixture
def cluster_prefix(redis_cluster: Cluster) -> Any:
    """A key prefix of this test's own on the cluster; its keys are deleted at teardown."""
    prefix = unique_name("lcc") + ":"
    yield prefix
    for server in redis_cluster.servers:
        client = server.client()
        try:
            pipe = client.pipeline(transaction=False)
            for key in client.scan_iter(match=prefix + "*", count=1000):
                pipe.delete(key)  # one key per DEL: a node refuses a DEL across slots
            pipe.execute()
        finally:
            client.close()


@pytest.fixture
def cluster_store(redis_cluster: Cluster, cluster_prefix: str) -> Any:
    made: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        options.setdefault("prefix", cluster_prefix)
        store = RedisStore(redis_cluster.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def cluster_cache(make_cache: Any, cluster_store: Any) -> Any:
    make, made = recording(make_cache)
    yield make
    close_caches(made)


def one_key_per_slot(prefix: str) -> dict[int, str]:
    """slot -> a key (without the prefix) whose prefixed form hashes to that slot, for all 16384 slots."""
    found: dict[int, str] = {}
    n = 0
    encoded = prefix.encode()
    while len(found) < SLOTS:
        key = f"k{n}"
        found.setdefault(key_slot(encoded + key.encode()), key)
        n += 1
    return found


def per_node(cluster: Cluster, prefix: str) -> dict[int, int]:
    """port -> how many keys with this prefix the node holds."""
    counts = {}
    for server in cluster.servers:
        client = server.client()
        try:
            counts[server.port] = sum(1 for _ in client.scan_iter(match=prefix + "*", count=5000))
        finally:
            client.close()
    return counts


def calls(cluster: Cluster, command: str) -> int:
    """How often the cluster's nodes have run `command` so far (INFO commandstats)."""
    total = 0
    for server in cluster.servers:
        client = server.client()
        try:
            total += client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)
        finally:
            client.close()
    return total


def test_the_store_finds_out_it_is_on_a_cluster(cluster_store, redis_cluster) -> None:
    store = cluster_store()
    assert store.cluster
    assert "cluster" in repr(store) and str(redis_cluster.ports[0]) in repr(store)


def test_a_read_through_on_a_cluster_brings_each_keys_ttl(cluster_store, cluster_cache) -> None:
    writer = cluster_cache(cluster_store(), quiet=True)
    keys = [f"t{i}" for i in range(300)]  # spread over the nodes
    for i, key in enumerate(keys):
        if i % 2:
            writer.set(key, i, ttl=600)
        else:
            writer[key] = i
    writer.flush()
    found, ttls = cluster_store().load_many_with_ttls([*keys, "absent"])
    assert found == {key: i for i, key in enumerate(keys)}
    assert set(ttls) == set(keys[1::2]) and all(590 < left <= 600 for left in ttls.values())
    clock = FakeClock()
    reader = cluster_cache(cluster_store(), quiet=True, clock=clock)
    assert reader.get_many(keys) == found
    clock.advance(601)
    assert reader.get_many(keys) == found  # the ones with a TTL were read again
    assert reader.stats.loads == len(keys) + len(keys) // 2


def test_a_batch_over_every_slot_lands_in_full(
    cluster_store, cluster_cache, redis_cluster, cluster_prefix
) -> None:
    keys = one_key_per_slot(cluster_prefix)
    cache = cluster_cache(cluster_store(), quiet=True, batch_size=SLOTS + 100)
    cache.update({key: {"slot": slot} for slot, key in keys.items()})
    multi, mset = calls(redis_cluster, "multi"), calls(redis_cluster, "mset")
    result = cache.flush()
    assert result.written == SLOTS and result.batches == 1
    # One key per slot: one MSET per slot, atomic by itself, no MULTI needed.
    assert calls(redis_cluster, "mset") - mset == SLOTS and calls(redis_cluster, "multi") == multi
    counts = per_node(redis_cluster, cluster_prefix)
    assert sum(counts.values()) == SLOTS and all(count > 5000 for count in counts.values()), counts
    # Read back through a fresh store: MGET per slot, every value where it belongs.
    loaded = cluster_store().load_many(list(keys.values()))
    assert loaded == {key: {"slot": slot} for slot, key in keys.items()}
    # And deleted the same way.
    for key in keys.values():
        del cache[key]
    assert cache.flush().deleted == SLOTS
    assert sum(per_node(redis_cluster, cluster_prefix).values()) == 0


def test_keys_sharing_a_hash_tag_are_one_transaction(
    cluster_store, cluster_cache, redis_cluster
) -> None:
    store = cluster_store(ttl=lambda key, value: 60 if key.endswith("session") else None)
    cache = cluster_cache(store, quiet=True)
    user = {
        f"{{user:{n}}}:{part}": n for n in range(5) for part in ("profile", "settings", "session")
    }
    multi = calls(redis_cluster, "multi")
    cache.update(user)
    cache.flush()
    assert (
        calls(redis_cluster, "multi") - multi == 5
    )  # five tags: five slots, five transactions (MSET + SET PX)
    assert store.load_many(list(user)) == user
    rkey = store.redis_key("{user:3}:session")
    client = redis_cluster.client()
    try:
        assert (
            59_000 < client.pttl(rkey) <= 60_000
            and client.pttl(store.redis_key("{user:3}:profile")) == -1
        )
    finally:
        client.close()


def test_read_through_and_poison_on_the_cluster(cluster_store, cluster_cache) -> None:
    writer = cluster_cache(cluster_store(), quiet=True, on_write_error=lambda k, v, e: None)
    writer.update({f"r{i}": i for i in range(300)})
    writer["bad"] = object()
    with pytest.raises(FlushError) as info:
        writer.flush()
    assert info.value.result.poisoned_keys == ("bad",)
    reader = cluster_cache(cluster_store(chunk_size=50), quiet=True)
    assert [reader[f"r{i}"] for i in range(300)] == list(range(300))
    assert "bad" not in reader
    assert reader.store.load_many([f"r{i}" for i in range(300)]) == {f"r{i}": i for i in range(300)}


def test_a_moved_slot_is_found_again(cluster_store, redis_cluster) -> None:
    store = cluster_store()
    key = "{moving}:k"
    rkey = store.redis_key(key)
    slot = key_slot(rkey)
    store.load_many([key])  # the store's map of the cluster is now loaded
    admin = redis_cluster.client()
    try:
        owner = admin.get_node_from_key(rkey)
        target = next(node for node in admin.get_primaries() if node.name != owner.name)
        for server in redis_cluster.servers:  # the slot holds no key: it can simply be reassigned
            server_client = server.client()
            try:
                assert server_client.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
            finally:
                server_client.close()
        target_id = admin.cluster_myid(target)
        try:
            for server in redis_cluster.servers:
                server_client = server.client()
                try:
                    server_client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                finally:
                    server_client.close()
            store.write([(key, "moved")], [])  # MOVED from the old owner, then sent to the new one
            assert store.redirects == 1
            assert store.load_many([key]) == {key: "moved"}
            assert redis_cluster.client().get_node_from_key(rkey).name == target.name
        finally:
            store.write([], [key])
            owner_id = admin.cluster_myid(owner)
            for server in redis_cluster.servers:
                server_client = server.client()
                try:
                    server_client.execute_command("CLUSTER SETSLOT", slot, "NODE", owner_id)
                finally:
                    server_client.close()
    finally:
        admin.close()


def test_invalidations_cross_nodes(
    cluster_store, cluster_cache, redis_cluster, cluster_prefix
) -> None:
    channel = cluster_prefix + "invalidate"
    stores = [cluster_store(), cluster_store()]
    channels = [RedisCoherence(stores[0], channel), RedisCoherence(stores[1], channel)]
    channels[0]._node_turn, channels[1]._node_turn = 0, 1  # subscribe on two different nodes
    a = cluster_cache(stores[0], coherence=channels[0], write_interval=3600)
    b = cluster_cache(stores[1], coherence=channels[1], write_interval=3600)
    subscribed = {}
    for server in redis_cluster.servers:
        client = server.client()
        try:
            names = {entry["name"] for entry in client.client_list(_type="pubsub")}
        finally:
            client.close()
        for ch in channels:
            if ch.client_name in names:
                subscribed[ch.client_name] = server.port
    assert len(set(subscribed.values())) == 2, subscribed
    a["k"] = 1
    a.flush()
    assert b["k"] == 1
    a["k"] = 2
    a.flush()
    wait_until(lambda: b["k"] == 2, message="the invalidation never crossed the cluster")


def test_open_redis_on_a_cluster(redis_cluster, cluster_prefix, impl) -> None:
    with open_redis(
        redis_cluster.url, prefix=cluster_prefix, implementation=impl, write_interval=0.02
    ) as cache:
        assert cache.store.cluster
        cache.update({f"o{i}": i for i in range(100)})
    reopened = open_redis(redis_cluster.url, prefix=cluster_prefix, implementation=impl)
    try:
        assert [reopened[f"o{i}"] for i in range(100)] == list(range(100))
    finally:
        reopened.close()
