"""PostgreSQL: the key-value fast path (psycopg 3) and the lock that serialises creating a table."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..._pacing import GilPacer
from . import fastpath
from .errors import driver_errors
from .fastpath import Encode

_SINGLE_STATEMENT = 64
"""Key-value batches up to this size go as one statement; larger ones are pipelined in chunks
(measured: one statement is faster below ~64 rows, chunks of 32+ rows above)."""


def lock_table_creation(conn: Connection, name: str) -> None:
    """Takes, for the rest of `conn`'s transaction, an advisory lock for creating the table `name`.

    Creators of one table take turns: two at once would both find it missing, and the second
    CREATE would fail (a unique violation in PostgreSQL's catalog).
    """
    digest = hashlib.blake2b(f"lazycache create {name}".encode(), digest_size=8).digest()
    lock = int.from_bytes(digest, "big", signed=True)  # an advisory lock id is a signed 64-bit int
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))


class KeyValueUpsert(fastpath.KeyValueUpsert):
    """psycopg 3: `INSERT ... SELECT * FROM unnest(keys, values) ON CONFLICT DO UPDATE`.

    Binary array parameters; a larger batch goes in chunks sent in pipeline mode, so that
    the server upserts one chunk while Python encodes the next.
    """

    drivers = ("psycopg",)

    def __init__(
        self, table: sa.Table, dialect: sa.engine.Dialect, encode: Encode, *, binary: bool
    ) -> None:
        super().__init__(table, dialect, encode)
        key, value = self._key, self._value
        key_sql = table.c.key.type.compile(dialect=dialect)
        value_sql = "BYTEA" if binary else "TEXT"
        self.sql = (
            f"INSERT INTO {self._table_name} ({key}, {value}) "
            f"SELECT * FROM unnest(%b::{key_sql}[], %b::{value_sql}[]) "
            f"ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
        )

    def write(self, conn: Connection, upserts: Sequence[tuple[Any, Any]]) -> None:
        sql, encode = self.sql, self._encode
        count = len(upserts)
        with driver_errors(conn, sql) as driver:
            with driver.cursor(binary=True) as cursor:
                if count <= _SINGLE_STATEMENT:
                    cursor.execute(sql, encode(upserts))
                    return
                # Pipeline mode: each chunk is sent without waiting for the previous one's
                # result, so the server upserts chunk i while Python encodes chunk i + 1.
                # Nothing blocks between chunks: the pacer lets other threads (an event
                # loop) have the GIL every millisecond or so.
                chunk = max(32, min(256, count // 8))
                pacer = GilPacer()
                with driver.pipeline():
                    for start in range(0, count, chunk):
                        if start:
                            pacer.pace()
                        cursor.execute(sql, encode(upserts[start : start + chunk]))
