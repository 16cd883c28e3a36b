"""The event loop's lag while an AsyncLazyWriterCache flushes 100k pending entries to PostgreSQL.

A probe task sleeps 1 ms at a time and records how late each wake-up is (the loop's lag:
how long a request handler would wait to run). It runs while `await cache.aflush()`
writes the backlog. The figure that counts is the p99 of the lag (target: <= 5 ms).

Each run uses a fresh table; with `--runs N` the figures are the medians of the runs' (on a
shared machine one run says little). `--compare` alternates runs with the writer's GIL
pacing (lazycache._pacing) on and off, and `--sync` measures the synchronous flush's
throughput the same way (no loop, no probe): what pacing costs a flush.

    .venv/bin/python benchmarks/asyncio_loop_lag.py [--batch-size 1000 200] [--runs 5] [--compare] [--sync]
    make bench-loop-lag BENCH_ARGS="--runs 5 --compare --sync"
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import lazycache
import lazycache._pacing
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


def summary(ms: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of lags in ms."""
    return statistics.median(ms), percentile(ms, 0.99), max(ms)


@contextmanager
def pacing(on: bool) -> Iterator[None]:
    """The writer's GIL pacing as given (on: the library's slice; off: an infinite one)."""
    saved = lazycache._pacing.SLICE
    lazycache._pacing.SLICE = saved if on else math.inf
    try:
        yield
    finally:
        lazycache._pacing.SLICE = saved


def value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user {i}", "views": i % 97}


def drop(url: str, table: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(lazycache.aio.sync_url(url))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    engine.dispose()


async def probed(awaitable: Any) -> tuple[list[float], Any]:
    """(the probe's lags in ms while `awaitable` runs, its result)."""
    lags: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(lags, stop))
    try:
        result = await awaitable
    finally:
        stop.set()
        await prober
    return [lag * 1000 for lag in lags], result


def flush_elsewhere(url: str, entries: int, batch_size: int, ready: Any, go: Any) -> float:
    """In a child process: fills a cache, says so, waits for the word, and flushes it."""
    return sync_run(url, entries, batch_size, lambda: (ready.set(), go.wait()))


async def lag_run(
    url: str, entries: int, batch_size: int, pool: ProcessPoolExecutor | None
) -> dict[str, Any]:
    """One run: the controls, then the lag while `entries` pending entries flush."""
    loop = asyncio.get_running_loop()
    # The controls measure the lag the machine itself causes: the same probe on an idle loop,
    # and (with a pool) while another process flushes the same entries: the same load on
    # the CPUs and the database, without the GIL to share.
    idle, _ = await probed(asyncio.sleep(1.0))
    elsewhere: list[float] = []
    if pool is not None:
        manager = multiprocessing.get_context("spawn").Manager()
        with manager:
            ready, go = manager.Event(), manager.Event()
            flushed = loop.run_in_executor(
                pool, flush_elsewhere, url, entries, batch_size, ready, go
            )
            await loop.run_in_executor(None, ready.wait)

            async def after_go() -> float:
                go.set()
                return await flushed

            elsewhere, _ = await probed(after_go())
    table = f"lcbench_{uuid.uuid4().hex[:8]}"
    cache = await lazycache.aio.open(url, table, write_interval=3600.0, batch_size=batch_size)
    try:
        for i in range(entries):
            cache[f"user:{i}"] = value(i)
        started = time.perf_counter()
        # The writer thread may have started on full batches: both count.
        lags, _ = await probed(cache.aflush())
        elapsed = time.perf_counter() - started
        return {
            "lag": summary(lags),
            "idle": summary(idle),
            "elsewhere": summary(elsewhere) if elsewhere else None,
            "probes": len(lags),
            "rate": entries / elapsed,
        }
    finally:
        await cache.aclose(flush=False)
        await loop.run_in_executor(None, drop, url, table)


def sync_run(
    url: str, entries: int, batch_size: int, before: Callable[[], object] = lambda: None
) -> float:
    """Entries/s of a synchronous `flush()` of `entries` pending entries (no loop, no probe)."""
    table = f"lcbench_{uuid.uuid4().hex[:8]}"
    cache = lazycache.open(
        lazycache.aio.sync_url(url), table, write_interval=3600.0, batch_size=entries
    )
    try:
        for i in range(entries):
            cache[f"user:{i}"] = value(i)
        cache._batch_writer.batch_size = batch_size  # set now: no batch was full before the flush
        before()
        started = time.perf_counter()
        cache.flush()
        return entries / (time.perf_counter() - started)
    finally:
        cache.close(flush=False)
        drop(url, table)


def medians(rows: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(statistics.median(column) for column in zip(*rows))


def report_lags(label: str, runs: list[dict[str, Any]]) -> None:
    lag = medians([run["lag"] for run in runs])
    idle = medians([run["idle"] for run in runs])
    each = ", ".join(f"{run['lag'][1]:.1f}" for run in runs)
    line = (
        f"  {label:10s} lag p50/p99/max {lag[0]:.2f} / {lag[1]:.2f} / {lag[2]:.1f} ms"
        f" (p99 of each run: {each}); {statistics.median(run['rate'] for run in runs):,.0f} entries/s;"
        f" controls p99: idle {idle[1]:.2f} ms"
    )
    if all(run["elsewhere"] for run in runs):
        elsewhere = medians([run["elsewhere"] for run in runs])
        line += f", flush in another process {elsewhere[1]:.2f} ms (max {elsewhere[2]:.1f})"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1/test")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1000])
    parser.add_argument("--runs", type=int, default=1, help="runs of each setting (medians)")
    parser.add_argument(
        "--compare", action="store_true", help="alternate runs with the GIL pacing on and off"
    )
    parser.add_argument(
        "--sync-only", action="store_true", help="only the synchronous flush's throughput"
    )
    parser.add_argument(
        "--no-process-control",
        action="store_true",
        help="skip the control run that flushes from another process",
    )
    parser.add_argument(
        "--sync", action="store_true", help="the synchronous flush's throughput too (no probe)"
    )
    parser.add_argument(
        "--gil-slice",
        type=float,
        default=None,
        help="the pacing's slice in ms (default: the library's)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in ms (default: the interpreter's, 5 ms)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)
    if args.gil_slice is not None:
        lazycache._pacing.SLICE = args.gil_slice / 1000
    import psycopg

    settings = [True, False] if args.compare else [True]
    print(
        f"{args.entries:,} entries to {args.url} (psycopg {psycopg.__version__}, {psycopg.pq.__impl__}"
        f" implementation; core {lazycache.LazyWriterCache.implementation}); switch interval"
        f" {sys.getswitchinterval() * 1000:g} ms; GIL slice {lazycache._pacing.SLICE * 1000:g} ms;"
        f" {args.runs} run(s) each, medians; load average before: {os.getloadavg()}"
    )
    pool = (
        None
        if args.no_process_control or args.sync_only
        else ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    )
    for batch_size in args.batch_size:
        lag_runs: dict[bool, list[dict[str, Any]]] = {on: [] for on in settings}
        sync_rates: dict[bool, list[float]] = {on: [] for on in settings}
        for _ in range(args.runs):
            for on in settings:  # alternated, so that the machine's load weighs on both alike
                with pacing(on):
                    if not args.sync_only:
                        lag_runs[on].append(
                            asyncio.run(lag_run(args.url, args.entries, batch_size, pool))
                        )
                    if args.sync or args.sync_only:
                        sync_rates[on].append(sync_run(args.url, args.entries, batch_size))
        print(f"batch_size {batch_size}:")
        for on in settings:
            if lag_runs[on]:
                report_lags("paced" if on else "not paced", lag_runs[on])
        if args.sync or args.sync_only:
            for on in settings:
                rates = sync_rates[on]
                print(
                    f"  {'paced' if on else 'not paced':12s} sync flush {statistics.median(rates):,.0f} entries/s"
                    f" (each run: {', '.join(f'{rate:,.0f}' for rate in rates)})"
                )
    if pool is not None:
        pool.shutdown()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
