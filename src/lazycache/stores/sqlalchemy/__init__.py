"""SQLAlchemyStore: a write-behind cache over any SQL database SQLAlchemy 2.x speaks.

Two modes, chosen by what `table` is:

* **Key-value** (`table` is a name): a table `(key PRIMARY KEY, value)`, created if
  missing, whose values are serialised ("json" by default, "pickle", "msgpack" or your
  own pair; see `lazycache.serializers`). A persistent dict. With `expiry=True` the
  table has a third column, `expires_at` (milliseconds since the Unix epoch, NULL for
  never), set from an expiring cache's TTLs: reads ignore a row once it has passed,
  and `purge_expired()` deletes such rows.
* **Rows** (`table` is a `Table` or an ORM-mapped class): each cached value is one row,
  a dict of column values or an ORM instance, keyed by one column or several (a tuple
  key) that may be a secondary unique key while the database generates the primary key.
  After each batch the fields the database generated (autoincrement ids, server
  defaults, timestamps) are returned to the cache, which merges them into the values it
  holds (see `LazyWriterCache(merge_generated=...)`).

Every `write` is one transaction. Upserts use the dialect's own statement (PostgreSQL and
SQLite `INSERT ... ON CONFLICT DO UPDATE`, MySQL/MariaDB `INSERT ... ON DUPLICATE KEY
UPDATE`), a few statements per batch, never a SELECT per row; deletes are one `IN` per
chunk of keys, in the same transaction. On the key-value hot path the store talks to
the driver directly (it is where the time goes):

* PostgreSQL (psycopg 3): `INSERT ... SELECT * FROM unnest(keys, values) ON CONFLICT`
  with binary array parameters, in chunks sent in pipeline mode, so the server upserts
  one chunk while Python serialises the next.
* SQLite (sqlite3) and MySQL/MariaDB (PyMySQL, mysqlclient): the driver's `executemany`
  (PyMySQL and mysqlclient rewrite it into multi-row INSERTs).
* Any other dialect or driver: SQLAlchemy Core statements.

When the store is made it checks the table in the database (`UnusableTableError` for one
that every write would fail on) and learns which columns the database generates, which
it never writes. On MySQL/MariaDB a row larger than `max_allowed_packet` is refused
(`ValueTooLargeError`, naming its key) and statements are kept under that limit.

Driver errors are re-raised wrapped the way SQLAlchemy wraps them (`IntegrityError`,
`OperationalError`, ... with `.orig`), and a connection the driver lost is invalidated so
the pool never hands it out again. `is_recoverable` tells retryable failures (lost
connection, deadlock, serialization failure, lock timeout) from the data's fault.

The package's modules, each importing only those below it in this list (every name here
is importable from the package itself):

* `store`: `SQLAlchemyStore`, what both modes do around their table's reads and writes
  (the engine, one transaction per write, chunks of keys, writes in doubt, fork);
* `kv` and `rows`: the two modes (`KeyValueLayout`, `RowLayout`), what their table holds
  and how it is read and written;
* `layout`: what both modes do to their table (create it, check it:
  `UnusableTableError`);
* `engine`: `make_engine` (the driver a URL gets, `NETWORK_TIMEOUTS`) and `DEFAULT_URL`;
* `sessions`: writes whose connection was lost (`InDoubtSessionError`, `IN_DOUBT_TIMEOUT`);
* `postgresql`, `sqlite`, `mysql`: each database's own ways: the key-value fast path of its
  drivers; SQLite's set-up and fork guard (`configure_sqlite`, `hold_forks_while_in_use`);
  MySQL's packet limit (`ValueTooLargeError`) and row upsert guard (`KeyConflictError`);
* `fastpath`: what a key-value fast path is (`KeyValueUpsert`, the base of those three);
* `errors`: `is_recoverable_error`, by each database's error codes, and driver errors
  wrapped as SQLAlchemy wraps them.
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "lazycache.stores.sqlalchemy needs SQLAlchemy 2.x, which is not installed: "
        "pip install 'lazywritercache[sqlalchemy]' (or 'lazywritercache[postgresql]' / 'lazywritercache[mysql]' for a driver too)"
    ) from exc

if int(sa.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"lazycache.stores.sqlalchemy needs SQLAlchemy 2.x, found {sa.__version__}: pip install 'lazywritercache[sqlalchemy]'"
    )

from .engine import DEFAULT_URL, NETWORK_TIMEOUTS, make_engine, with_installed_driver
from .errors import is_recoverable_error
from .kv import EXPIRES_AT
from .layout import UnusableTableError
from .mysql import KeyConflictError, ValueTooLargeError
from .sessions import IN_DOUBT_TIMEOUT, InDoubtSessionError
from .sqlite import FORK_WAIT, SQLITE_BUSY_TIMEOUT, configure_sqlite, hold_forks_while_in_use
from .store import SQLAlchemyStore

__all__ = [
    "DEFAULT_URL",
    "EXPIRES_AT",
    "FORK_WAIT",
    "IN_DOUBT_TIMEOUT",
    "NETWORK_TIMEOUTS",
    "SQLITE_BUSY_TIMEOUT",
    "InDoubtSessionError",
    "KeyConflictError",
    "SQLAlchemyStore",
    "UnusableTableError",
    "ValueTooLargeError",
    "configure_sqlite",
    "hold_forks_while_in_use",
    "is_recoverable_error",
    "make_engine",
    "with_installed_driver",
]
