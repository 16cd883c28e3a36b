"""How the cache layer journals a change: the scope it makes the change in.

A compound write of the cache layer (`pop`, `setdefault`, `update_entry`, `clear`, ...)
runs in `cache._journaling()`: a `JournalScope` holds the journal's lock around the change
and the append of its record (the record first: if the append fails, nothing changes;
a change that does not happen undoes its record). A cache without a journal gets
`NO_JOURNAL`, which does nothing, so the same code serves both. The hot writes of a
journaled cache (`cache[key] = value`, `del`) are its own class's: `lazycache._journaled_layer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .journal import Journal
from .serializers import Serializer, SerializerSpec, get_serializer

if TYPE_CHECKING:
    # Only for the type checker: typing_extensions is not a runtime dependency.
    from typing_extensions import Self

    from .stores.base import Store

Mark = Optional[tuple[int, int]]
"""Where the journal stood before an append (`Journal.undo` goes back to it); None: no journal."""


class NoJournal:
    """The journaling scope of a cache without a journal: does nothing."""

    enabled = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def encode(self, key: Any, value: Any) -> bytes:
        return b""  # never written: append ignores it

    def append(self, *records: bytes) -> Mark:
        return None

    def undo(self, mark: Mark) -> None:
        return None


NO_JOURNAL = NoJournal()


class JournalScope(NoJournal):
    """Holds the journal's lock around a change of the cache and the append of its record."""

    enabled = True

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def __enter__(self) -> Self:
        self.journal.lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.journal.lock.release()

    def encode(self, key: Any, value: Any) -> bytes:
        return self.journal.encode(key, value)

    def append(self, *records: bytes) -> Mark:
        return self.journal.append(*records)

    def undo(self, mark: Mark) -> None:
        if mark is not None:
            self.journal.undo(mark)


def serializer_for_journal(store: Store[Any, Any], spec: SerializerSpec | None) -> Serializer:
    """What encodes journaled values: `spec` if given, else the store's serializer, else JSON.

    Never pickle unless chosen (here or for the store): replaying pickle runs code.
    """
    if spec is not None:
        return get_serializer(spec)
    own = getattr(store, "serializer", None)
    return own if isinstance(own, Serializer) else get_serializer("json")
