"""Cache statistics: a snapshot taken by `LazyWriterCache.stats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    expirations: int
    """Clean entries dropped because they expired (on a read of them, or by the pruner)."""
    writes: int
    """Entries (upserts and deletes) committed to the store."""
    failed_writes: int
    """Entries in batches the store failed to write (each failed attempt counts)."""
    flushes: int
    """Batches committed to the store (one transaction each)."""
    retries: int
    """Batches put back after a recoverable failure, to be retried with backoff."""
    write_errors: int
    """Keys in the error path now: rejected by the store, reported to `on_write_error`, not rewritten since."""
    size: int
    """Live entries in memory now."""
    pending: int
    """Entries whose latest change has not reached the store yet."""
    oldest_pending_age: float
    """Seconds since the oldest pending change was made (0.0 if none), to within the write interval."""
    last_flush_duration: float
    """Seconds the last flush that wrote something took."""
    last_batch_size: int
    """Entries in the last batch committed."""

    @property
    def hit_ratio(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"size={self.size} pending={self.pending} | hits={self.hits} misses={self.misses} "
            f"(hit ratio {self.hit_ratio:.1%}) loads={self.loads} | stores={self.stores} "
            f"deletes={self.deletes} evictions={self.evictions} expirations={self.expirations} | writes={self.writes} "
            f"failed_writes={self.failed_writes} flushes={self.flushes} retries={self.retries} "
            f"write_errors={self.write_errors} | oldest pending {self.oldest_pending_age:.3f}s, "
            f"last flush {self.last_flush_duration * 1000:.1f} ms, last batch {self.last_batch_size}"
        )
