"""The key-value fast path: a driver's own upsert of a batch, where SQLAlchemy Core is too slow.

Each database's module has one (`postgresql`, `sqlite`, `mysql`: a `KeyValueUpsert` each,
for the drivers it names); the key-value mode uses the one for its engine's driver, and
SQLAlchemy Core statements for any other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Encode = Callable[[Sequence[tuple[Any, Any]]], tuple[list[Any], list[Any]]]
"""Turns (key, value) pairs into (the keys as the driver takes them, the encoded values);
raises `SerializationError` naming the key of a value it cannot encode."""

Expiries = Sequence[Optional[int]]
"""The `expires_at` of each upsert of a batch, in order (ms since the epoch; None: never)."""


class KeyValueUpsert(ABC):
    """Upserts a batch of (key, value) pairs into a key-value table, talking to the driver directly.

    With `expires_at` (the name of a table's expiry column, see `kv.EXPIRES_AT`), each row
    also gets its deadline, from `write`'s `expiries`.
    """

    drivers: ClassVar[tuple[str, ...]]
    """The SQLAlchemy driver names (`dialect.driver`) it serves."""

    sql: str
    """Its statement, as the driver takes it (the SQL an error is reported with)."""

    def __init__(
        self,
        table: sa.Table,
        dialect: sa.engine.Dialect,
        encode: Encode,
        expires_at: str | None = None,
    ) -> None:
        preparer = dialect.identifier_preparer
        key, value = preparer.quote("key"), preparer.quote("value")
        self._key = key
        self._columns = [key, value]
        """The columns written, in the order of each row's parameters."""
        if expires_at is not None:
            self._columns.append(preparer.quote(expires_at))
        self._updated = self._columns[1:]
        """The columns an upsert of an existing key sets."""
        self._insert = f"INSERT INTO {preparer.format_table(table)} ({', '.join(self._columns)})"
        """The statement's head, which each driver's statement goes on from."""
        self._encode = encode

    def _assignments(self, template: str) -> str:
        """The SET list of an upsert of an existing key: `template` (`{c}`: a column) for each column it sets."""
        return ", ".join(template.format(c=column) for column in self._updated)

    def _rows(self, pairs: Sequence[tuple[Any, Any]], expiries: Expiries | None) -> list[list[Any]]:
        """The parameters of `pairs`, column by column (see `_columns`)."""
        keys, values = self._encode(pairs)
        return [keys, values] if expiries is None else [keys, values, list(expiries)]

    @abstractmethod
    def write(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        expiries: Expiries | None = None,
    ) -> None:
        """Upserts `upserts` in `conn`'s transaction (with their `expiries` if the table has the
        column); driver errors come out as SQLAlchemy's (`driver_errors`)."""
