"""Cold reads: many tasks read keys that are not in memory, from PostgreSQL.

What a service sees after a restart, or after another worker's writes invalidated its
copies: every read misses. `--tasks` tasks read `--keys` keys (each once, in a random
order), three ways, side by side in each round:

* `lazycache`: `await cache.aget(key)` on a cache that holds nothing yet. The keys the
  tasks miss in one pass of the loop load together, in one store call.
* `one load per miss`: the same cache, each miss loaded alone in the loop's default
  executor (`cache._load_missing`, the read-through a thread's `get` does): what `aget`
  did before it gathered misses.
* `direct`: async SQLAlchemy on asyncpg, one `SELECT` per read (what services do today).

Reported per way: reads/s, store calls, each read's p50 and p99 latency, and lazycache's
reads/s over the way's, measured in the same round; with `--rounds N`, the medians of the rounds.

    .venv/bin/python benchmarks/asyncio_cold_reads.py [--keys 2000] [--tasks 32] [--rounds 3]
    make bench-cold-reads BENCH_ARGS="--rounds 5"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import lazycache.aio

ASYNC_URL = "postgresql+asyncpg://postgres@127.0.0.1/test"
WAYS = ("lazycache", "one load per miss", "direct")


class CountedLoads:
    """Counts the store calls of a cache's read-through (the store's own method, wrapped)."""

    def __init__(self, store: Any) -> None:
        self.calls = 0
        name = "load_many_with_ttls" if store.reports_ttls else "load_many"
        inner = getattr(store, name)

        def counted(keys: Any) -> Any:
            self.calls += 1
            return inner(keys)

        setattr(store, name, counted)


async def read_all(
    keys: list[str], tasks: int, read: Callable[[str], Awaitable[Any]]
) -> tuple[float, list[float]]:
    """(seconds, each read's latency): `tasks` tasks reading `keys` between them, each once."""
    todo = iter(keys)
    latencies: list[float] = []

    async def reader() -> None:
        for key in todo:
            started = time.perf_counter()
            value = await read(key)
            latencies.append(time.perf_counter() - started)
            assert value == {"n": int(key[1:])}, (key, value)

    started = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(tasks)))
    return time.perf_counter() - started, latencies


async def direct(table: str, keys: list[str], tasks: int) -> tuple[float, list[float], int]:
    """(seconds, latencies, store calls): one SELECT per read, on an async engine."""
    engine = create_async_engine(ASYNC_URL, pool_size=tasks)
    statement = sa.text(f"SELECT value FROM {table} WHERE key = :key")

    async def read(key: str) -> Any:
        async with engine.connect() as conn:
            row = await conn.scalar(statement, {"key": key})
        return json.loads(row)

    async with engine.connect():  # (the pool's first connection, outside the timing)
        pass
    seconds, latencies = await read_all(keys, tasks, read)
    await engine.dispose()
    return seconds, latencies, len(keys)


async def cached(
    table: str, keys: list[str], tasks: int, gathered: bool
) -> tuple[float, list[float], int]:
    """(seconds, latencies, store calls) through a cache that holds nothing yet.

    `gathered`: aget; else each miss loaded alone in the default executor.
    """
    cache = await lazycache.aio.open(ASYNC_URL, table, write_interval=3600)
    counted = CountedLoads(cache.store)
    loop = asyncio.get_running_loop()

    async def alone(key: str) -> Any:
        return await loop.run_in_executor(None, cache._load_missing, key)

    seconds, latencies = await read_all(keys, tasks, cache.aget if gathered else alone)
    assert len(cache) == len(keys)
    await cache.aclose()
    return seconds, latencies, counted.calls


async def one_round(table: str, keys: list[str], tasks: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for way in WAYS:
        if way == "direct":
            seconds, latencies, calls = await direct(table, keys, tasks)
        else:
            seconds, latencies, calls = await cached(table, keys, tasks, way == "lazycache")
        latencies.sort()
        figures[way] = {
            "reads/s": len(keys) / seconds,
            "calls": calls,
            "p50": 1000 * latencies[len(latencies) // 2],
            "p99": 1000 * latencies[int(0.99 * len(latencies))],
        }
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    table = f"lcbench_cold_{uuid.uuid4().hex[:8]}"
    keys = [f"k{i}" for i in range(args.keys)]
    async with await lazycache.aio.open(ASYNC_URL, table) as writer:
        for key in keys:
            writer[key] = {"n": int(key[1:])}
    rounds = []
    try:
        for number in range(args.rounds):
            random.Random(number).shuffle(keys)
            rounds.append(await one_round(table, keys, args.tasks))
            print(f"round {number + 1}: {rounds[-1]}", flush=True)
    finally:
        engine = sa.create_engine(lazycache.aio.sync_url(ASYNC_URL))
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()

    def median(way: str, figure: str) -> float:
        return statistics.median(r[way][figure] for r in rounds)

    print()
    print(
        f"{args.keys:,} cold reads by {args.tasks} tasks, PostgreSQL on 127.0.0.1; "
        f"medians of {args.rounds} rounds"
    )
    print()
    print("| way | reads/s | store calls | p50 ms | p99 ms | reads/s, lazycache / this way |")
    print("| --- | --- | --- | --- | --- | --- |")
    for way in WAYS:
        print(
            f"| {way} | {median(way, 'reads/s'):,.0f} | {median(way, 'calls'):,.0f} | "
            f"{median(way, 'p50'):.2f} | {median(way, 'p99'):.2f} | "
            f"{statistics.median(r['lazycache']['reads/s'] / r[way]['reads/s'] for r in rounds):.1f}× |"
        )


if __name__ == "__main__":
    asyncio.run(main())
