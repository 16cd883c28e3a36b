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
from .fastpath import Encode, Expiries

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
        self,
        table: sa.Table,
        dialect: sa.engine.Dialect,
        encode: Encode,
        expires_at: str | None = None,
        *,
        binary: bool,
    ) -> None:
        super().__init__(table, dialect, encode, expires_at)
        key_sql = table.c.key.type.compile(dialect=dialect)
        arrays = [f"%b::{key_sql}[]", f"%b::{'BYTEA' if binary else 'TEXT'}[]"]
        if expires_at is not None:
            arrays.append("%b::BIGINT[]")
        self.sql = (
            f"{self._insert} SELECT * FROM unnest({', '.join(arrays)}) "
            f"ON CONFLICT ({self._key}) DO UPDATE SET " + self._assignments("{c} = EXCLUDED.{c}")
        )

    def write(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        expiries: Expiries | None = None,
    ) -> None:
        sql = self.sql
        count = len(upserts)
        with driver_errors(conn, sql) as driver:
            with driver.cursor(binary=True) as cursor:
                if count <= _SINGLE_STATEMENT:
                    cursor.execute(sql, self._rows(upserts, expiries))
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
                        end = start + chunk
                        cursor.execute(
                            sql,
                            self._rows(
                                upserts[start:end],
                                None if expiries is None else expiries[start:end],
                            ),
                        )
