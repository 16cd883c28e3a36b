"""The key-value fast path: a driver's own upsert of a batch, where SQLAlchemy Core is too slow.

Each database's module has one (`postgresql`, `sqlite`, `mysql`: a `KeyValueUpsert` each,
for the drivers it names); the key-value mode uses the one for its engine's driver, and
SQLAlchemy Core statements for any other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Encode = Callable[[Sequence[tuple[Any, Any]]], tuple[list[Any], list[Any]]]
"""Turns (key, value) pairs into (the keys as the driver takes them, the encoded values);
raises `SerializationError` naming the key of a value it cannot encode."""


class KeyValueUpsert(ABC):
    """Upserts a batch of (key, value) pairs into a key-value table, talking to the driver directly."""

    drivers: ClassVar[tuple[str, ...]]
    """The SQLAlchemy driver names (`dialect.driver`) it serves."""

    sql: str
    """Its statement, as the driver takes it (the SQL an error is reported with)."""

    def __init__(self, table: sa.Table, dialect: sa.engine.Dialect, encode: Encode) -> None:
        preparer = dialect.identifier_preparer
        self._table_name = preparer.format_table(table)
        self._key, self._value = preparer.quote("key"), preparer.quote("value")
        self._encode = encode

    @abstractmethod
    def write(self, conn: Connection, upserts: Sequence[tuple[Any, Any]]) -> None:
        """Upserts `upserts` in `conn`'s transaction; driver errors come out as SQLAlchemy's (`driver_errors`)."""
