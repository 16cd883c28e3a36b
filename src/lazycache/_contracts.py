"""The typed contracts between the core, the cache layer above it and the batch writer.

`LazyWriterCache` is assembled at import time: `type()` mixes the cache layer over the
active core (see `lazycache.cache`), so no class statement tells a type checker that the
layer's `self` is a core. Two contracts do:

* `CoreMapping`, the core as the cache layer (and its views) sees it: for type checkers, the
  cores' shared interface (`_core.pyi`, which stubtest holds the compiled core to; the
  pure-Python twin is tested against the same behaviour) as a `MutableMapping`; at run time
  plain `object`, so that the assembled class's MRO is unchanged: the core's compiled slots,
  not a Python method, serve the dict operations.
* `Flushable`, what `BatchWriter` calls on the cache it flushes: the core's dirty queue and
  the few answers of the layer the writer needs (`closed`, `_store_ttls`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._core import Core
    from ._core import _Pending as Pending

    class CoreMapping(Core, MutableMapping[Any, Any]):
        """The core under the cache layer: its private methods, typed, and the mapping it is."""

else:
    CoreMapping = object


class Flushable(Protocol):
    """What `BatchWriter` needs from the cache it flushes (a `LazyWriterCache` over either core).

    Batches are taken from the core's dirty queue (`_take_batch`), then each entry is either
    committed (`_commit`: written, or handed to the error path) or put back at the front of
    the queue (`_requeue`); nothing taken is left in flight.
    """

    @property
    def pending(self) -> int:
        """Entries whose latest change has not reached the store yet (queued or in flight)."""
        ...

    max_pending: int | None
    """The most entries that may be pending at once (None: no limit)."""

    @property
    def _queued(self) -> int:
        """Entries in the dirty queue: pending and not in flight."""
        ...

    @property
    def closed(self) -> bool: ...

    def _take_batch(self, limit: int) -> list[Pending]:
        """Up to `limit` queued entries, oldest first, now in flight."""
        ...

    def _commit(self, batch: list[Pending]) -> None:
        """Settles entries taken: no longer pending (a newer value of a key stays queued)."""
        ...

    def _requeue(self, batch: list[Pending]) -> None:
        """Puts entries taken back at the front of the queue, in order."""
        ...

    def _pending_keys(self) -> list[Any]: ...

    def _oldest_in(self, batch: list[Pending]) -> int:
        """The core's clock stamp of the batch entry pending longest."""
        ...

    def _current(self, r: Any, seq: int) -> tuple[Any, bool]:
        """(the entry's live value or MISSING, whether it changed since `seq`)."""
        ...

    def _swap_value(self, r: Any, expected: Any, value: Any) -> bool:
        """Replaces the entry's value, without making it pending, if it is still `expected`."""
        ...

    def _store_ttls(self, items: list[Pending]) -> dict[Any, float] | None:
        """The `ttls=` of `Store.write` for these entries; None when the store keeps no TTLs."""
        ...
