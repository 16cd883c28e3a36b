"""Stores: where the cache's writes end up."""

from .base import GeneratedFields, Store
from .memory import MemoryStore

__all__ = ["GeneratedFields", "MemoryStore", "Store"]
