"""Coherence across processes: caches sharing a store tell each other which keys they wrote.

A channel is opt-in (`LazyWriterCache(store, coherence=...)`); see `Coherence` for what a
cache asks of one. The modules, each importing only those below it:

* `base`: the `Coherence` interface;
* `message`: the message format every channel sends;
* `channel`: `ChannelCoherence`, what every publish/subscribe channel shares (the
  subscriber thread, loss detection, reconnection, the consistency model), and
  `ChannelSettings`, its options;
* `redis`: `RedisCoherence`, over Redis or Redis Cluster pub/sub (needs redis-py);
* `postgres`: `PostgresNotifyCoherence`, over PostgreSQL LISTEN/NOTIFY (needs psycopg).

Only `Coherence` is imported here, which every cache needs: the channel and its transports
are for caches that use one (the transports need their client libraries too).
"""

from .base import Coherence

__all__ = ["Coherence"]
