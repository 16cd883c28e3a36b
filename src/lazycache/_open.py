"""Opening a cache in one call: `lazycache.open()` (a SQL key-value table, or Redis by URL) and
`lazycache.open_redis()` (Redis with all its options), with the coherence channel they make."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .cache import CacheOptions, LazyWriterCache, check_options, implementation_class
from .coherence import Coherence
from .serializers import SerializerSpec

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.types import TypeEngine
    from typing_extensions import Unpack  # typing's from 3.11 on; only the type checker needs it

    from .stores.redis import KeyEncoder, TTLSpec

K = TypeVar("K")


class OpenOptions(CacheOptions, total=False):
    """The keywords `lazycache.open()` passes on: the cache's options, and those of a Redis store.

    `ttl`, `key_encoder`, `cluster`, `channel` and `client_options` are for a Redis URL
    only (see `open_redis`); `coherence` takes a bool there.
    """

    coherence: Coherence | bool | None
    ttl: TTLSpec
    key_encoder: KeyEncoder | None
    cluster: bool | None
    channel: str | None
    client_options: Mapping[str, Any] | None


_OPEN_PARAMETERS = frozenset(
    {"url", "table", "serializer", "key_type", "engine_options", "expiry", "implementation"}
)
_REDIS_ONLY = frozenset({"ttl", "key_encoder", "cluster", "channel", "client_options"})

DEFAULT_URL = "sqlite:///lazycache.db"
DEFAULT_TABLE = "lazycache"

REDIS_URL_PREFIXES = ("redis://", "rediss://", "unix://")
"""How the URLs redis-py takes begin (`redis.Redis.from_url`, lower case only): a cache over Redis."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:")
"""What starts a URL with a mistake after its scheme (`sqlite:/app.db`): two letters or more, so that a
Windows drive (`C:`) still reads as a path."""


def is_redis_url(url: object) -> bool:
    """Whether `url` is a Redis URL: one that redis-py takes (`redis://`, `rediss://`, `unix://`)."""
    return isinstance(url, str) and url.startswith(REDIS_URL_PREFIXES)


def _path_to_sqlite(path: str | os.PathLike[str]) -> URL:
    """The URL of the SQLite file at `path` (what `sqlite:///` + `path` means), or ValueError for a
    string that is neither a URL nor a path."""
    from sqlalchemy.engine import URL

    database = os.fspath(path)
    if isinstance(path, str) and (not path or _SCHEME.match(path)):
        raise ValueError(
            f"lazycache.open(): {path!r} is not a URL (scheme://...) nor a file path; for example"
            " 'sqlite:///app.db' (a SQLite file), 'postgresql://user@host/db', 'mysql://user@host/db',"
            " 'redis://host:6379/0', or a path such as 'app.db' for a SQLite file"
        )
    return URL.create("sqlite", database=database)


# The key type of the cache follows `key_type` (str by default); its value type is the
# serializer's business, so Any: annotate the variable to say it
# (`users: LazyWriterCache[str, dict[str, int]] = lazycache.open(...)`).
@overload
def open(
    url: str | os.PathLike[str] | URL | Engine = ...,
    table: str = ...,
    *,
    serializer: SerializerSpec = ...,
    engine_options: Mapping[str, Any] | None = ...,
    expiry: bool = ...,
    implementation: str | None = ...,
    **cache_options: Unpack[OpenOptions],
) -> LazyWriterCache[str, Any]: ...
@overload
def open(
    url: str | os.PathLike[str] | URL | Engine = ...,
    table: str = ...,
    *,
    serializer: SerializerSpec = ...,
    key_type: TypeEngine[Any] | type[TypeEngine[Any]],
    engine_options: Mapping[str, Any] | None = ...,
    expiry: bool = ...,
    implementation: str | None = ...,
    **cache_options: Unpack[OpenOptions],
) -> LazyWriterCache[Any, Any]: ...
@overload
def open(
    url: str | os.PathLike[str] | URL | Engine = ...,
    table: str = ...,
    *,
    serializer: SerializerSpec = ...,
    key_type: type[K],
    engine_options: Mapping[str, Any] | None = ...,
    expiry: bool = ...,
    implementation: str | None = ...,
    **cache_options: Unpack[OpenOptions],
) -> LazyWriterCache[K, Any]: ...
def open(
    url: str | os.PathLike[str] | URL | Engine = DEFAULT_URL,
    table: str = DEFAULT_TABLE,
    *,
    serializer: SerializerSpec = "json",
    key_type: Any = str,
    engine_options: Mapping[str, Any] | None = None,
    expiry: bool = False,
    implementation: str | None = None,
    **cache_options: Any,
) -> LazyWriterCache[Any, Any]:
    """A ready `LazyWriterCache` over the key-value table `table` of the database at `url`.

    A `redis://`, `rediss://` or `unix://` URL gives a cache over Redis (or a Redis
    Cluster) instead, keys under the prefix `table + ":"`, with the coherence channel
    on (see `open_redis`).

    `url` is any SQLAlchemy URL (default: `lazycache.db`, a SQLite file in the current
    directory, in WAL mode), an existing `Engine`, or a file path (a `str` without `://`, or
    a `pathlib.Path`): `open("app.db")` is `open("sqlite:///app.db")`, a SQLite file
    relative to the current directory. A URL that names no driver uses the one lazycache's
    extra installs: `postgresql://` psycopg 3 (`[postgresql]`), `mysql://` and `mariadb://`
    PyMySQL (`[mysql]`) unless mysqlclient is installed; a driver named in the URL
    (`postgresql+psycopg2://`) is always the one used. The table (columns `key`, `value`) is
    created if missing. `serializer` and `key_type` are those of `SQLAlchemyStore` (JSON
    values and str keys by default); `engine_options` go to `create_engine`;
    `expiry=True` gives the table an `expires_at` column, so that the cache's expiry
    (`expire_after_write`, `set(..., ttl=)`) reaches the database: reads ignore a row once
    its time has passed, and `cache.store.purge_expired()` deletes such rows (see
    `SQLAlchemyStore`; Redis keys carry their TTL without it).
    `implementation` picks a core ("cython" or "python", default: the best available).
    Every other keyword is a `LazyWriterCache` option (`maxsize`, `write_interval`,
    `batch_size`, ...).

    >>> with lazycache.open("sqlite:///app.db") as users:
    ...     users["alice"] = {"age": 30}       # written in the background, and on close

    An existing table that cannot work (no unique key column, a key column of another
    type, a read-only SQLite file, ...) raises
    `lazycache.stores.sqlalchemy.UnusableTableError` (a ValueError) naming it, here
    rather than at every write. Processes opening a new table at once all succeed.

    The cache owns the store: closing the cache (or its being garbage-collected, or the
    interpreter's exit) flushes it and disposes of the engine the store made (an `Engine`
    passed in is left to its owner). After `close()`, reads are answered from memory only
    (a miss raises RuntimeError rather than reconnect to a store the cache has closed).

    A misspelt keyword raises TypeError here, before any connection, suggesting the
    closest name; type checkers catch it too (the options are typed: `OpenOptions`).
    """
    redis = is_redis_url(url)
    # Checked before anything connects; over SQL, the Redis store's options are not taken.
    accepted = _OPEN_PARAMETERS | OpenOptions.__optional_keys__
    check_options("lazycache.open()", cache_options, accepted if redis else accepted - _REDIS_ONLY)
    if redis:
        if key_type is not str or engine_options or expiry:
            raise ValueError(
                "key_type=, engine_options= and expiry= are for SQL databases, not Redis"
                " (Redis keys carry their TTL without an expiry column)"
            )
        return open_redis(
            url,
            prefix=f"{table}:",
            serializer=serializer,
            implementation=implementation,
            **cache_options,
        )
    # Without SQLAlchemy this raises the module's ImportError, which says what to install.
    from .stores.sqlalchemy import SQLAlchemyStore

    if isinstance(url, os.PathLike) or (isinstance(url, str) and "://" not in url):
        url = _path_to_sqlite(url)
    cls = LazyWriterCache if implementation is None else implementation_class(implementation)
    store = SQLAlchemyStore(
        url,
        table,
        serializer=serializer,
        key_type=key_type,
        engine_options=engine_options,
        expiry=expiry,
    )
    try:
        return cls(store, owns_store=True, **cache_options)  # closing the cache closes the store
    except BaseException:
        store.close()
        raise


# The defaults of url and prefix are RedisStore's (stores.redis.DEFAULT_URL, DEFAULT_PREFIX),
# spelt out because redis-py, which that module needs, is optional; a test holds them equal.
def open_redis(
    url: Any = "redis://127.0.0.1:6379/0",
    *,
    prefix: str | bytes = "lazycache:",
    serializer: SerializerSpec = "json",
    ttl: TTLSpec = None,
    key_encoder: KeyEncoder | None = None,
    cluster: bool | None = None,
    coherence: Coherence | bool | None = True,
    channel: str | None = None,
    client_options: Mapping[str, Any] | None = None,
    implementation: str | None = None,
    **cache_options: Any,
) -> LazyWriterCache[Any, Any]:
    """A ready `LazyWriterCache` over a `RedisStore` at `url` (a URL or a redis-py client).

    `coherence=True` (default) subscribes the cache to the invalidation channel of its
    prefix (`channel`, default `prefix + "invalidate"`, with `@db` appended for a
    database other than 0: `lazycache.coherence.redis.default_channel`), so that caches in
    other processes over the same Redis and prefix drop what this one writes, and the other
    way round; pass False for a cache that is the only writer, or a `Coherence` of your
    own. `prefix`, `serializer`, `ttl`, `key_encoder`, `cluster` and `client_options` are
    `RedisStore`'s; `implementation` picks the core ("cython" or "python"). Every other
    keyword is a `LazyWriterCache` option. Needs redis-py: `pip install 'lazywritercache[redis]'`.

    >>> with lazycache.open_redis("redis://127.0.0.1:6379/0", prefix="users:") as users:
    ...     users["alice"] = {"age": 30}

    The cache owns the store and the channel: closing the cache (or its being garbage-
    collected, or the interpreter's exit) flushes it, then closes the channel and the
    store (and so the client the store made from a URL; a client passed in is left to its
    owner). After `close()`, reads are answered from memory only (a miss raises RuntimeError).
    """
    # Without redis-py these raise an ImportError that says what to install.
    from .coherence.redis import RedisCoherence, default_channel
    from .stores.redis import RedisStore

    if not (coherence is None or isinstance(coherence, (bool, Coherence))):
        raise TypeError(
            f"coherence must be True, False or a Coherence, not {type(coherence).__name__}"
        )
    cls = LazyWriterCache if implementation is None else implementation_class(implementation)
    store = RedisStore(
        url,
        prefix,
        serializer,
        ttl,
        key_encoder=key_encoder,
        cluster=cluster,
        client_options=client_options,
    )
    channel_made = None
    try:
        if coherence is True:
            channel_made = RedisCoherence(store, channel or default_channel(store))
            coherence = channel_made
        elif coherence is False:
            coherence = None
        # Closing the cache closes the store, and the channel it was given.
        return cls(store, coherence=coherence, owns_store=True, **cache_options)
    except BaseException:
        if channel_made is not None:
            channel_made.close()
        store.close()
        raise
