"""Cache statistics: a snapshot taken by `LazyWriterCache.stats`."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was created, plus its current size and backlog."""

    hits: int
    """Reads answered from memory."""
    misses: int
    """Reads that found nothing in memory (whether or not the store then had the key)."""
    loads: int
    """Values read through from the store (never marked dirty)."""
    stores: int
    """Values set (`cache[k] = v` and friends)."""
    deletes: int
    """Keys deleted (each becomes a delete in a later flush)."""
    evictions: int
    """Clean entries dropped by the pruner to stay near `maxsize`."""
    writes: int
    """Entries (upserts and deletes) committed to the store."""
    failed_writes: int
    """Entries in batches the store failed to write (each failed attempt counts)."""
    flushes: int
    """Batches committed to the store (one transaction each)."""
    size: int
    """Live entries in memory now."""
    pending: int
    """Entries whose latest change has not reached the store yet."""

    @property
    def hit_ratio(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"size={self.size} pending={self.pending} | hits={self.hits} misses={self.misses} "
            f"(hit ratio {self.hit_ratio:.1%}) loads={self.loads} | stores={self.stores} "
            f"deletes={self.deletes} evictions={self.evictions} | writes={self.writes} "
            f"failed_writes={self.failed_writes} flushes={self.flushes}"
        )
