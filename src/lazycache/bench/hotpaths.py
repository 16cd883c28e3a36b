"""``lazycache bench``, ops section: ns/op of the hot dict operations and of a mixed workload.

Each contender (``kit.contenders``) is timed on the same keys (``kit.workload``), with
the ratio to dict. How a cell is measured: the structure is built outside the timed
region, then a generated function times one tight ``for k in keys: <operation>`` loop
over a pre-shuffled key list with ``time.perf_counter_ns``, the garbage collector off.
Every contender runs the same generated loop, so the loop overhead is the same in every
cell. Each cell is repeated, contenders taking turns within a repeat (round-robin), and
the best run is reported with the spread of the runs.

To add an operation, write a function decorated with ``@operation``.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from .kit.contenders import BASELINE, Contender, load_contenders
from .kit.output import format_table, human, symbols
from .kit.progress import NO_PROGRESS, Progress
from .kit.timing import GET_ITEM, SET_ITEM, Loop, Runs, compile_loop, rotated, without_gc
from .kit.workload import MIXED_SET_FRACTION, ZIPF_S, Workload

DEFAULT_SIZES = [20_000, 100_000, 1_000_000]
QUICK_SIZES = [2_000]
DEFAULT_REPEAT = 9
LARGE_SIZE = 1_000_000
DEFAULT_REPEAT_LARGE = 3
QUICK_REPEAT = 2

# ----------------------------------------------------------------------------- timed loops

EMPTY_LOOP = compile_loop("pass")
GET_METHOD = compile_loop("get(k)", prologue="get = c.get")
DEL_ITEM = compile_loop("del c[k]")
MIXED = compile_loop("if s:\n    c[k] = 1\nelse:\n    c[k]", target="k, s")
MIXED_EMPTY = compile_loop("if s:\n    pass\nelse:\n    pass", target="k, s")
MIXED_WARM = compile_loop("get(k)", prologue="get = c.get", target="k, s")


# ----------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Trial:
    """One structure ready to be timed: `run(keys)` times the loop over `keys` once."""

    structure: Any
    loop: Loop
    keys: Sequence[Any]
    """Every key the operation may walk; a pass walks a slice of them (see `measure`)."""
    warm: Loop = GET_METHOD
    """The untimed pass over the same keys before each timed one: `c.get(k)`, which changes no entry."""

    def run(self, keys: Sequence[Any] | None = None) -> int:
        """Elapsed ns of one pass over `keys` (default: all of them)."""
        return self.loop(self.structure, self.keys if keys is None else keys)

    def warm_up(self, keys: Sequence[Any] | None = None) -> None:
        """Touches what the pass will touch, so that every pass starts from warm CPU caches."""
        self.warm(self.structure, self.keys if keys is None else keys)


Reset = Callable[[Contender, Any], None]


def keep(contender: Contender, structure: Any) -> None:
    """Reset of an operation that leaves the structure as it found it: nothing to do."""


def settle(contender: Contender, structure: Any) -> None:
    """Reset of an operation that only makes entries pending: flush them (lazycache), nothing elsewhere."""
    contender.settle(structure)


@dataclass(frozen=True)
class Operation:
    """A registered operation: `prepare` builds a contender's structure and returns the Trial to time."""

    name: str
    summary: str
    prepare: Callable[[Contender, Workload], Trial]
    reset: Reset | None = None
    """Brings a structure back to its prepared state after a pass, outside the timed region,
    so that the next repeat reuses it; None: the structure is rebuilt for every pass."""


OPERATIONS: dict[str, Operation] = {}


def operation(
    name: str, summary: str, reset: Reset | None = None
) -> Callable[[Callable[[Contender, Workload], Trial]], Callable[[Contender, Workload], Trial]]:
    """Registers a function that builds a contender's structure and returns the Trial to time.

    `reset` (optional) restores the structure after a pass so it can be timed again
    (`keep`, `settle`, or your own); without it every pass gets a fresh structure.
    """

    def register(
        prepare: Callable[[Contender, Workload], Trial],
    ) -> Callable[[Contender, Workload], Trial]:
        OPERATIONS[name] = Operation(name, summary, prepare, reset)
        return prepare

    return register


@operation("get-hit", "c[k] for a key present", reset=keep)
def get_hit(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys), GET_ITEM, work.shuffled)


@operation(
    "get-miss", "c.get(k) for a key absent (lazycache: read_through=False, memory only)", reset=keep
)
def get_miss(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys), GET_METHOD, work.absent)


@operation(
    "set-existing",
    "c[k] = v for a key present (lazycache: its write is already pending)",
    reset=keep,
)
def set_existing(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys), SET_ITEM, work.shuffled)


@operation(
    "set-clean",
    "c[k] = v for a key present and clean (lazycache: flushed first; others: as set-existing)",
    reset=settle,
)
def set_clean(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, clean=True), SET_ITEM, work.shuffled)


@operation(
    "set-new", "c[k] = v for a key absent, into a full cache of maxsize=size (dict: unbounded)"
)
def set_new(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, maxsize=work.size, clean=True), SET_ITEM, work.absent)


@operation("delete", "del c[k] for a key present (lazycache: clean, so the delete becomes pending)")
def delete(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, clean=True), DEL_ITEM, work.shuffled)


@operation(
    "mixed",
    f"{100 - MIXED_SET_FRACTION * 100:.0f}% c[k] / {MIXED_SET_FRACTION * 100:.0f}% c[k] = v, keys present, "
    f"Zipf-distributed (s={ZIPF_S}); lazycache: clean at the start",
    reset=settle,
)
def mixed(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, clean=True), MIXED, work.mixed, warm=MIXED_WARM)


# ----------------------------------------------------------------------------- measuring

MAX_PASS = 200_000
"""A timed pass walks at most this many keys: above it, each repeat walks the next slice of that length."""


@dataclass
class Cell(Runs):
    """The runs of one operation × size × contender."""

    operation: str
    size: int
    contender: str
    samples: list[float] = field(default_factory=list)
    """ns/op of each run."""
    baseline: float = math.nan
    """dict's best ns/op in the same row."""

    @property
    def ratio(self) -> float:
        return self.best / self.baseline


@dataclass
class Report:
    """Everything the ops section measured, ready to be rendered."""

    operations: list[str]
    sizes: list[int]
    repeats: dict[int, int]
    """Runs per cell, by size."""
    contenders: list[str]
    """Available here, in column order."""
    skipped: dict[str, str]
    """Not available here: name -> reason."""
    failed: dict[str, str] = field(default_factory=dict)
    """Raised during a trial, and not measured from then on: name -> what happened."""
    cells: list[Cell] = field(default_factory=list)
    loop_overhead: dict[int, float] = field(default_factory=dict)
    """Best ns/op of the empty loop, by size: included in every cell."""
    mixed_loop_overhead: dict[int, float] = field(default_factory=dict)
    """Best ns/op of the mixed workload's loop with empty branches, by size."""
    pass_length: dict[int, int] = field(default_factory=dict)
    """Keys walked by one timed pass, by size."""

    @property
    def repeat(self) -> int:
        """The largest number of runs per cell."""
        return max(self.repeats.values(), default=0)


def _pass_slice(keys: Sequence[Any], pass_length: int, turn: int) -> Sequence[Any]:
    """The keys of the `turn`th pass: all of them, or the next slice of `pass_length` for large sizes."""
    if len(keys) <= pass_length:
        return keys
    start = (turn % (len(keys) // pass_length)) * pass_length
    return keys[start : start + pass_length]


def default_repeat(size: int) -> int:
    """Runs per ops cell when --repeat is not given: fewer at 1M keys, whose structures take seconds to build."""
    return DEFAULT_REPEAT_LARGE if size >= LARGE_SIZE else DEFAULT_REPEAT


def measure(
    operations: Sequence[str],
    sizes: Sequence[int],
    repeat: Callable[[int], int],
    progress: Progress = NO_PROGRESS,
) -> Report:
    """Times every operation × size × available contender, contenders interleaved.

    `repeat(size)` is the number of runs per cell. A structure is built once per
    operation and contender when the operation has a `reset`, before each pass otherwise.
    """
    available, skipped = load_contenders()
    report = Report(
        list(operations),
        list(sizes),
        {size: repeat(size) for size in sizes},
        list(available),
        skipped,
    )
    setup_steps = 2 if "mixed" in operations else 1
    progress.section(
        "ops",
        sum(
            report.repeats[size] * len(operations) * len(available) + setup_steps for size in sizes
        ),
    )
    for size in sizes:
        progress.advance(f"keys @ {human(size)}")
        work = Workload.build(size)
        runs = report.repeats[size]
        pass_length = report.pass_length[size] = min(size, MAX_PASS)
        # partial binds the arguments now: a lambda would look up `work`, deleted below, when called.
        report.loop_overhead[size] = min(
            without_gc(partial(EMPTY_LOOP, None, _pass_slice(work.shuffled, pass_length, 0)))
            / pass_length
            for _ in range(max(runs, 3))
        )
        if "mixed" in operations:
            progress.advance(f"mixed keys @ {human(size)}")
            ops = _pass_slice(work.mixed, pass_length, 0)
            report.mixed_loop_overhead[size] = min(
                without_gc(partial(MIXED_EMPTY, None, ops)) / len(ops) for _ in range(3)
            )
        for op_name in operations:
            _measure_row(report, OPERATIONS[op_name], work, available, runs, progress)
        del work
        gc.collect()
    return report


def _measure_row(
    report: Report,
    op: Operation,
    work: Workload,
    available: dict[str, Contender],
    runs: int,
    progress: Progress,
) -> None:
    size = work.size
    pass_length = report.pass_length[size]
    row = {name: Cell(op.name, size, name) for name in available if name not in report.failed}
    kept: dict[str, Trial] = {}
    try:
        for turn in range(runs):
            for name in rotated(list(row), turn):
                progress.advance(f"{op.name} @ {human(size)}: {name}")
                if name in report.failed:
                    continue
                contender = available[name]
                trial = kept.pop(name, None)
                try:
                    if trial is None:
                        trial = op.prepare(contender, work)
                    keys = _pass_slice(trial.keys, pass_length, turn)
                    without_gc(partial(trial.warm_up, keys))
                    row[name].samples.append(without_gc(partial(trial.run, keys)) / len(keys))
                    if op.reset is not None and turn < runs - 1:
                        op.reset(contender, trial.structure)
                        kept[name] = trial
                        trial = None
                except Exception as exc:
                    if name == BASELINE:
                        raise
                    report.failed[name] = f"{op.name} @ {human(size)} raised {exc!r}"
                finally:
                    if trial is not None:
                        contender.close(trial.structure)
            gc.collect()  # outside the timed region: dispose of the cycles of the round
    finally:
        for name, trial in kept.items():
            available[name].close(trial.structure)
    baseline = row[BASELINE].best
    for name, cell in row.items():
        if name not in report.failed:
            cell.baseline = baseline
            report.cells.append(cell)


def render_table(report: Report) -> str:
    """The ops section as a table."""
    times, plus_minus = symbols()
    lines = [f"== ops: ns/op (ratio to dict) {plus_minus}spread"]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"FAILED {name}: {what}" for name, what in report.failed.items()]

    cells = {(c.operation, c.size, c.contender): c for c in report.cells}
    header = ["operation", "size", *report.contenders]
    rows = []
    for op_name in report.operations:
        for size in report.sizes:
            row = [op_name, human(size)]
            for name in report.contenders:
                cell = cells.get((op_name, size, name))
                if cell is None:
                    row.append("failed")
                else:
                    row.append(
                        f"{cell.best:.1f} ({cell.ratio:.2f}{times}) {plus_minus}{cell.spread:.0f}%"
                    )
            rows.append(row)
    lines += ["", *format_table(header, rows)]

    runs = sorted(set(report.repeats.values()), reverse=True)
    if len(runs) == 1:
        how_many = f"best (min) of {runs[0]} run{'s' if runs[0] > 1 else ''}"
    else:
        how_many = "best (min) of " + ", ".join(
            f"{n} runs at {', '.join(human(s) for s in report.sizes if report.repeats[s] == n)}"
            for n in runs
        )
    overhead = ", ".join(
        f"{ns:.1f} ns/op at {human(size)}" for size, ns in report.loop_overhead.items()
    )
    lines += [
        "",
        f"ns/op: {how_many}; ({times}) = ns/op / dict's ns/op in the same row; "
        f"{plus_minus} = (max - min) / min of the runs.",
        f"Every cell includes the same Python loop overhead (`for k in keys:` in a generated function): "
        f"{overhead} for an empty body.",
    ]
    if report.mixed_loop_overhead:
        mixed_overhead = ", ".join(
            f"{ns:.1f} at {human(size)}" for size, ns in report.mixed_loop_overhead.items()
        )
        lines.append(
            f"mixed: one pass = one op per key, {MIXED_SET_FRACTION:.0%} sets, Zipf s={ZIPF_S} over the keys; "
            f"its loop (`for k, s in ops: if s: ... else: ...`) costs {mixed_overhead} ns/op with empty branches."
        )
    sliced = [size for size, length in report.pass_length.items() if length < size]
    if sliced:
        lines.append(
            "At "
            + ", ".join(human(s) for s in sliced)
            + f": structures of the full size, but a timed pass walks "
            f"{human(MAX_PASS)} of the keys, a different slice each run."
        )
    lines += [
        "lazycache: MemoryStore, read_through=False, writer and pruner idle (3600 s intervals, batch_size "
        "above the writes made); in set-new the pruner is woken by the soft maxsize and evicts in its thread.",
        "Before each timed pass, an untimed pass of c.get(k) over the same keys warms the CPU caches. "
        "get-hit, get-miss and set-existing time repeated passes over one structure per contender; set-clean and "
        "mixed too, flushed again between passes; set-new and delete build a fresh structure for every pass.",
    ]
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    """The ops section as a JSON-ready dict."""
    return {
        "repeat": report.repeat,
        "repeat_by_size": [{"size": size, "repeat": n} for size, n in report.repeats.items()],
        "sizes": report.sizes,
        "pass_length": [{"size": size, "keys": n} for size, n in report.pass_length.items()],
        "operations": {name: OPERATIONS[name].summary for name in report.operations},
        "contenders": report.contenders,
        "baseline": BASELINE,
        "skipped": report.skipped,
        "failed": report.failed,
        "units": {
            "ns_per_op": "nanoseconds per operation, best (min) of `repeat` runs, loop overhead included",
            "ratio_to_dict": "ns_per_op / dict's ns_per_op for the same operation and size",
            "spread": "percent: (max - min) / min of the runs' ns_per_op",
        },
        "loop_overhead_ns_per_op": [
            {"size": size, "ns_per_op": ns} for size, ns in report.loop_overhead.items()
        ],
        "mixed_loop_overhead_ns_per_op": [
            {"size": size, "ns_per_op": ns} for size, ns in report.mixed_loop_overhead.items()
        ],
        "mixed_workload": {"set_fraction": MIXED_SET_FRACTION, "zipf_s": ZIPF_S},
        "results": [
            {
                "operation": cell.operation,
                "size": cell.size,
                "contender": cell.contender,
                "ns_per_op": cell.best,
                "ratio_to_dict": cell.ratio,
                "spread": cell.spread,
                "runs_ns_per_op": cell.samples,
            }
            for cell in report.cells
        ],
    }
