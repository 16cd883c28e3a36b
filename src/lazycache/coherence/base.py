"""The `Coherence` interface: what a cache needs from a channel shared with other processes.

A `Coherence` channel is opt-in (`LazyWriterCache(store, coherence=...)`). After each
batch commits, the writer publishes the batch's keys; every other cache on the same
channel drops those keys from memory, unless it holds a pending change of its own
for them (its own write is newer and will reach the store after), so that its next
read of them reads through to the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Callable


class Coherence(ABC):
    """A publish/subscribe channel of written keys.

    Implementations: `lazycache.coherence.redis.RedisCoherence` and
    `lazycache.coherence.postgres.PostgresNotifyCoherence`, both on
    `lazycache.coherence.channel.ChannelCoherence`.
    """

    @abstractmethod
    def start(
        self,
        on_keys: Callable[[Sequence[Any]], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None],
    ) -> None:
        """Subscribes; calls on_keys(keys) for every batch another cache publishes.

        Calls on_lost() when the subscription breaks (messages may have been missed)
        and on_restored() once it is back. Must not deliver this channel's own messages.
        """

    @abstractmethod
    def publish(self, keys: Sequence[Any]) -> None:
        """Tells the other caches that these keys were just written (or deleted) in the store."""

    def close(self) -> None:  # noqa: B027  (optional: a channel may hold nothing to release)
        """Unsubscribes and releases the channel's connections."""

    def after_fork_in_child(self) -> None:  # noqa: B027  (optional: a channel may hold nothing)
        """Called in a process made by `os.fork()`, on the channel of every open cache.

        The child's cache stops using the channel (the subscription is the parent's). The
        channel drops its references to the parent's connections here, closing none of them
        (closing would end them for the parent too), so that nothing the child does with
        it afterwards, `close()` included, reaches the parent's connections.
        """
