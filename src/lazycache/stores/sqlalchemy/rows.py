"""The row mode: each cached value is one row of a `Table` or an ORM-mapped class.

A value is a dict of column values or an instance of the mapped class, keyed by one column
or several (a tuple key) that may be a secondary unique key while the database generates
the primary key. Upserts are the dialect's own statements (PostgreSQL, SQLite, MySQL and
MariaDB), a few per batch; after each batch the fields the database generated
(autoincrement ids, server defaults, timestamps) are read back, with RETURNING where the
dialect has it, and returned to the cache, which merges them into the values it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapper, attributes, make_transient_to_detached

from ...serializers import SerializationError
from ..base import GeneratedFields
from . import mysql
from .layout import TableLayout, UnusableTableError

RowBatch = list[tuple[Any, dict[str, Any]]]
"""Upserts as (key, bind parameters by column key): what `RowLayout.prepare` makes of them."""


class RowLayout(TableLayout[RowBatch]):
    """A `Table` or the table of an ORM-mapped class (one table, no inheritance) whose rows are the values."""

    mode = "rows"

    def __init__(
        self,
        engine: Engine,
        table: sa.Table | type,
        *,
        key: str | Sequence[str] | None = None,
        generated: Sequence[str] | None = None,
        create: bool = True,
        returning: bool | None = None,
        chunk_size: int = 1000,
    ) -> None:
        super().__init__(engine, chunk_size)
        self._mapper: Mapper[Any] | None = None
        if isinstance(table, sa.Table):
            self.table = table
            fields = {column.key: column for column in table.columns}
        else:
            mapper: Any = sa.inspect(table, raiseerr=False)
            if not isinstance(mapper, Mapper):
                raise TypeError(
                    f"table must be a table name, a Table or an ORM-mapped class, not {table!r}"
                )
            if not isinstance(mapper.local_table, sa.Table) or mapper.inherits is not None:
                raise TypeError(
                    f"{mapper.class_.__name__} must be mapped to one Table (no inheritance)"
                )
            self._mapper = mapper
            self.table = mapper.local_table
            fields = {}
            for prop in mapper.column_attrs:
                columns = [
                    c for c in prop.columns if isinstance(c, sa.Column) and c.table is self.table
                ]
                if len(columns) == 1:
                    fields[prop.key] = columns[0]
        self._fields: dict[str, sa.Column[Any]] = fields
        field_of = {column: name for name, column in fields.items()}
        self._field_of: dict[sa.Column[Any], str] = field_of
        if key is None:
            key_columns = tuple(self.table.primary_key.columns)
            if not key_columns:
                raise ValueError(
                    f"table {self.table.fullname!r} has no primary key: say which columns are the key with key="
                )
        else:
            names = (key,) if isinstance(key, str) else tuple(key)
            unknown = [name for name in names if name not in fields]
            if unknown or not names:
                raise ValueError(
                    f"key {unknown or names!r}: not columns of {self.table.fullname!r} (have {sorted(fields)})"
                )
            key_columns = tuple(fields[name] for name in names)
        if frozenset(key_columns) not in _unique_column_sets(self.table):
            raise ValueError(
                f"the key columns {[c.name for c in key_columns]} of {self.table.fullname!r} are not declared unique: "
                "make them the primary key, a UniqueConstraint or a unique Index"
            )
        missing = [column.name for column in key_columns if column not in field_of]
        if missing:
            raise ValueError(f"key columns {missing} are not mapped attributes")
        self.key_columns = key_columns
        self._key_fields = tuple(field_of[column] for column in key_columns)
        self._read_columns = [
            column for column in self.table.columns if column in field_of
        ]  # what a read selects
        self._read_names = [field_of[column] for column in self._read_columns]
        self._key_positions = [self._read_columns.index(column) for column in key_columns]
        if generated is not None:
            unknown = [name for name in generated if name not in fields]
            if unknown:
                raise ValueError(f"generated {unknown!r}: not columns of {self.table.fullname!r}")
            self._generated = tuple(
                fields[name] for name in generated if fields[name] not in key_columns
            )
        dialect = engine.dialect
        if dialect.name not in ("postgresql", "sqlite", *mysql.NAMES):
            raise NotImplementedError(
                f"row mode needs a native upsert: PostgreSQL, SQLite or MySQL/MariaDB, not {dialect.name}"
            )
        self._connect_once()
        if create:
            self._create_table()
        reflected = self._check_table(self._read_columns)
        self._learn_generated(reflected)
        never_written = [column for column in key_columns if column in self._never_sent]
        if never_written:
            raise UnusableTableError(
                self.table.fullname,
                f"the database generates the key column(s) {[c.name for c in never_written]} and refuses "
                "values for them (computed, or an identity GENERATED ALWAYS): the cache key must be a value "
                "you give; key the cache by another unique column",
            )
        if generated is None:
            self._generated = tuple(
                column
                for column in self.table.columns
                if column not in key_columns
                and column in field_of
                and (
                    _is_generated(column, self.table)
                    or column in self._never_sent
                    or column in self._server_updated
                )
            )
        can_return = bool(dialect.insert_returning and dialect.insert_executemany_returning)
        if returning and not can_return:
            raise ValueError(
                f"{dialect.name} {dialect.server_version_info} has no INSERT ... RETURNING for an upsert"
            )
        self._returning = can_return if returning is None else bool(returning)
        self._upsert_statements: dict[tuple[str, ...], Any] = {}

    def _learn_generated(self, reflected: Mapping[sa.Column[Any], Any]) -> None:
        """What the database refuses values for, fills in, or sets on every update, as declared and as reflected."""
        # What the database refuses values for (issue 12 #4): never written, whatever the
        # value holds; and what it fills in when a row leaves it out: left out when None.
        self._never_sent = frozenset(
            column
            for column, info in reflected.items()
            if _never_written(column)
            or info.get("computed") is not None
            or bool((info.get("identity") or {"always": False})["always"])
        )
        self._fills = frozenset(
            column
            for column, info in reflected.items()
            if _is_generated(column, self.table)
            or column in self._never_sent
            or info.get("default") is not None
            or info.get("autoincrement") is True
            or info.get("identity") is not None
        )
        # What the server sets on every update (MySQL's ON UPDATE CURRENT_TIMESTAMP, which
        # an explicit value, even the one merged back, would override): left to it.
        self._server_updated = frozenset(
            column
            for column, info in reflected.items()
            if column.server_onupdate is not None
            or "on update" in str(info.get("default") or "").lower()
        )

    def describe(self) -> str:
        key = ", ".join(self._key_fields)
        return f"rows of {self._mapper.class_.__name__ if self._mapper is not None else 'Table'} by ({key})"

    # ------------------------------------------------------------------ reading
    def load(
        self,
        conn: Connection,
        keys: Sequence[Any],
        found: dict[Any, Any],
        ttls: dict[Any, float],
    ) -> None:  # rows never expire: ttls stays empty
        names = self._read_names
        positions = self._key_positions
        single = len(positions) == 1
        for row in conn.execute(sa.select(*self._read_columns).where(self.key_filter(keys))):
            key = row[positions[0]] if single else tuple(row[p] for p in positions)
            found[key] = self._value_from_row(dict(zip(names, row)))

    def _value_from_row(self, values: dict[str, Any]) -> Any:
        if self._mapper is None:
            return values
        instance = self._mapper.class_manager.new_instance()
        for name, value in values.items():
            attributes.set_committed_value(instance, name, value)
        make_transient_to_detached(instance)  # as if loaded by a session that has since closed
        return instance

    # ------------------------------------------------------------------ writing
    def prepare(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> RowBatch:
        """(key, bind parameters by column key) per upsert; SerializationError for a value that is no row."""
        return [(key, self._row_params(key, value)) for key, value in upserts]

    def _row_params(self, key: Any, value: Any) -> dict[str, Any]:
        mapper = self._mapper
        if isinstance(value, Mapping):
            source: Mapping[str, Any] = value
            unknown = [name for name in source if name not in self._fields]
            if unknown:
                raise SerializationError(
                    key, ValueError(f"not columns of {self.table.fullname!r}: {unknown}")
                )
        elif mapper is not None and isinstance(value, mapper.class_):
            loaded = sa.inspect(value).dict  # the attributes set or loaded; never triggers a load
            source = {name: loaded[name] for name in self._fields if name in loaded}
        else:
            expected = (
                f"a dict or a {mapper.class_.__name__}"
                if mapper is not None
                else "a dict of column values"
            )
            raise SerializationError(
                key, TypeError(f"expected {expected}, got {type(value).__name__}")
            )
        key_values = key if len(self._key_fields) > 1 else (key,)
        if not isinstance(key_values, tuple) or len(key_values) != len(self._key_fields):
            raise SerializationError(
                key,
                TypeError(f"expected a key of {len(self._key_fields)} values {self._key_fields}"),
            )
        params: dict[str, Any] = {}
        for name, key_value in zip(self._key_fields, key_values):
            held = source.get(name)
            if held is not None and held != key_value:
                raise SerializationError(
                    key, ValueError(f"its {name}={held!r} contradicts its key {key!r}")
                )
            params[self._fields[name].key] = key_value
        generated, fills, never_sent = self._generated, self._fills, self._never_sent
        for name, item in source.items():
            column = self._fields[name]
            if (
                column in self.key_columns
                or column in never_sent
                or (item is None and (column in fills or column in generated))
            ):
                continue
            params[column.key] = item
        return params

    def upsert(
        self, conn: Connection, batch: RowBatch, ttls: Mapping[Any, float] | None
    ) -> GeneratedFields | None:
        groups: dict[tuple[str, ...], RowBatch] = {}
        for key, params in batch:  # executemany needs the same columns in every row of a statement
            groups.setdefault(tuple(sorted(params)), []).append((key, params))
        calls = [  # every row is sized before any is sent
            (columns, part)
            for columns, group in groups.items()
            for part in (
                self._statement_parts(conn, group)
                if self.packets is not None
                else [[params for _, params in group]]
            )
        ]
        generated: dict[Any, dict[str, Any]] = {}
        for columns, group in calls:
            try:
                result = conn.execute(self._upsert_statement(columns), group)
            except sa.exc.DBAPIError as exc:
                if self.engine.dialect.name in mysql.NAMES and mysql.is_key_conflict(exc):
                    raise mysql.KeyConflictError(
                        exc, [column.name for column in self.key_columns]
                    ) from exc
                raise
            if self._returning and self._generated:
                self._collect(result, generated)
        if self._generated and not self._returning:
            keys = [key for key, _ in batch]
            selected = (*self.key_columns, *self._generated)
            for start in range(0, len(keys), self.chunk_size):
                chunk = keys[start : start + self.chunk_size]
                self._collect(
                    conn.execute(sa.select(*selected).where(self.key_filter(chunk))), generated
                )
        return generated or None

    def _collect(self, result: Any, generated: dict[Any, dict[str, Any]]) -> None:
        width = len(self.key_columns)
        names = [self._field_of[column] for column in self._generated]
        for row in result:
            key = row[0] if width == 1 else tuple(row[:width])
            generated[key] = dict(zip(names, row[width:]))

    def _upsert_statement(self, columns: tuple[str, ...]) -> Any:
        statement = self._upsert_statements.get(columns)
        if statement is not None:
            return statement
        table = self.table
        key_names = {column.key for column in self.key_columns}
        insert, proposed = self._native_insert()
        # On a conflict every written column takes the proposed value, except the columns the
        # database or SQLAlchemy maintains on update: a server_onupdate (ON UPDATE
        # CURRENT_TIMESTAMP, declared or in the database; a trigger) is left to the server, an `onupdate` is applied, as
        # SQLAlchemy would on an UPDATE (it does not on an upsert's). The cached value's copy
        # of such a column is what the last write returned, so writing it back would freeze it.
        updates: dict[str, Any] = {}
        for column in table.columns:
            if column.key in key_names:
                continue
            default: Any = column.onupdate  # a ColumnDefault: its `arg` is what to write
            if default is not None:
                if default.is_callable:
                    updates[column.key] = sa.bindparam(
                        f"lazycache_onupdate_{column.key}",
                        callable_=partial(default.arg, None),
                        type_=column.type,
                    )
                else:
                    updates[column.key] = default.arg
            elif column.key in columns and column not in self._server_updated:
                updates[column.key] = proposed[column.key]
        if not updates:  # only the key: a no-op update, so that the row is still returned
            first_key = self.key_columns[0].key
            updates[first_key] = proposed[first_key]
        if self.engine.dialect.name in mysql.NAMES:
            statement = mysql.guarded_upsert(insert, self.key_columns, updates, self.engine.dialect)
        else:
            statement = insert.on_conflict_do_update(
                index_elements=list(self.key_columns), set_=updates
            )
        if self._returning and self._generated:
            statement = statement.returning(*self.key_columns, *self._generated)
        self._upsert_statements[columns] = statement
        return statement


# ----------------------------------------------------------------------------- table shapes


def _unique_column_sets(table: sa.Table) -> list[frozenset[sa.Column[Any]]]:
    sets = [frozenset(table.primary_key.columns)]
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            sets.append(frozenset(constraint.columns))
    for index in table.indexes:
        if index.unique and all(isinstance(c, sa.Column) for c in index.expressions):
            sets.append(frozenset(index.columns))
    sets.extend(frozenset([column]) for column in table.columns if column.unique)
    return sets


def _is_generated(column: sa.Column[Any], table: sa.Table) -> bool:
    return bool(
        column is table.autoincrement_column
        or column.server_default is not None
        or column.server_onupdate is not None
        or column.default is not None
        or column.onupdate is not None
        or column.computed is not None
        or column.identity is not None
    )


def _never_written(column: sa.Column[Any]) -> bool:
    """Whether the database refuses any value for `column`: a computed column, an identity GENERATED ALWAYS."""
    return column.computed is not None or bool(
        column.identity is not None and column.identity.always
    )
