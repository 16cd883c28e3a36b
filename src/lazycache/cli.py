"""The ``lazycache`` command line.

``lazycache bench`` (also ``python -m lazycache bench``) measures the hot dict
operations of both lazycache cores side by side with ``dict`` and, when they are
installed, other in-memory caches, and prints ns/op with the ratio to dict.

How a cell is measured: the structure is built outside the timed region, then a
generated function times one tight ``for k in keys: <operation>`` loop over a
pre-shuffled key list with ``time.perf_counter_ns``, the garbage collector off.
Every contender runs the same generated loop, so the loop overhead is the same
in every cell. Each cell is repeated, contenders taking turns within a repeat
(round-robin), and the best run is reported with the spread of the runs.

To add an operation, write a function decorated with ``@operation``; to add a
contender, add a loader to ``CONTENDERS``. To add a subcommand, add a
``_add_<name>_command`` to ``build_parser``.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import lazycache

from .cache import implementation_class
from .stores import MemoryStore

# ----------------------------------------------------------------------------- contenders

_IDLE_INTERVAL = 3600.0
"""write_interval and prune_interval of the lazycache contenders: no timer fires during a run."""

_NO_WRITE_TRIGGER = 1 << 30
"""batch_size of the lazycache contenders: more writes than any run makes, so the writer is never woken."""

_LRU_UNBOUNDED = 2**31 - 1
"""lru.LRU needs a size (a C int); this stands for "no limit"."""


class Unavailable(Exception):
    """A contender cannot run here; the message says why."""


def _nothing(structure: Any) -> None:
    """The default settle/close: nothing to do."""


@dataclass(frozen=True)
class Contender:
    """How to build, settle and dispose of one mapping implementation."""

    make: Callable[[Optional[int]], Any]
    """Returns an empty structure; maxsize None means unbounded."""
    settle: Callable[[Any], None] = _nothing
    """Makes every entry clean (lazycache: flushes to the store); nothing elsewhere."""
    close: Callable[[Any], None] = _nothing
    """Releases the structure once its trial is over."""

    def filled(self, keys: Sequence[Any], maxsize: Optional[int] = None, clean: bool = False) -> Any:
        """A new structure holding key -> int for every key, settled if `clean`."""
        structure = self.make(maxsize)
        for i, key in enumerate(keys):
            structure[key] = i
        if clean:
            self.settle(structure)
        return structure


def _import(module: str, distribution: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise Unavailable(f"{distribution} not installed (pip install 'lazycache[bench]')") from None


def _dict() -> Contender:
    return Contender(make=lambda maxsize: {})


def _lazycache(core: str) -> Callable[[], Contender]:
    """Loader for LazyWriterCache on the given core, with an idle writer and pruner and no read-through."""

    def load() -> Contender:
        try:
            cls = implementation_class(core)
        except ValueError:
            if core == "cython" and os.environ.get("LAZYCACHE_NO_EXTENSIONS"):
                raise Unavailable("compiled core disabled by LAZYCACHE_NO_EXTENSIONS") from None
            raise Unavailable("compiled core not built" if core == "cython" else f"no {core} core") from None

        def make(maxsize: Optional[int]) -> Any:
            return cls(
                MemoryStore(),
                maxsize=maxsize,
                write_interval=_IDLE_INTERVAL,
                prune_interval=_IDLE_INTERVAL,
                batch_size=_NO_WRITE_TRIGGER,
                read_through=False,
            )

        return Contender(make=make, settle=lambda cache: cache.flush(), close=lambda cache: cache.close(flush=False))

    return load


def _cachetools() -> Contender:
    cachetools = _import("cachetools", "cachetools")
    return Contender(make=lambda maxsize: cachetools.LRUCache(maxsize or math.inf))


def _cachebox() -> Contender:
    cachebox = _import("cachebox", "cachebox")
    return Contender(make=lambda maxsize: cachebox.LRUCache(maxsize or 0))  # 0: unbounded


def _lru_dict() -> Contender:
    lru = _import("lru", "lru-dict")
    return Contender(make=lambda maxsize: lru.LRU(maxsize or _LRU_UNBOUNDED))


BASELINE = "dict"

CONTENDERS: Dict[str, Callable[[], Contender]] = {
    BASELINE: _dict,
    "lazycache (cython)": _lazycache("cython"),
    "lazycache (python)": _lazycache("python"),
    "cachetools.LRUCache": _cachetools,
    "cachebox.LRUCache": _cachebox,
    "lru.LRU": _lru_dict,
}
"""Column order of the table; each loader raises Unavailable when it cannot run here."""


def load_contenders() -> Tuple[Dict[str, Contender], Dict[str, str]]:
    """(available contenders by name, reason by name of those skipped)."""
    available: Dict[str, Contender] = {}
    skipped: Dict[str, str] = {}
    for name, load in CONTENDERS.items():
        try:
            available[name] = load()
        except Unavailable as exc:
            skipped[name] = str(exc)
    return available, skipped


# ----------------------------------------------------------------------------- timed loops

Loop = Callable[[Any, Sequence[Any]], int]

_LOOP_SOURCE = """\
def loop(c, keys, clock=clock):
    {prologue}
    start = clock()
    for k in keys:
        {body}
    return clock() - start
"""


def compile_loop(body: str, prologue: str = "pass") -> Loop:
    """A function `loop(c, keys)` that runs `body` for each k in keys and returns the elapsed ns.

    Generated rather than written with a callback so that nothing but `body` and the
    bare `for` sits inside the timed region.
    """
    namespace: Dict[str, Any] = {"clock": time.perf_counter_ns}
    source = _LOOP_SOURCE.format(prologue=prologue, body=body)
    exec(compile(source, f"<lazycache bench: {body}>", "exec"), namespace)
    return namespace["loop"]  # type: ignore[no-any-return]


EMPTY_LOOP = compile_loop("pass")
GET_ITEM = compile_loop("c[k]")
GET_METHOD = compile_loop("get(k)", prologue="get = c.get")
SET_ITEM = compile_loop("c[k] = 1")
DEL_ITEM = compile_loop("del c[k]")


# ----------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Workload:
    """The keys of one size: built once, shared by every contender."""

    size: int
    keys: List[str]
    """The keys inserted when a structure is filled, in insertion order."""
    shuffled: List[str]
    """The same keys in random order: the loops over present keys walk this."""
    absent: List[str]
    """`size` keys never inserted, in random order."""

    @classmethod
    def build(cls, size: int, seed: int = 0) -> "Workload":
        rng = random.Random(seed)
        keys = [f"key:{i}" for i in range(size)]
        absent = [f"key:{i}" for i in range(size, 2 * size)]
        shuffled = keys[:]
        rng.shuffle(shuffled)
        rng.shuffle(absent)
        for key in keys + absent:
            hash(key)  # str caches its hash: no contender pays for computing it
        return cls(size, keys, shuffled, absent)


@dataclass(frozen=True)
class Trial:
    """One structure ready to be timed: `run()` times the loop over `keys` once."""

    structure: Any
    loop: Loop
    keys: Sequence[Any]

    def run(self) -> int:
        """Elapsed ns of one pass."""
        return self.loop(self.structure, self.keys)


@dataclass(frozen=True)
class Operation:
    """A registered operation: `prepare` builds a contender's structure and returns the Trial to time."""

    name: str
    summary: str
    prepare: Callable[[Contender, Workload], Trial]


OPERATIONS: Dict[str, Operation] = {}


def operation(name: str, summary: str) -> Callable[[Callable[[Contender, Workload], Trial]], Callable[[Contender, Workload], Trial]]:
    """Registers a function that builds a contender's structure and returns the Trial to time."""

    def register(prepare: Callable[[Contender, Workload], Trial]) -> Callable[[Contender, Workload], Trial]:
        OPERATIONS[name] = Operation(name, summary, prepare)
        return prepare

    return register


@operation("get-hit", "c[k] for a key present")
def get_hit(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys), GET_ITEM, work.shuffled)


@operation("get-miss", "c.get(k) for a key absent (lazycache: read_through=False, memory only)")
def get_miss(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys), GET_METHOD, work.absent)


@operation("set-existing", "c[k] = v for a key present (lazycache: its write is already pending)")
def set_existing(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys), SET_ITEM, work.shuffled)


@operation("set-clean", "c[k] = v for a key present and clean (lazycache: flushed first; others: as set-existing)")
def set_clean(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, clean=True), SET_ITEM, work.shuffled)


@operation("set-new", "c[k] = v for a key absent, into a full cache of maxsize=size (dict: unbounded)")
def set_new(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, maxsize=work.size, clean=True), SET_ITEM, work.absent)


@operation("delete", "del c[k] for a key present (lazycache: clean, so the delete becomes pending)")
def delete(contender: Contender, work: Workload) -> Trial:
    return Trial(contender.filled(work.keys, clean=True), DEL_ITEM, work.shuffled)


# ----------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    """The runs of one operation × size × contender."""

    operation: str
    size: int
    contender: str
    samples: List[float] = field(default_factory=list)
    """ns/op of each run."""
    baseline: float = math.nan
    """dict's best ns/op in the same row."""

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / min of the runs, in percent."""
        return (max(self.samples) - self.best) / self.best * 100 if self.best else 0.0

    @property
    def ratio(self) -> float:
        return self.best / self.baseline


@dataclass
class Report:
    """Everything one `lazycache bench` run measured, ready to be rendered."""

    operations: List[str]
    sizes: List[int]
    repeat: int
    contenders: List[str]
    """Available here, in column order."""
    skipped: Dict[str, str]
    """Not available here: name -> reason."""
    failed: Dict[str, str] = field(default_factory=dict)
    """Raised during a trial, and not measured from then on: name -> what happened."""
    cells: List[Cell] = field(default_factory=list)
    loop_overhead: Dict[int, float] = field(default_factory=dict)
    """Best ns/op of the empty loop, by size: included in every cell."""


def _timed(run: Callable[[], int]) -> int:
    """Runs `run` with the garbage collector off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run()
    finally:
        if was_enabled:
            gc.enable()


def run_trial(op: Operation, contender: Contender, work: Workload) -> float:
    """Builds, times once and disposes of one structure; returns ns/op."""
    trial = op.prepare(contender, work)
    try:
        return _timed(trial.run) / len(trial.keys)
    finally:
        contender.close(trial.structure)


def _rotated(names: List[str], turn: int) -> List[str]:
    """Round-robin: each repeat starts with the next contender, so none is always first."""
    if not names:
        return names
    turn %= len(names)
    return names[turn:] + names[:turn]


def measure(
    operations: Sequence[str],
    sizes: Sequence[int],
    repeat: int,
    progress: Callable[[str], None] = lambda message: None,
) -> Report:
    """Times every operation × size × available contender `repeat` times, contenders interleaved."""
    available, skipped = load_contenders()
    report = Report(list(operations), list(sizes), repeat, list(available), skipped)
    for size in sizes:
        work = Workload.build(size)
        report.loop_overhead[size] = min(
            _timed(lambda: EMPTY_LOOP(None, work.shuffled)) / size for _ in range(max(repeat, 3))
        )
        for op_name in operations:
            op = OPERATIONS[op_name]
            progress(f"{op_name} @ {_human(size)}")
            row = {name: Cell(op_name, size, name) for name in available if name not in report.failed}
            for turn in range(repeat):
                for name in _rotated(list(row), turn):
                    if name in report.failed:
                        continue
                    try:
                        row[name].samples.append(run_trial(op, available[name], work))
                    except Exception as exc:
                        if name == BASELINE:
                            raise
                        report.failed[name] = f"{op_name} @ {_human(size)} raised {exc!r}"
                gc.collect()  # outside the timed region: dispose of the cycles of the round
            baseline = row[BASELINE].best
            for name, cell in row.items():
                if name not in report.failed:
                    cell.baseline = baseline
                    report.cells.append(cell)
    return report


# ----------------------------------------------------------------------------- output


def environment() -> Dict[str, str]:
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "lazycache_version": lazycache.__version__,
        "lazycache_implementation": lazycache.IMPLEMENTATION,
    }


def _human(size: int) -> str:
    """20000 -> "20k", 1500 -> "1500"."""
    for suffix, unit in (("M", 1_000_000), ("k", 1_000)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _symbols() -> Tuple[str, str]:
    """(times, plus-minus) signs, in ASCII if stdout cannot encode them."""
    try:
        "×±".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "x", "+/-"
    return "×", "±"


def render_table(report: Report) -> str:
    env = environment()
    times, plus_minus = _symbols()
    lines = [
        f"lazycache bench: Python {env['python']} ({env['python_implementation']}) on {env['platform']}; "
        f"lazycache {env['lazycache_version']}, IMPLEMENTATION={env['lazycache_implementation']}"
    ]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"FAILED {name}: {what}" for name, what in report.failed.items()]

    cells = {(c.operation, c.size, c.contender): c for c in report.cells}
    header = ["operation", "size"] + report.contenders
    rows = []
    for op_name in report.operations:
        for size in report.sizes:
            row = [op_name, _human(size)]
            for name in report.contenders:
                cell = cells.get((op_name, size, name))
                if cell is None:
                    row.append("failed")
                else:
                    row.append(f"{cell.best:.1f} ({cell.ratio:.2f}{times}) {plus_minus}{cell.spread:.0f}%")
            rows.append(row)
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]

    def fmt(line: List[str]) -> str:
        left = [line[0].ljust(widths[0])]
        return "  ".join(left + [text.rjust(width) for text, width in zip(line[1:], widths[1:])])

    lines += ["", fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows]
    overhead = ", ".join(f"{ns:.1f} ns/op at {_human(size)}" for size, ns in report.loop_overhead.items())
    lines += [
        "",
        f"ns/op: best of {report.repeat} run{'s' if report.repeat > 1 else ''}; ({times}) = ns/op / dict's ns/op in the same row; "
        f"{plus_minus} = (max - min) / min of the runs.",
        f"Every cell includes the same Python loop overhead (`for k in keys:` in a generated function): "
        f"{overhead} for an empty body.",
        "lazycache: MemoryStore, read_through=False, writer and pruner idle (3600 s intervals, batch_size "
        "above the writes made); in set-new the pruner is woken by the soft maxsize and evicts in its thread.",
    ]
    return "\n".join(lines)


def render_json(report: Report) -> str:
    document = {
        "environment": environment(),
        "repeat": report.repeat,
        "sizes": report.sizes,
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
        "loop_overhead_ns_per_op": [{"size": size, "ns_per_op": ns} for size, ns in report.loop_overhead.items()],
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
    return json.dumps(document, indent=2)


# ----------------------------------------------------------------------------- command line

DEFAULT_SIZES = [20_000, 100_000]
QUICK_SIZES = [2_000]
DEFAULT_REPEAT = 5
QUICK_REPEAT = 2


def _size_list(text: str) -> List[int]:
    """Parses "20k,100k" or "2000"."""
    sizes = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        digits = part[:-1] if scale > 1 else part
        try:
            size = int(digits) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {part!r} (expected e.g. 20000 or 20k)") from None
        if size <= 0:
            raise argparse.ArgumentTypeError(f"sizes must be positive, got {part!r}")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sizes


def _operation_list(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPERATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown operation(s) {', '.join(unknown)}; choose from {', '.join(OPERATIONS)}")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_bench(args: argparse.Namespace) -> int:
    if args.store is not None:  # flush throughput to a database: see lazycache.bench_store
        from .bench_store import run

        return run(args)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    interactive = sys.stderr.isatty()

    def progress(message: str) -> None:
        if interactive:
            print(f"\rmeasuring {message}...\033[K", end="", file=sys.stderr, flush=True)

    report = measure(args.operations, sizes, repeat, progress)
    if interactive:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(render_json(report) if args.json else render_table(report))
    return 1 if report.failed else 0


def _add_bench_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    bench = commands.add_parser(
        "bench",
        help="measure ns/op of the hot dict operations against dict and other caches",
        description="Measures ns/op of the hot dict operations, for both lazycache cores, dict and "
        "(when installed) cachetools, cachebox and lru-dict, side by side in one run.",
        epilog="operations: " + "; ".join(f"{op.name}: {op.summary}" for op in OPERATIONS.values()),
    )
    bench.add_argument("--sizes", type=_size_list, help="comma-separated key counts, e.g. 20k,100k (default: 20k,100k)")
    bench.add_argument("--repeat", type=_positive_int, help=f"runs per cell; the best is reported (default: {DEFAULT_REPEAT})")
    bench.add_argument(
        "--operations", type=_operation_list, default=list(OPERATIONS), help="comma-separated subset of the operations"
    )
    bench.add_argument("--quick", action="store_true", help=f"smoke run: sizes {_human(QUICK_SIZES[0])}, repeat {QUICK_REPEAT}")
    bench.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    bench.add_argument(
        "--store",
        nargs="?",
        const="sqlite",
        metavar="URL",
        help="measure flush throughput (rows/s) to a database instead: an SQLAlchemy URL, or none (or 'sqlite') "
        "for a temporary SQLite file; --sizes are then batch sizes (default 1k,10k; --quick: 1k on a smaller table)",
    )
    bench.set_defaults(handler=_run_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazycache", description="lazycache command-line tools.")
    parser.add_argument("--version", action="version", version=f"lazycache {lazycache.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    _add_bench_command(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `lazycache` console script and of `python -m lazycache`."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
