"""Moved to `lazycache.coherence.postgres`; this old import path still works."""

from ..coherence.postgres import MAX_PAYLOAD, PostgresNotifyCoherence, conninfo_of

__all__ = ["MAX_PAYLOAD", "PostgresNotifyCoherence", "conninfo_of"]
