"""``lazycache bench``, memory section: bytes per entry beyond a plain dict holding the same keys and values.

Each measurement runs in a fresh interpreter (``python -m lazycache.bench.memory
CONTENDER MODE N``), so nothing another contender allocated is reused. The child
imports everything, creates the N str keys (hashes cached) and N int values
first, collects garbage, reads its resident set size from ``/proc/self/statm``,
builds the structure with ``s[k] = v`` for every pair, collects again and reads
the RSS again. The growth is the structure alone: keys and values already
existed. The same growth of a plain dict, built the same way in its own process,
is subtracted.

RSS rather than tracemalloc: cachebox allocates through Rust's allocator, which
tracemalloc does not see, and RSS is what the machine pays.

lazycache caches get a store whose ``write()`` discards what it is given (a
MemoryStore would keep a second dict of every value), so only the cache is
measured, in two states:

* ``clean``: flushed every 1,000 sets (the default batch_size) while being filled, so at most that many
  writes wait at once: the steady state of a cache whose writer keeps up;
* ``pending``: every entry written but not yet flushed (the dirty queue included).
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..stores.base import GeneratedFields, Store
from .kit.contenders import BASELINE, CONTENDERS, idle_cache, lazycache_class, load_contenders
from .kit.output import format_table, human, symbols
from .kit.progress import NO_PROGRESS, Progress
from .kit.timing import Runs, rotated

SIZE = 1_000_000
QUICK_SIZE = 50_000
REPEAT = 2
CLEAN_CHUNK = 1_000
CHILD_TIMEOUT = 600.0

CLEAN = "clean"
PENDING = "pending"
BUILT = "built"


class DiscardStore(Store[Any, Any]):
    """A store that keeps nothing: `write()` returns at once, `load_many()` finds nothing."""

    def load_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        return {}

    def write(
        self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]
    ) -> GeneratedFields | None:
        return None


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def available() -> str | None:
    """None if RSS can be read here, otherwise why not."""
    try:
        rss_bytes()
    except (OSError, ValueError, IndexError, AttributeError) as exc:
        return f"cannot read the resident set size here (/proc/self/statm: {exc})"
    return None


def child(name: str, mode: str, size: int) -> dict[str, Any]:
    """Runs in the fresh interpreter: the RSS growth of building one structure of `size` entries."""
    contender = CONTENDERS[name]()
    if contender.core is not None:
        cls = lazycache_class(contender.core)

        def make() -> Any:
            return idle_cache(cls, DiscardStore())

    else:

        def make() -> Any:
            return contender.make(None)

    keys = [f"key:{i}" for i in range(size)]
    values = list(range(size))
    for key in keys:
        hash(key)
    gc.collect()
    gc.disable()
    before = rss_bytes()
    structure = make()
    if mode == CLEAN:
        flush = structure.flush
        for start in range(0, size, CLEAN_CHUNK):
            for key, value in zip(
                keys[start : start + CLEAN_CHUNK], values[start : start + CLEAN_CHUNK]
            ):
                structure[key] = value
            flush()
    else:
        for key, value in zip(keys, values):
            structure[key] = value
    gc.collect()
    after = rss_bytes()
    entries = len(structure)
    pending = getattr(structure, "pending", None)
    return {
        "contender": name,
        "mode": mode,
        "size": size,
        "entries": entries,
        "pending": pending,
        "bytes": after - before,
    }


def _run_child(name: str, mode: str, size: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "lazycache.bench.memory", name, mode, str(size)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=dict(os.environ),
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {result.returncode}")
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome


@dataclass
class MemoryCell(Runs):
    contender: str
    mode: str
    """"built" (not lazycache), "clean" or "pending" (lazycache)."""
    samples: list[float] = field(default_factory=list)
    """Bytes of RSS growth per entry, each run."""
    baseline: float = math.nan
    """dict's best bytes per entry."""

    @property
    def label(self) -> str:
        return self.contender if self.mode == BUILT else f"{self.contender}, {self.mode}"

    @property
    def beyond_dict(self) -> float:
        return self.best - self.baseline

    @property
    def ratio(self) -> float:
        return self.best / self.baseline


@dataclass
class MemoryReport:
    size: int
    repeat: int
    contenders: list[str]
    skipped: dict[str, str]
    failed: dict[str, str] = field(default_factory=dict)
    cells: list[MemoryCell] = field(default_factory=list)


def measure(
    size: int = SIZE, repeat: int = REPEAT, progress: Progress = NO_PROGRESS
) -> MemoryReport:
    plan: list[tuple[str, str]] = []
    why_not = available()
    contenders, skipped = load_contenders()
    for name, contender in contenders.items():
        if why_not is not None:
            skipped[name] = why_not
            continue
        plan += [(name, CLEAN), (name, PENDING)] if contender.core is not None else [(name, BUILT)]
    report = MemoryReport(size, repeat, list(dict.fromkeys(name for name, _ in plan)), skipped)
    if not plan:
        return report
    cells = {(name, mode): MemoryCell(name, mode) for name, mode in plan}
    progress.section("memory", len(plan) * repeat)
    for turn in range(repeat):
        for name, mode in rotated(plan, turn):
            progress.advance(f"{human(size)} entries: {name}{'' if mode == BUILT else ', ' + mode}")
            if name in report.failed:
                continue
            try:
                outcome = _run_child(name, mode, size)
            except Exception as exc:
                if name == BASELINE:
                    report.failed[name] = f"{mode} raised {exc}"
                    return report
                report.failed[name] = f"{mode} raised {exc}"
                continue
            cells[name, mode].samples.append(outcome["bytes"] / size)
    if BASELINE in report.failed or not cells[BASELINE, BUILT].samples:
        return report
    baseline = cells[BASELINE, BUILT].best
    for (name, _), cell in cells.items():
        if name not in report.failed and cell.samples:
            cell.baseline = baseline
            report.cells.append(cell)
    return report


def render_table(report: MemoryReport) -> str:
    times, plus_minus = symbols()
    lines = [
        f"== memory: bytes per entry at {human(report.size)} str keys -> int values, by RSS, fresh process each"
    ]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"FAILED {name}: {what}" for name, what in report.failed.items()]
    rows = []
    for cell in report.cells:
        rows.append(
            [
                cell.label,
                f"{cell.best * report.size / 2**20:,.1f} MiB",
                f"{cell.best:.1f}",
                "-" if cell.contender == BASELINE else f"{cell.beyond_dict:+.1f}",
                f"{cell.ratio:.2f}{times}",
                f"{plus_minus}{cell.spread:.0f}%",
            ]
        )
    lines += [
        "",
        *format_table(
            ["contender", "RSS growth", "B/entry", "beyond dict", "ratio to dict", "spread"], rows
        ),
    ]
    lines += [
        "",
        f"Best (min) of {report.repeat} run{'s' if report.repeat > 1 else ''}, each in a fresh interpreter; keys and "
        "values exist before the first RSS reading, so the growth is the structure's own; beyond dict = B/entry "
        "minus dict's.",
        "lazycache: a store whose write() discards everything (a MemoryStore would hold a second dict); clean = "
        f"flushed every {CLEAN_CHUNK:,} sets while filling (the steady state), pending = nothing flushed yet "
        "(the dirty queue included). Unbounded caches; RSS, not tracemalloc, so that native allocators count.",
    ]
    return "\n".join(lines)


def report_json(report: MemoryReport) -> dict[str, Any]:
    return {
        "size": report.size,
        "repeat": report.repeat,
        "contenders": report.contenders,
        "baseline": BASELINE,
        "skipped": report.skipped,
        "failed": report.failed,
        "units": {
            "bytes_per_entry": "RSS growth / entries, best (min) of `repeat` runs, each in a fresh interpreter",
            "beyond_dict": "bytes_per_entry - dict's bytes_per_entry",
            "ratio_to_dict": "bytes_per_entry / dict's bytes_per_entry",
            "spread": "percent: (max - min) / min of the runs",
        },
        "results": [
            {
                "contender": cell.contender,
                "mode": cell.mode,
                "bytes_per_entry": cell.best,
                "beyond_dict": cell.beyond_dict,
                "ratio_to_dict": cell.ratio,
                "spread": cell.spread,
                "runs_bytes_per_entry": cell.samples,
            }
            for cell in report.cells
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[1] not in (CLEAN, PENDING, BUILT):
        print(
            "usage: python -m lazycache.bench.memory CONTENDER {built,clean,pending} SIZE",
            file=sys.stderr,
        )
        return 2
    name, mode, size = args[0], args[1], int(args[2])
    print(json.dumps(child(name, mode, size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
