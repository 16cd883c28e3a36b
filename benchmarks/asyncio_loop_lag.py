"""The event loop's lag while an AsyncLazyWriterCache flushes 100k pending entries to PostgreSQL.

A probe task sleeps 1 ms at a time and records how late each wake-up is (the loop's lag:
how long a request handler would wait to run). It runs while `await cache.aflush()`
writes the backlog. The figure that counts is the p99 of the lag (target: <= 5 ms).

    .venv/bin/python benchmarks/asyncio_loop_lag.py [--url postgresql+asyncpg://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid

import lazycache.aio


async def probe(lags: list[float], stop: asyncio.Event, interval: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        planned = loop.time() + interval
        await asyncio.sleep(interval)
        lags.append(max(0.0, loop.time() - planned))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(url: str, entries: int, batch_size: int) -> None:
    table = f"lcbench_{uuid.uuid4().hex[:8]}"
    cache = await lazycache.aio.open(url, table, write_interval=3600.0, batch_size=batch_size)
    try:
        # The control: the same probe on the same machine with nothing else on the loop or in
        # the cache's threads (on a loaded machine, the scheduler's share of the lag).
        idle: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(idle, stop))
        await asyncio.sleep(2.0)
        stop.set()
        await prober
        for i in range(entries):
            cache[f"user:{i}"] = {"id": i, "name": f"user {i}", "views": i % 97}
        lags: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(lags, stop))
        pending = cache.pending
        started = time.perf_counter()
        await cache.aflush()  # the writer thread may have started on full batches: both count
        elapsed = time.perf_counter() - started
        stop.set()
        await prober
        ms = [lag * 1000 for lag in lags]
        idle_ms = [lag * 1000 for lag in idle]
        print(f"store: {cache.store!r}")
        print(f"flushed {pending} entries in {elapsed:.2f}s ({pending / elapsed:,.0f}/s)")
        print(
            f"switch interval: {sys.getswitchinterval() * 1000:g} ms, load average: {os.getloadavg()}"
        )
        print(
            f"loop lag over {len(ms)} probes: p50 {statistics.median(ms):.2f} ms, "
            f"p99 {percentile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms (target p99 <= 5 ms)"
        )
        print(
            f"control, idle loop, {len(idle_ms)} probes: p50 {statistics.median(idle_ms):.2f} ms, "
            f"p99 {percentile(idle_ms, 0.99):.2f} ms, max {max(idle_ms):.2f} ms"
        )
    finally:
        await cache.aclose(flush=False)
        import sqlalchemy as sa

        engine = sa.create_engine(lazycache.aio.sync_url(url))
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1/test")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in ms (default: the interpreter's, 5 ms)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)
    asyncio.run(main(args.url, args.entries, args.batch_size))
