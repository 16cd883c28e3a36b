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

The two transports are not imported here: each needs its client library, and a cache
without coherence needs neither.
"""

from .base import Coherence
from .channel import ChannelCoherence, ChannelSettings

__all__ = ["ChannelCoherence", "ChannelSettings", "Coherence"]
