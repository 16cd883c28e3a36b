"""A dict-backed store: for tests, examples, and caches that only need write-behind semantics."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from .base import GeneratedFields, K, Store, V


class MemoryStore(Store[K, V]):
    """Keeps what the cache writes in `data`, a plain dict of what has been persisted."""

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self.data: dict[K, V] = dict(data or {})
        self._lock = threading.Lock()

    def load_many(self, keys: Sequence[K]) -> dict[K, V]:
        with self._lock:
            data = self.data
            return {key: data[key] for key in keys if key in data}

    def write(self, upserts: Sequence[tuple[K, V]], deletes: Sequence[K]) -> GeneratedFields | None:
        with self._lock:
            self.data.update(upserts)
            for key in deletes:
                self.data.pop(key, None)
        return None

    def after_fork_in_child(self) -> None:
        # A parent thread may have held the lock at the fork (writing): the child's is its own.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self.data)} keys)"
