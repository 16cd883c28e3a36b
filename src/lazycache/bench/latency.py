"""``lazycache bench``, latency section: how long one ``cache[key] = value`` takes while the writer flushes.

A cache on each core is filled with 100k keys, all pending (``batch_size`` 1,000,
the default). The writer thread wakes at the first 1,000 and takes its first batch,
but the store holds it at a gate. Then a foreground thread makes 50k sets of
random keys among the 100k, stamping each one with ``time.perf_counter_ns()``
before and after:

* ``idle``: the gate stays shut, the writer waits (nothing else runs);
* ``flush -> MemoryStore`` / ``flush -> SQLite``: the gate opens just before the
  first set and the writer thread flushes the 100k entries, batch by batch, to a
  ``MemoryStore`` or to a ``SQLAlchemyStore`` on a SQLite file in a temporary
  directory (a fresh file each run). Only the sets made while those 100k entries
  were being written count (a flush ends when the store has taken 100k rows: the
  queue is FIFO, so those are the original entries).

Each run gives p50, p99, p99.9 and the maximum; each figure is the best (min) over
the runs, with the spread. A plain dict's ``d[k] = v`` in the same loop is the
reference for what the stamps themselves cost.
"""

from __future__ import annotations

import gc
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from ..stores import MemoryStore
from ..stores.base import GeneratedFields, Store
from .kit.contenders import BASELINE, idle_cache, lazycache_classes
from .kit.output import format_table, human, micro, switch_interval_ms, symbols
from .kit.progress import NO_PROGRESS, Progress
from .kit.timing import best_of, spread_of, without_gc

PENDING = 100_000
SETS = 50_000
QUICK_PENDING = 10_000
QUICK_SETS = 5_000
REPEAT = 3
BATCH_SIZE = 1_000
"""The caches' batch_size: LazyWriterCache's default."""

PERCENTILES = (50.0, 99.0, 99.9)
IDLE = "idle"
FLUSH_MEMORY = "flush -> MemoryStore"
FLUSH_SQLITE = "flush -> SQLite"
SCENARIOS = (IDLE, FLUSH_MEMORY, FLUSH_SQLITE)
FLUSH_TIMEOUT = 300.0


class _GatedStore(Store[Any, Any]):
    """Wraps a store: its first write waits for `gate`; notes when `target` rows have been written."""

    def __init__(self, inner: Store[Any, Any], target: int) -> None:
        self.inner = inner
        self.target = target
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.done = threading.Event()
        self.rows = 0
        self.done_at = 0

    def load_many(self, keys: Sequence[Any]) -> Mapping[Any, Any]:
        return self.inner.load_many(keys)

    def write(
        self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]
    ) -> GeneratedFields | None:
        self.entered.set()
        self.gate.wait()
        generated = self.inner.write(upserts, deletes)
        self.rows += len(upserts) + len(deletes)
        if self.rows >= self.target and not self.done.is_set():
            self.done_at = time.perf_counter_ns()
            self.done.set()
        return generated

    def close(self) -> None:
        self.inner.close()


def _set_loop(
    c: Any, keys: Sequence[Any], clock: Callable[[], int] = time.perf_counter_ns
) -> tuple[list[int], list[int]]:
    """Sets every key in turn; (start stamps, end stamps) in ns. Only `c[k] = 2` lies between two stamps."""
    n = len(keys)
    starts = [0] * n
    ends = [0] * n
    i = 0
    for k in keys:
        t0 = clock()
        c[k] = 2
        t1 = clock()
        starts[i] = t0
        ends[i] = t1
        i += 1
    return starts, ends


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass
class LatencyRun:
    """One run: percentiles of the counted sets, in ns."""

    percentiles: dict[float, float]
    maximum: float
    counted: int
    """Sets counted: all of them when idle, those made during the flush otherwise."""
    flush_ms: float = math.nan
    """How long the writer took to write the pending entries (flush scenarios)."""


@dataclass
class LatencyCell:
    contender: str
    scenario: str
    runs: list[LatencyRun] = field(default_factory=list)

    def best(self, p: float) -> float:
        return best_of([run.percentiles[p] for run in self.runs])

    def spread(self, p: float) -> float:
        return spread_of([run.percentiles[p] for run in self.runs])

    @property
    def maximum(self) -> float:
        return best_of([run.maximum for run in self.runs])

    @property
    def counted(self) -> int:
        return min(run.counted for run in self.runs)

    @property
    def flush_ms(self) -> float:
        values = [run.flush_ms for run in self.runs if not math.isnan(run.flush_ms)]
        return min(values) if values else math.nan

    @property
    def tail_ratio(self) -> float:
        """p99.9 / p50."""
        return self.best(99.9) / self.best(50.0)


@dataclass
class LatencyReport:
    pending: int
    sets: int
    repeat: int
    batch_size: int
    contenders: list[str]
    scenarios: list[str]
    skipped: dict[str, str]
    failed: dict[str, str] = field(default_factory=dict)
    cells: list[LatencyCell] = field(default_factory=list)
    clock_overhead_ns: float = math.nan
    """Median of two back-to-back perf_counter_ns() calls: included in every figure."""

    def cell(self, contender: str, scenario: str) -> LatencyCell | None:
        for c in self.cells:
            if (c.contender, c.scenario) == (contender, scenario):
                return c
        return None


def _clock_overhead(samples: int = 20_000) -> float:
    clock = time.perf_counter_ns
    pairs = []
    for _ in range(samples):
        t0 = clock()
        t1 = clock()
        pairs.append(t1 - t0)
    pairs.sort()
    return float(pairs[len(pairs) // 2])


def _summarise(
    starts: list[int], ends: list[int], since: int = 0, until: int | None = None
) -> LatencyRun:
    window = [
        end - start
        for start, end in zip(starts, ends)
        if start >= since and (until is None or end <= until)
    ]
    window.sort()
    return LatencyRun(
        {p: percentile(window, p) for p in PERCENTILES},
        float(window[-1]) if window else math.nan,
        len(window),
    )


def _sqlite_store(directory: str, index: int) -> Store[Any, Any]:
    from ..stores.sqlalchemy import SQLAlchemyStore

    return SQLAlchemyStore(f"sqlite:///{directory}/latency-{index}.db", "lazycache_bench")


def run_lazycache(
    cls: type,
    scenario: str,
    keys: Sequence[str],
    targets: Sequence[str],
    directory: str,
    index: int,
) -> LatencyRun:
    """One run on a LazyWriterCache class: fill `keys` (all pending), then time a set of each target."""
    inner: Store[Any, Any] = (
        _sqlite_store(directory, index) if scenario == FLUSH_SQLITE else MemoryStore()
    )
    store = _GatedStore(inner, target=len(keys))
    # The writer wakes at each full batch (the default batch_size), never on a timer.
    cache = idle_cache(cls, store, batch_size=BATCH_SIZE)

    def sets() -> tuple[int, list[int], list[int]]:
        """(when the gate opened or 0, start stamps, end stamps)."""
        opened = 0
        if scenario != IDLE:
            opened = time.perf_counter_ns()
            store.gate.set()
        return (opened, *_set_loop(cache, targets))

    try:
        for i, key in enumerate(keys):
            cache[key] = i
        store.entered.wait(10.0)  # the writer has its first batch and waits at the gate
        gc.collect()
        opened, starts, ends = without_gc(sets)
        if scenario == IDLE:
            return _summarise(starts, ends)
        if not store.done.wait(FLUSH_TIMEOUT):
            raise TimeoutError(
                f"the writer did not write {len(keys)} entries within {FLUSH_TIMEOUT:.0f} s"
            )
        result = _summarise(starts, ends, opened, store.done_at)
        result.flush_ms = (store.done_at - opened) / 1e6
        return result
    finally:
        store.gate.set()
        cache.close(flush=False)
        store.close()


def run_dict(keys: Sequence[str], targets: Sequence[str]) -> LatencyRun:
    """The reference: the same loop on a plain dict holding the same keys."""
    d = {key: i for i, key in enumerate(keys)}
    gc.collect()
    starts, ends = without_gc(partial(_set_loop, d, targets))
    return _summarise(starts, ends)


def measure(
    pending: int = PENDING, sets: int = SETS, repeat: int = REPEAT, progress: Progress = NO_PROGRESS
) -> LatencyReport:
    classes, skipped = lazycache_classes()
    scenarios = list(SCENARIOS)
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        scenarios.remove(FLUSH_SQLITE)
        skipped[FLUSH_SQLITE] = (
            "SQLAlchemy not installed (pip install 'lazywritercache[sqlalchemy]')"
        )
    report = LatencyReport(
        pending, sets, repeat, BATCH_SIZE, [BASELINE, *classes], scenarios, skipped
    )
    report.clock_overhead_ns = _clock_overhead()
    rng = random.Random(7)
    keys = [f"key:{i}" for i in range(pending)]
    targets = [keys[rng.randrange(pending)] for _ in range(sets)]
    for key in keys:
        hash(key)
    plan = [(BASELINE, IDLE)] + [(name, scenario) for scenario in scenarios for name in classes]
    cells = {(name, scenario): LatencyCell(name, scenario) for name, scenario in plan}
    progress.section("latency", len(plan) * repeat)
    directory = tempfile.mkdtemp(prefix="lazycache-bench-")
    try:
        index = 0
        for _ in range(repeat):
            for name, scenario in plan:  # scenarios interleaved; the order is the same each repeat
                progress.advance(f"{name}: {scenario}")
                if name in report.failed:
                    continue
                index += 1
                try:
                    if name == BASELINE:
                        run = run_dict(keys, targets)
                    else:
                        run = run_lazycache(
                            classes[name], scenario, keys, targets, directory, index
                        )
                except Exception as exc:
                    report.failed[name] = f"{scenario} raised {exc!r}"
                    continue
                cells[name, scenario].runs.append(run)
                gc.collect()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report.cells = [
        cell for (name, _), cell in cells.items() if name not in report.failed and cell.runs
    ]
    return report


def _us(ns: float) -> str:
    if math.isnan(ns):
        return "-"
    us = ns / 1000
    return f"{us:.2f}" if us < 10 else f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def render_table(report: LatencyReport) -> str:
    times, plus_minus = symbols()
    mu = micro()
    lines = [
        f"== latency: one `cache[key] = value` while the writer flushes {human(report.pending)} pending entries "
        f"(batches of {report.batch_size:,}), {mu}s"
    ]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"FAILED {name}: {what}" for name, what in report.failed.items()]
    header = [
        "contender",
        "writer",
        "p50",
        "p99",
        "p99.9",
        "max",
        "p99.9/p50",
        "p50 vs idle",
        "p99.9 vs idle",
        "sets counted",
        "flush",
    ]
    rows = []
    for name in report.contenders:
        idle = report.cell(name, IDLE)
        for scenario in report.scenarios:
            cell = report.cell(name, scenario)
            if cell is None:
                continue
            rows.append(
                [
                    name,
                    scenario,
                    *(
                        f"{_us(cell.best(p))} {plus_minus}{cell.spread(p):.0f}%"
                        for p in PERCENTILES
                    ),
                    _us(cell.maximum),
                    f"{cell.tail_ratio:.1f}{times}",
                    "-"
                    if idle is None or cell is idle
                    else f"{cell.best(50.0) / idle.best(50.0):.2f}{times}",
                    "-"
                    if idle is None or cell is idle
                    else f"{cell.best(99.9) / idle.best(99.9):.2f}{times}",
                    f"{cell.counted:,}",
                    "-" if math.isnan(cell.flush_ms) else f"{cell.flush_ms:,.0f} ms",
                ]
            )
    lines += ["", *format_table(header, rows, left=2)]
    lines += [
        "",
        f"{human(report.sets)} sets of random keys among the {human(report.pending)} from one foreground thread; "
        f"each figure is the best (min) of {report.repeat} run{'s' if report.repeat > 1 else ''} "
        f"({plus_minus} = (max - min) / min), max = the lowest maximum of the runs.",
        "idle: the writer holds its first batch at a gate in the store (it waits, nothing else runs); "
        "flush: the gate opens before the first set, and only the sets made while the writer wrote the "
        "pending entries are counted (sets counted; flush = time to write them).",
        f"Every figure includes two perf_counter_ns() calls: {report.clock_overhead_ns:.0f} ns back to back. "
        "dict: `d[k] = v` in the same loop, for reference.",
        f"GIL: the foreground thread waits whenever the writer thread holds the GIL (hand-offs every "
        f"{switch_interval_ms()} ms), so the tail includes GIL waits as well as the core's lock.",
    ]
    return "\n".join(lines)


def report_json(report: LatencyReport) -> dict[str, Any]:
    def key(p: float) -> str:
        return f"p{p:g}".replace(".", "_")

    results = []
    for cell in report.cells:
        idle = report.cell(cell.contender, IDLE)
        entry: dict[str, Any] = {"contender": cell.contender, "scenario": cell.scenario}
        for p in PERCENTILES:
            entry[f"{key(p)}_us"] = cell.best(p) / 1000
            entry[f"{key(p)}_spread"] = cell.spread(p)
        entry["max_us"] = cell.maximum / 1000
        entry["p99_9_over_p50"] = cell.tail_ratio
        entry["p50_vs_idle"] = None if idle is None else cell.best(50.0) / idle.best(50.0)
        entry["p99_9_vs_idle"] = None if idle is None else cell.best(99.9) / idle.best(99.9)
        entry["sets_counted"] = cell.counted
        entry["flush_ms"] = None if math.isnan(cell.flush_ms) else cell.flush_ms
        entry["runs"] = [
            {
                **{f"{key(p)}_us": run.percentiles[p] / 1000 for p in PERCENTILES},
                "max_us": run.maximum / 1000,
                "sets_counted": run.counted,
                "flush_ms": None if math.isnan(run.flush_ms) else run.flush_ms,
            }
            for run in cell.runs
        ]
        results.append(entry)
    return {
        "pending": report.pending,
        "sets": report.sets,
        "repeat": report.repeat,
        "batch_size": report.batch_size,
        "contenders": report.contenders,
        "scenarios": report.scenarios,
        "skipped": report.skipped,
        "failed": report.failed,
        "clock_overhead_ns": report.clock_overhead_ns,
        "units": {
            "pNN_us": "microseconds, nearest-rank percentile of the counted sets, best (min) of `repeat` runs",
            "pNN_spread": "percent: (max - min) / min of that percentile over the runs",
            "p99_9_over_p50": "tail ratio of the best figures",
            "flush_ms": "time for the writer to write the pending entries (best run)",
        },
        "results": results,
    }
