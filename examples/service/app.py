"""A small FastAPI service of user profiles and page-view counters on PostgreSQL.

One setting, LAZYCACHE_SERVICE_MODE, switches how it reaches the database:

* `direct`: async SQLAlchemy, one transaction per request (what such services do today);
* `lazycache` (default): a `lazycache.aio` cache; reads from memory (read-through on a
  miss), writes acknowledged from memory and written to the database in batches. Workers
  (processes) keep each other's caches coherent over PostgreSQL LISTEN/NOTIFY.

    LAZYCACHE_SERVICE_MODE=lazycache DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test \\
        uvicorn examples.service.app:app --workers 2

Environment: DATABASE_URL (an async SQLAlchemy URL), LAZYCACHE_SERVICE_TABLE (default
`service_users`), LAZYCACHE_SERVICE_WRITE_INTERVAL (seconds, default 0.5).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import lazycache.aio
from lazycache.aio import AsyncLazyWriterCache
from lazycache.coherence.postgres import PostgresNotifyCoherence

MODE = os.environ.get("LAZYCACHE_SERVICE_MODE", "lazycache")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")
TABLE = os.environ.get("LAZYCACHE_SERVICE_TABLE", "service_users")
WRITE_INTERVAL = float(os.environ.get("LAZYCACHE_SERVICE_WRITE_INTERVAL", "0.5"))

if MODE not in ("direct", "lazycache"):
    raise ValueError(f"LAZYCACHE_SERVICE_MODE must be 'direct' or 'lazycache', not {MODE!r}")

# The table both modes use: lazycache's key-value layout (a JSON document per user).
metadata = sa.MetaData()
users = sa.Table(
    TABLE,
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class ProfileIn(BaseModel):
    name: str
    email: Optional[str] = None  # noqa: UP045 (pydantic evaluates it on Python 3.9)


class State:
    engine: AsyncEngine | None = None
    cache: AsyncLazyWriterCache[str, Any] | None = None


state = State()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(DATABASE_URL, pool_size=20)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all, checkfirst=True)
    if MODE == "direct":
        state.engine = engine
        yield
        await engine.dispose()
        return
    # The channel's own connections are synchronous ones (psycopg), like the store's.
    channel = PostgresNotifyCoherence(
        lazycache.aio.sync_url(DATABASE_URL).render_as_string(hide_password=False),
        f"{TABLE}_invalidate",
    )
    state.cache = await lazycache.aio.open(
        engine, TABLE, write_interval=WRITE_INTERVAL, coherence=channel, maxsize=1_000_000
    )
    await engine.dispose()  # the cache made its own connections from the engine's URL
    async with state.cache:  # flushed and closed at shutdown
        yield


app = FastAPI(lifespan=lifespan)


def _profile(user_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"id": user_id, **value}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"mode": MODE}


# The ceilings of the benchmark: each endpoint's request and answer, of the same shape,
# without the store. Each is registered just before its endpoint, so that the router tries
# as many routes for it as for the endpoint, less one (FastAPI tries them in order).
@app.get("/echo/{user_id}")
async def echo_get_user(user_id: str) -> dict[str, Any]:
    """GET /users/{id}'s work without the store: its ceiling."""
    return _profile(user_id, {"name": "user", "views": 0})


@app.get("/users/{user_id}")
async def get_user(user_id: str) -> dict[str, Any]:
    if state.cache is not None:
        value = await state.cache.aget(user_id)
    else:
        assert state.engine is not None
        async with state.engine.connect() as conn:
            row = await conn.scalar(sa.select(users.c.value).where(users.c.key == user_id))
        value = None if row is None else json.loads(row)
    if value is None:
        raise HTTPException(404, f"no user {user_id!r}")
    return _profile(user_id, value)


@app.put("/echo/{user_id}")
async def echo_put_user(user_id: str, profile: ProfileIn) -> dict[str, Any]:
    """PUT /users/{id}'s work without the store (parse, validate, answer): its ceiling."""
    return _profile(user_id, {**profile.model_dump(), "views": 0})


@app.put("/users/{user_id}")
async def put_user(user_id: str, profile: ProfileIn) -> dict[str, Any]:
    if state.cache is not None:

        def replace(current: dict[str, Any]) -> dict[str, Any]:
            return {**profile.model_dump(), "views": current.get("views", 0)}

        value = await state.cache.aupdate_entry(user_id, replace, {})
        return _profile(user_id, value)
    assert state.engine is not None
    async with state.engine.begin() as conn:
        row = await conn.scalar(
            sa.select(users.c.value).where(users.c.key == user_id).with_for_update()
        )
        views = 0 if row is None else json.loads(row).get("views", 0)
        value = {**profile.model_dump(), "views": views}
        await _upsert(conn, user_id, value)
    return _profile(user_id, value)


@app.post("/echo/{user_id}/views")
async def echo_add_view(user_id: str) -> dict[str, Any]:
    """POST /users/{id}/views's work without the store: its ceiling."""
    return {"id": user_id, "views": 1}


@app.post("/users/{user_id}/views")
async def add_view(user_id: str) -> dict[str, Any]:
    if state.cache is not None:

        def count(current: dict[str, Any]) -> dict[str, Any]:
            return {**current, "views": current.get("views", 0) + 1}

        try:
            value = await state.cache.aupdate_entry(user_id, count)
        except KeyError:
            raise HTTPException(404, f"no user {user_id!r}") from None
        return {"id": user_id, "views": value["views"]}
    assert state.engine is not None
    async with state.engine.begin() as conn:
        row = await conn.scalar(
            sa.select(users.c.value).where(users.c.key == user_id).with_for_update()
        )
        if row is None:
            raise HTTPException(404, f"no user {user_id!r}")
        value = json.loads(row)
        value["views"] = value.get("views", 0) + 1
        await _upsert(conn, user_id, value)
    return {"id": user_id, "views": value["views"]}


async def _upsert(conn: Any, user_id: str, value: dict[str, Any]) -> None:
    from sqlalchemy.dialects.postgresql import insert

    statement = insert(users).values(key=user_id, value=json.dumps(value, separators=(",", ":")))
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[users.c.key], set_={"value": statement.excluded.value}
        )
    )
