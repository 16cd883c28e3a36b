"""The key-value mode: a table `(key PRIMARY KEY, value)` of serialised values, a persistent dict.

Values are serialised ("json" by default, "pickle", "msgpack" or your own pair; see
`lazycache.serializers`). Writes go through the driver's own fast path where there is one
(`postgresql`, `sqlite`, `mysql`: this is where the time goes), else through SQLAlchemy
Core. With `expiry=True` the table has a third column, `expires_at` (written by the same
fast paths).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ...serializers import SerializationError, Serializer
from ..base import GeneratedFields
from . import mysql, postgresql, sqlite
from .fastpath import KeyValueUpsert
from .layout import TableLayout, UnusableTableError

EXPIRES_AT = "expires_at"
"""The expiry column of a key-value table made with `expiry=True` (ms since the epoch, NULL: never)."""

KeyType = Union[type, "sa.types.TypeEngine[Any]"]
"""What `key_type=` takes: str, int, uuid.UUID, bytes, or a SQLAlchemy type."""


class KeyValueLayout(TableLayout[Sequence[tuple[Any, Any]]]):
    """A table `(key, value)`, or `(key, value, expires_at)`, created if missing."""

    mode = "kv"

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        serializer: Serializer,
        key_type: KeyType = str,
        schema: str | None = None,
        create: bool = True,
        chunk_size: int = 1000,
        expiry: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(engine, chunk_size)
        self.serializer: Serializer = serializer
        self.expiry = expiry
        self.clock = clock
        self._connect_once()
        self.table = sa.Table(
            name,
            sa.MetaData(),
            sa.Column(
                "key",
                _key_column_type(key_type, engine),
                primary_key=True,
                autoincrement=False,
            ),
            sa.Column("value", _value_column_type(serializer.binary), nullable=False),
            *([sa.Column(EXPIRES_AT, sa.BigInteger, nullable=True)] if expiry else []),
            schema=schema,
        )
        if create:
            self._create_table()
        self.key_columns = (self.table.c.key,)
        reflected = self._check_table(list(self.table.columns))
        self._check_value_column(reflected[self.table.c.value]["type"])
        dialect = engine.dialect
        self._key_bind = self.table.c.key.type.dialect_impl(dialect).bind_processor(dialect)
        # Keys of the wrong type would be stored converted on one database and refused on
        # another (SQLite turns 1 into '1' in a text column; PostgreSQL will not compare
        # them): refuse them everywhere.
        self._key_class = key_type if key_type in (str, int, uuid.UUID, bytes) else None
        self.fast_path: KeyValueUpsert | None = self._fast_path()

    def _check_value_column(self, stored: sa.types.TypeEngine[Any]) -> None:
        """An existing table's value column must be of the serializer's kind (text or binary)."""
        binary_column = isinstance(stored, (sa.LargeBinary, sa.types._Binary))
        text_column = isinstance(stored, sa.String)
        if (self.serializer.binary and text_column) or (
            not self.serializer.binary and binary_column
        ):
            raise UnusableTableError(
                self.table.fullname,
                f"it keeps {'text' if text_column else 'binary'} values, but the "
                f"{self.serializer.name!r} serializer makes {'bytes' if self.serializer.binary else 'text'}",
            )

    def _fast_path(self) -> KeyValueUpsert | None:
        """The driver-level upsert of the key-value hot path, or None to go through Core."""
        table, dialect, encode = self.table, self.engine.dialect, self._encode
        expires_at = EXPIRES_AT if self.expiry else None
        name, driver = dialect.name, dialect.driver
        if name == "postgresql" and driver in postgresql.KeyValueUpsert.drivers:
            return postgresql.KeyValueUpsert(
                table, dialect, encode, expires_at, binary=self.serializer.binary
            )
        if name == "sqlite" and driver in sqlite.KeyValueUpsert.drivers:
            return sqlite.KeyValueUpsert(table, dialect, encode, expires_at)
        if name in mysql.NAMES and driver in mysql.KeyValueUpsert.drivers:
            assert self.packets is not None
            return mysql.KeyValueUpsert(table, dialect, encode, expires_at, limit=self.packets)
        return None

    def describe(self) -> str:
        return f"key-value, {self.serializer.name}"

    # ------------------------------------------------------------------ reading
    def _wrong_key(self, key: Any) -> str:
        assert self._key_class is not None
        return f"the keys of {self.table.fullname!r} are {self._key_class.__name__}, not {type(key).__name__}: {key!r}"

    def load(
        self,
        conn: Connection,
        keys: Sequence[Any],
        found: dict[Any, Any],
        ttls: dict[Any, float],
    ) -> None:
        key_class = self._key_class
        if key_class is not None:
            for key in keys:
                if not isinstance(key, key_class):
                    raise TypeError(self._wrong_key(key))
        loads = self.serializer.loads
        table = self.table
        columns = [table.c.key, table.c.value]
        where: list[sa.ColumnElement[bool]] = [table.c.key.in_(keys)]
        now = 0
        if self.expiry:
            expires_at = table.c[EXPIRES_AT]
            now = self._now_ms()
            columns.append(expires_at)
            where.append(sa.or_(expires_at.is_(None), expires_at > now))
        for row in conn.execute(sa.select(*columns).where(*where)):
            key = row[0]
            try:
                found[key] = loads(row[1])
            except Exception as exc:
                raise SerializationError(key, exc) from exc
            if self.expiry and row[2] is not None:
                ttls[key] = max(row[2] - now, 1) / 1000

    # ------------------------------------------------------------------ expiry
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def purge_expired(self) -> int:
        if not self.expiry:
            return super().purge_expired()
        expires_at = self.table.c[EXPIRES_AT]
        with self.engine.begin() as conn:
            result = conn.execute(sa.delete(self.table).where(expires_at <= self._now_ms()))
            return int(result.rowcount)

    # ------------------------------------------------------------------ writing
    def prepare(
        self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]
    ) -> Sequence[tuple[Any, Any]]:
        """Checks the keys of `deletes`; the upserts are encoded in the transaction, chunk by chunk."""
        if self._key_class is not None:
            for key in deletes:
                if not isinstance(key, self._key_class):
                    raise SerializationError(key, TypeError(self._wrong_key(key)))
        return upserts

    def upsert(
        self,
        conn: Connection,
        batch: Sequence[tuple[Any, Any]],
        ttls: Mapping[Any, float] | None,
    ) -> GeneratedFields | None:
        if self.fast_path is None:
            self._upsert_core(conn, batch, ttls)
        else:
            self.fast_path.write(conn, batch, self._expiries(batch, ttls) if self.expiry else None)
        return None

    def _expiries(
        self, upserts: Sequence[tuple[Any, Any]], ttls: Mapping[Any, float] | None
    ) -> list[int | None]:
        """The `expires_at` of each upsert: now plus its TTL (at least 1 ms), or None (no TTL)."""
        now = self._now_ms()
        expiries: list[int | None] = []
        for key, _ in upserts:
            left = ttls.get(key) if ttls else None
            expiries.append(None if left is None else now + max(1, math.ceil(left * 1000)))
        return expiries

    def _encode(self, pairs: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
        """(keys as the driver takes them, encoded values) of a slice of upserts."""
        dumps = self.serializer.dumps
        try:
            values = [dumps(value) for _, value in pairs]
        except Exception:
            for key, value in pairs:  # find the culprit: raises SerializationError naming it
                self.serializer.encode(key, value)
            raise
        keys = [key for key, _ in pairs]
        key_class = self._key_class
        if key_class is not None:
            for key in keys:
                if not isinstance(key, key_class):
                    raise SerializationError(key, TypeError(self._wrong_key(key)))
        if self._key_bind is not None:
            keys = [self._key_bind(key) for key in keys]
        return keys, values

    def _upsert_core(
        self,
        conn: Connection,
        upserts: Sequence[tuple[Any, Any]],
        ttls: Mapping[Any, float] | None,
    ) -> None:
        """Any dialect: the dialect's upsert if SQLAlchemy has one, else delete then insert."""
        encode = self.serializer.encode
        key_class = self._key_class
        params = []
        for key, value in upserts:
            if key_class is not None and not isinstance(key, key_class):
                raise SerializationError(key, TypeError(self._wrong_key(key)))
            params.append({"key": key, "value": encode(key, value)})
        if self.expiry:
            for row, expires in zip(params, self._expiries(upserts, ttls)):
                row[EXPIRES_AT] = expires
        table = self.table
        name = self.engine.dialect.name
        updated = ("value", EXPIRES_AT) if self.expiry else ("value",)
        if name in ("postgresql", "sqlite"):
            insert, proposed = self._native_insert()
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[table.c.key],
                    set_={column: proposed[column] for column in updated},
                ),
                params,
            )
        elif name in mysql.NAMES:
            insert, proposed = self._native_insert()
            statement = insert.on_duplicate_key_update(
                {column: proposed[column] for column in updated}
            )
            keyed = [(key, row) for (key, _), row in zip(upserts, params)]
            for part in self._statement_parts(conn, keyed):
                conn.execute(statement, part)
        else:
            keys = [key for key, _ in upserts]
            for start in range(0, len(keys), self.chunk_size):
                conn.execute(
                    sa.delete(table).where(table.c.key.in_(keys[start : start + self.chunk_size]))
                )
            conn.execute(sa.insert(table), params)


# ----------------------------------------------------------------------------- column types


def _key_column_type(key_type: KeyType, engine: Engine) -> sa.types.TypeEngine[Any]:
    if isinstance(key_type, sa.types.TypeEngine):
        return key_type
    if isinstance(key_type, type) and issubclass(key_type, sa.types.TypeEngine):
        return key_type()
    if key_type is str:
        if engine.dialect.name in mysql.NAMES:
            return mysql.string_key_type(engine.dialect)
        return sa.String()
    if key_type is int:
        return sa.BigInteger()
    if key_type is uuid.UUID:
        return sa.Uuid()
    if key_type is bytes:
        return sa.LargeBinary().with_variant(mysql.bytes_key_type(), *mysql.NAMES)
    raise TypeError(
        f"key_type must be str, int, uuid.UUID, bytes or a SQLAlchemy type, not {key_type!r}"
    )


def _value_column_type(binary: bool) -> sa.types.TypeEngine[Any]:
    plain: sa.types.TypeEngine[Any] = sa.LargeBinary() if binary else sa.Text()
    return plain.with_variant(mysql.long_value_type(binary), *mysql.NAMES)
