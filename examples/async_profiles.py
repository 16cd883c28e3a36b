"""An asyncio service's cache of user profiles over PostgreSQL via asyncpg (lazycache.aio).

Run against a local PostgreSQL (database `test`, user `postgres`):

    python examples/async_profiles.py [postgresql+asyncpg://postgres@127.0.0.1/test]

Checked with `mypy --strict examples/async_profiles.py`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TypedDict

import lazycache.aio
from lazycache.aio import AsyncLazyWriterCache


class Profile(TypedDict):
    name: str
    views: int


async def view(profiles: AsyncLazyWriterCache[str, Any], user: str) -> int:
    """Counts a page view: read-through on a miss, then an in-memory update, written later."""
    updated = await profiles.aupdate_entry(
        user, lambda p: {**p, "views": p["views"] + 1}, {"name": user, "views": 0}
    )
    return int(updated["views"])


async def main(url: str) -> None:
    async with await lazycache.aio.open(url, "example_profiles", maxsize=100_000) as profiles:
        await profiles.aset(
            "alice", Profile(name="Alice", views=0)
        )  # waits only if the backlog is full
        profiles["bob"] = Profile(name="Bob", views=0)  # in memory: no await needed
        counts = await asyncio.gather(*(view(profiles, "alice") for _ in range(10)))
        print("alice's views:", max(counts))
        found = await profiles.aget_many(["alice", "bob", "carol"])
        print("found:", sorted(found))
        missing: Profile | None = await profiles.aget("carol")
        print("carol:", missing)
        result = await profiles.aflush()
        print(f"flushed {result.written} entries")
    # `async with` flushed and closed the cache; the table keeps the profiles.


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1] if len(sys.argv) > 1 else "postgresql+asyncpg://postgres@127.0.0.1/test")
    )
