"""A dict-backed store: for tests, examples, and caches that only need write-behind semantics."""
from __future__ import annotations

import threading
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .base import GeneratedFields, K, Store, V


class MemoryStore(Store[K, V]):
    """Keeps what the cache writes in `data`, a plain dict of what has been persisted."""

    def __init__(self, data: Optional[Mapping[K, V]] = None) -> None:
        self.data: Dict[K, V] = dict(data or {})
        self._lock = threading.Lock()

    def load_many(self, keys: Sequence[K]) -> Dict[K, V]:
        with self._lock:
            data = self.data
            return {key: data[key] for key in keys if key in data}

    def write(self, upserts: Sequence[Tuple[K, V]], deletes: Sequence[K]) -> Optional[GeneratedFields]:
        with self._lock:
            self.data.update(upserts)
            for key in deletes:
                self.data.pop(key, None)
        return None

    def __repr__(self) -> str:
        return f"MemoryStore({len(self.data)} keys)"
