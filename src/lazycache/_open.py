"""`lazycache.open()`: a persistent write-behind dict over a SQL key-value table, in one call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .cache import LazyWriterCache, implementation_class
from .serializers import SerializerSpec

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine

DEFAULT_URL = "sqlite:///lazycache.db"
DEFAULT_TABLE = "lazycache"


def open(
    url: str | URL | Engine = DEFAULT_URL,
    table: str = DEFAULT_TABLE,
    *,
    serializer: SerializerSpec = "json",
    key_type: Any = str,
    engine_options: Mapping[str, Any] | None = None,
    implementation: str | None = None,
    **cache_options: Any,
) -> LazyWriterCache[Any, Any]:
    """A ready `LazyWriterCache` over the key-value table `table` of the database at `url`.

    A `redis://`, `rediss://` or `unix://` URL gives a cache over Redis (or a Redis
    Cluster) instead, keys under the prefix `table + ":"`, with the coherence channel
    on (see `lazycache.stores.redis.open_redis`).

    `url` is any SQLAlchemy URL (default: `lazycache.db`, a SQLite file in the current
    directory, in WAL mode) or an existing `Engine`; the table (columns `key`, `value`) is
    created if missing. `serializer` and `key_type` are those of `SQLAlchemyStore` (JSON
    values and str keys by default); `engine_options` go to `create_engine`;
    `implementation` picks a core ("cython" or "python", default: the best available).
    Every other keyword is a `LazyWriterCache` option (`maxsize`, `write_interval`,
    `batch_size`, ...).

    >>> with lazycache.open("sqlite:///app.db") as users:
    ...     users["alice"] = {"age": 30}       # written in the background, and on close

    The cache owns the store: closing the cache (or its being garbage-collected, or the
    interpreter's exit) flushes it and disposes of the engine the store made (an `Engine`
    passed in is left to its owner). Reading after `close()` still works.
    """
    if isinstance(url, str) and url.split("://", 1)[0].lower() in ("redis", "rediss", "unix"):
        if key_type is not str or engine_options:
            raise ValueError("key_type= and engine_options= are for SQL databases, not Redis")
        from .stores.redis import open_redis

        return open_redis(
            url,
            prefix=f"{table}:",
            serializer=serializer,
            implementation=implementation,
            **cache_options,
        )
    try:
        from .stores.sqlalchemy import SQLAlchemyStore
    except ImportError as exc:
        raise ImportError(
            f"lazycache.open() needs SQLAlchemy 2.x: pip install 'lazywritercache[sqlalchemy]' ({exc})"
        ) from exc

    cls = LazyWriterCache if implementation is None else implementation_class(implementation)
    store = SQLAlchemyStore(
        url, table, serializer=serializer, key_type=key_type, engine_options=engine_options
    )
    try:
        return cls(store, owns_store=True, **cache_options)  # closing the cache closes the store
    except BaseException:
        store.close()
        raise
