"""``lazycache bench``, threads section: aggregate get throughput of several reader threads.

N reader threads (1, 5, 10, 20 by default) run get-hit (``c[k]``, the generated loop
of the ops section) on one structure of 20k keys, each walking the keys from a
different offset, in chunks of 1,000, for a fixed wall-clock duration. The
aggregate throughput is every reader's operations divided by the window from
the first reader's start to the last reader's stop (each reader stamps both, so
operations outside the window are never counted). The same again with one
writer thread setting existing keys (``c[k] = v``, lazycache: already pending)
for the whole window; its own rate is reported too.

With the GIL (CPython's default build) only one thread runs Python code at a
time: these figures measure what concurrency costs (GIL hand-offs every
``sys.getswitchinterval()``, and any lock convoy inside a structure), not a
parallel speed-up. Throughput with N readers close to one reader's means readers
do not get in each other's way; well below it means they do.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .kit.contenders import BASELINE, load_contenders
from .kit.output import format_table, human, rate, switch_interval_ms, symbols
from .kit.progress import NO_PROGRESS, Progress
from .kit.timing import GET_ITEM, SET_ITEM, Runs, rotated, without_gc
from .kit.workload import Workload

THREAD_COUNTS = (1, 5, 10, 20)
QUICK_THREAD_COUNTS = (1, 5)
KEYS = 20_000
QUICK_KEYS = 2_000
DURATION = 0.15
"""Seconds of each timed window."""
QUICK_DURATION = 0.01
REPEAT = 3
CHUNK = 1_000
"""Keys per generated-loop call: a thread checks whether to stop once per chunk."""


@dataclass
class ThreadCell(Runs):
    """The runs of one contender × reader count × with or without the writer."""

    contender: str
    threads: int
    writer: bool
    samples: list[float] = field(default_factory=list)
    """Aggregate reader ns/op of each run: window / operations of all readers."""
    writer_samples: list[float] = field(default_factory=list)
    """The writer thread's sets per second in each run (with the writer only)."""
    baseline: float = math.nan
    """dict's best ns/op with the same threads."""
    one_reader: float = math.nan
    """This contender's best ns/op with one reader, same writer setting."""

    @property
    def ops_per_second(self) -> float:
        return 1e9 / self.best

    @property
    def ratio(self) -> float:
        """ns/op over dict's: above 1, slower than dict."""
        return self.best / self.baseline

    @property
    def scaling(self) -> float:
        """Aggregate throughput relative to one reader's: 1.0 = no loss from contention."""
        return self.one_reader / self.best

    @property
    def writer_rate(self) -> float:
        """The writer's best sets/s (max over the runs); nan without the writer."""
        return max(self.writer_samples) if self.writer_samples else math.nan


@dataclass
class ThreadReport:
    keys: int
    thread_counts: list[int]
    duration: float
    repeat: int
    contenders: list[str]
    skipped: dict[str, str]
    failed: dict[str, str] = field(default_factory=dict)
    cells: list[ThreadCell] = field(default_factory=list)

    def cell(self, contender: str, threads: int, writer: bool) -> ThreadCell | None:
        for c in self.cells:
            if (c.contender, c.threads, c.writer) == (contender, threads, writer):
                return c
        return None


def _chunks(keys: Sequence[Any], offset: int) -> list[Sequence[Any]]:
    rotated = list(keys[offset:]) + list(keys[:offset])
    return [rotated[i : i + CHUNK] for i in range(0, len(rotated), CHUNK)]


class _Stop:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = False


def _run_loop(
    loop: Any,
    structure: Any,
    chunks: list[Sequence[Any]],
    barrier: threading.Barrier,
    stop: _Stop,
    out: list[Any],
    slot: int,
) -> None:
    """One thread: runs `loop` (GET_ITEM or SET_ITEM) over the chunks until stopped; out[slot] = (start, end, ops)."""
    clock = time.perf_counter_ns
    done = 0
    try:
        barrier.wait()
        start = clock()
        while not stop.now:
            for chunk in chunks:
                loop(structure, chunk)
                done += len(chunk)
                if stop.now:
                    break
        out[slot] = (start, clock(), done)
    except BaseException as exc:  # reported by the main thread
        out[slot] = exc


def run_window(
    structure: Any, keys: Sequence[Any], readers: int, writer: bool, duration: float
) -> tuple[float, float]:
    """One timed window: (aggregate reader ns/op, writer sets/s or nan)."""
    reader_chunks = [_chunks(keys, i * len(keys) // readers) for i in range(readers)]
    writer_chunks = _chunks(keys, len(keys) // 2 + 1) if writer else []
    barrier = threading.Barrier(readers + (1 if writer else 0) + 1)
    stop = _Stop()
    results: list[Any] = [None] * readers
    writer_result: list[Any] = [None]
    threads = [
        threading.Thread(
            target=_run_loop,
            args=(GET_ITEM, structure, reader_chunks[i], barrier, stop, results, i),
            daemon=True,
        )
        for i in range(readers)
    ]
    if writer:
        threads.append(
            threading.Thread(
                target=_run_loop,
                args=(SET_ITEM, structure, writer_chunks, barrier, stop, writer_result, 0),
                daemon=True,
            )
        )

    def window() -> None:
        for thread in threads:
            thread.start()
        barrier.wait()
        time.sleep(duration)
        stop.now = True
        for thread in threads:
            thread.join()

    gc.collect()
    without_gc(window)
    for outcome in results + (writer_result if writer else []):
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            raise RuntimeError("a benchmark thread ended without a result")
    first = min(start for start, _, _ in results)
    last = max(end for _, end, _ in results)
    operations = sum(done for _, _, done in results)
    writer_rate = math.nan
    if writer:
        start, end, done = writer_result[0]
        writer_rate = done / max(end - start, 1) * 1e9
    return (last - first) / max(operations, 1), writer_rate


def measure(
    thread_counts: Sequence[int] = THREAD_COUNTS,
    keys: int = KEYS,
    duration: float = DURATION,
    repeat: int = REPEAT,
    progress: Progress = NO_PROGRESS,
) -> ThreadReport:
    """Every contender × reader count × (readers only, readers + one writer), contenders interleaved."""
    available, skipped = load_contenders()
    counts = sorted(set(thread_counts))
    report = ThreadReport(keys, counts, duration, repeat, list(available), skipped)
    configs = [(n, writer) for writer in (False, True) for n in counts]
    progress.section("threads", len(configs) * repeat * len(available))
    work = Workload.build(keys)
    structures: dict[str, Any] = {}
    try:
        for name, contender in available.items():
            try:
                structures[name] = contender.filled(work.keys)
            except Exception as exc:
                if name == BASELINE:
                    raise
                report.failed[name] = f"building {human(keys)} keys raised {exc!r}"
        for readers, writer in configs:
            row = {
                name: ThreadCell(name, readers, writer)
                for name in structures
                if name not in report.failed
            }
            what = f"{readers} reader{'s' if readers > 1 else ''}{' + writer' if writer else ''}"
            for turn in range(repeat):
                for name in rotated(list(row), turn):
                    progress.advance(f"{what}: {name}")
                    if name in report.failed:
                        continue
                    try:
                        ns, rate = run_window(
                            structures[name], work.shuffled, readers, writer, duration
                        )
                    except Exception as exc:
                        if name == BASELINE:
                            raise
                        report.failed[name] = f"{what} raised {exc!r}"
                        continue
                    row[name].samples.append(ns)
                    if writer:
                        row[name].writer_samples.append(rate)
            for name, cell in row.items():
                if name not in report.failed:
                    cell.baseline = row[BASELINE].best
                    report.cells.append(cell)
        for cell in report.cells:
            one = report.cell(cell.contender, counts[0], cell.writer)
            if one is not None:
                cell.one_reader = one.best
    finally:
        for name, structure in structures.items():
            available[name].close(structure)
    return report


def render_table(report: ThreadReport) -> str:
    times, plus_minus = symbols()
    lines = [
        f"== threads: aggregate get-hit throughput of N reader threads on {human(report.keys)} keys, "
        f"alone and with one writer thread"
    ]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"FAILED {name}: {what}" for name, what in report.failed.items()]
    names = [name for name in report.contenders if name not in report.failed]
    configs = [(n, writer) for writer in (False, True) for n in report.thread_counts]

    def label(readers: int, writer: bool) -> str:
        return f"{readers} reader{'s' if readers > 1 else ''}{' + 1 writer' if writer else ''}"

    rows = []
    for readers, writer in configs:
        row = [label(readers, writer)]
        for name in names:
            cell = report.cell(name, readers, writer)
            row.append(
                "-"
                if cell is None
                else f"{cell.best:.1f} ns = {rate(cell.ops_per_second)} ({cell.ratio:.2f}{times}) {plus_minus}{cell.spread:.0f}%"
            )
        rows.append(row)
    lines += ["", "aggregate reader ns/op = reads/s (ratio to dict) " + plus_minus + "spread:"]
    lines += format_table(["threads", *names], rows)

    first = report.thread_counts[0]
    rows = []
    for readers in report.thread_counts[1:]:
        row = [label(readers, False)]
        for name in names:
            cell = report.cell(name, readers, False)
            row.append("-" if cell is None else f"{cell.scaling:.2f}{times}")
        rows.append(row)
    if rows:
        lines += [
            "",
            f"aggregate reads/s relative to {label(first, False)} (no writer; 1.00 = no loss to contention):",
        ]
        lines += format_table(["threads", *names], rows)

    rows = []
    for readers in report.thread_counts:
        row = [label(readers, True)]
        for name in names:
            cell = report.cell(name, readers, True)
            row.append("-" if cell is None else rate(cell.writer_rate))
        rows.append(row)
    lines += ["", "the writer thread's sets/s meanwhile:"]
    lines += format_table(["threads", *names], rows)
    if any(row[1:].count("0/s") for row in rows):
        lines.append(
            "0/s: the writer thread got no turn before the window closed (it made no set), "
            "as can happen when a window is short next to the interpreter's thread hand-offs."
        )

    lines += [
        "",
        f"Each run: a {report.duration * 1000:.0f} ms window; best (min ns/op) of {report.repeat} runs, "
        f"{plus_minus} = (max - min) / min; contenders take turns within a repeat.",
        "Readers walk the keys from different offsets in chunks of "
        f"{CHUNK:,}; the writer sets existing keys (lazycache: already pending, the writer thread idle).",
        "GIL: on this build one thread runs Python code at a time, so more threads cannot add throughput; "
        "these figures show what concurrency costs (GIL hand-offs every "
        f"{switch_interval_ms()} ms, lock contention inside the structure), and a ratio well below 1.00 "
        "to one reader would mean a lock convoy. With the writer, the GIL's time slices are shared by "
        "N + 1 threads, so the readers get about N/(N + 1) of the window and the writer the rest: compare "
        "those rows across contenders, not with the rows without a writer.",
        "cachetools.LRUCache is not thread-safe (its documentation asks for a lock around it); it runs here "
        "without one, as the others do; cachetools + Lock is the same with a lock around every call.",
    ]
    return "\n".join(lines)


def report_json(report: ThreadReport) -> dict[str, Any]:
    return {
        "keys": report.keys,
        "thread_counts": report.thread_counts,
        "duration_s": report.duration,
        "repeat": report.repeat,
        "contenders": report.contenders,
        "baseline": BASELINE,
        "skipped": report.skipped,
        "failed": report.failed,
        "units": {
            "ns_per_op": "aggregate: window ns / reads of all reader threads, best (min) of `repeat` runs",
            "ops_per_second": "aggregate reads per second: 1e9 / ns_per_op",
            "ratio_to_dict": "ns_per_op / dict's ns_per_op with the same threads",
            "relative_to_one_reader": "ops_per_second / the same contender's with one reader, same writer setting",
            "writer_sets_per_second": "the writer thread's sets per second (best run), with the writer only",
            "spread": "percent: (max - min) / min of the runs' ns_per_op",
        },
        "results": [
            {
                "contender": c.contender,
                "readers": c.threads,
                "writer": c.writer,
                "ns_per_op": c.best,
                "ops_per_second": c.ops_per_second,
                "ratio_to_dict": c.ratio,
                "relative_to_one_reader": c.scaling,
                "writer_sets_per_second": None if math.isnan(c.writer_rate) else c.writer_rate,
                "spread": c.spread,
                "runs_ns_per_op": c.samples,
            }
            for c in report.cells
        ],
    }
