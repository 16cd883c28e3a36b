"""The Store interface: what the cache needs from durable storage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    # typing's from 3.10 on; only the type checker needs it (typing_extensions is not a
    # runtime dependency).
    from typing_extensions import TypeGuard

K = TypeVar("K")
V = TypeVar("V")

GeneratedFields = Mapping[Any, Mapping[str, Any]]
"""What `Store.write` may return: per key, the fields the store generated (an id, a timestamp)."""


class Store(ABC, Generic[K, V]):
    """Durable storage behind a `LazyWriterCache`. Subclass it for your own backend.

    The cache calls `load_many` on a read-through miss (from the reading thread) and
    `write` from its writer thread, one batch at a time, never two batches at once.
    In a child made by `os.fork()` it calls `after_fork_in_child` before anything else.
    """

    accepts_ttls: bool = False
    """Whether `write` takes a `ttls=` keyword: {upserted key: seconds to keep it}.

    A store that can expire what it holds (Redis, a SQL table with an expiry column) sets
    this True and defines `write(upserts, deletes, ttls=None)` (as `WritesTTLs` types it).
    An expiring cache then passes, for each upserted key that has a write deadline (its
    `set(..., ttl=)` or the cache's `expire_after_write`), the seconds left to it when the
    batch is written; keys not in `ttls` are stored as they would be without it. Other
    stores are never passed it.
    """

    reports_ttls: bool = False
    """Whether `load_many_with_ttls` says how long the store keeps each key it loads.

    A store that can expire what it holds sets this True and overrides
    `load_many_with_ttls`; the cache then reads through with it, and an entry it loads
    expires from memory when the store would drop it (or sooner, by the cache's own
    `expire_after_write`), whoever set its TTL.
    """

    def load_many_with_ttls(self, keys: Sequence[K]) -> tuple[Mapping[K, V], Mapping[K, float]]:
        """(the stored values of `keys`, as `load_many`; per found key that expires, the seconds left).

        A key the store keeps for good is left out of the second mapping. The default
        (a store that expires nothing) is `(load_many(keys), {})`.
        """
        return self.load_many(keys), {}

    @abstractmethod
    def load_many(self, keys: Sequence[K]) -> Mapping[K, V]:
        """Returns the stored values of `keys`; keys not in the store are left out.

        Raise on a storage error: the cache reports it to the reader, never as a miss.
        """

    @abstractmethod
    def write(self, upserts: Sequence[tuple[K, V]], deletes: Sequence[K]) -> GeneratedFields | None:
        """Stores one batch as one unit (a transaction): all of it, or nothing and raise.

        A key appears at most once per batch, in `upserts` or in `deletes`.
        May return, per upserted key, the fields the store generated, which the cache
        merges into the value it holds (see `LazyWriterCache(merge_generated=...)`).
        """

    def load(self, key: K) -> V:
        """The stored value of one key; `KeyError` if the store does not have it."""
        found = self.load_many([key])
        if key not in found:
            raise KeyError(key)
        return found[key]

    def is_recoverable(self, exc: BaseException) -> bool:
        """Whether retrying the same batch later may succeed (a lost connection, a deadlock).

        Unrecoverable errors (a constraint violation, a value the store cannot encode) are
        the data's fault and will fail again.
        """
        return isinstance(exc, (ConnectionError, TimeoutError))

    def close(self) -> None:
        """Releases the store's resources. The cache does not call it unless it owns the store."""

    def after_fork_in_child(self) -> None:
        """Called in a process made by `os.fork()`, before the child's cache uses the store.

        The child inherited the parent's open connections: they are the parent's server
        sessions, so the child must neither use them (the two processes' requests and
        replies would mix on one socket) nor close them (closing ends the session for the
        parent too). A store that holds connections drops its references to them here,
        without closing them, and opens connections of its own on next use. Called by
        every open cache over the store (and so maybe more than once per fork), whether the
        cache owns the store or not. The default does nothing: for a store with no connection.
        """


class WritesTTLs(Protocol):
    """The `write` of a store whose `accepts_ttls` is True (see `Store.accepts_ttls`)."""

    def write(
        self,
        upserts: Sequence[tuple[Any, Any]],
        deletes: Sequence[Any],
        ttls: Mapping[Any, float] | None = None,
    ) -> GeneratedFields | None: ...


def ttl_writer(store: Store[Any, Any]) -> WritesTTLs | None:
    """`store`, if its `write` takes `ttls=` (it says so with `accepts_ttls`); else None."""
    return store if _accepts_ttls(store) else None


def _accepts_ttls(store: Store[Any, Any]) -> TypeGuard[WritesTTLs]:
    return bool(getattr(store, "accepts_ttls", False))
