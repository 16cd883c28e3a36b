"""The ``lazycache`` command line.

``lazycache bench`` (also ``python -m lazycache bench``) measures both lazycache
cores side by side with ``dict`` and, when they are installed, other in-memory
caches, in four sections (``--sections``):

* ``ops``: ns/op of the hot dict operations and of a mixed workload, with the
  ratio to dict (this module);
* ``threads``: aggregate get throughput of 1-20 reader threads, with and without
  a writer thread (``lazycache.bench_threads``);
* ``latency``: percentiles of one ``cache[key] = value`` while the writer thread
  flushes 100k entries (``lazycache.bench_latency``);
* ``memory``: bytes per entry beyond a plain dict, by RSS in a fresh process per
  contender (``lazycache.bench_memory``).

How an ops cell is measured: the structure is built outside the timed region,
then a generated function times one tight ``for k in keys: <operation>`` loop over
a pre-shuffled key list with ``time.perf_counter_ns``, the garbage collector off.
Every contender runs the same generated loop, so the loop overhead is the same
in every cell. Each cell is repeated, contenders taking turns within a repeat
(round-robin), and the best run is reported with the spread of the runs.

To add an operation, write a function decorated with ``@operation``; to add a
contender, add a loader to ``CONTENDERS``. To add a subcommand, add a
``_add_<name>_command`` to ``build_parser``.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import importlib
import itertools
import json
import math
import os
import platform
import random
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, TextIO, TypeVar

import lazycache

from ._open import is_redis_url
from .cache import implementation_class
from .info import add_info_command
from .journal_cli import add_journal_command
from .stores import MemoryStore

T = TypeVar("T")

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

    make: Callable[[int | None], Any]
    """Returns an empty structure; maxsize None means unbounded."""
    settle: Callable[[Any], None] = _nothing
    """Makes every entry clean (lazycache: flushes to the store); nothing elsewhere."""
    close: Callable[[Any], None] = _nothing
    """Releases the structure once its trial is over."""
    core: str | None = None
    """For lazycache: the core ("cython" or "python"); None for the others."""

    def filled(self, keys: Sequence[Any], maxsize: int | None = None, clean: bool = False) -> Any:
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
        raise Unavailable(
            f"{distribution} not installed (pip install 'lazywritercache[bench]')"
        ) from None


def _dict() -> Contender:
    return Contender(make=lambda maxsize: {})


def lazycache_class(core: str) -> type:
    """LazyWriterCache on the given core, or Unavailable saying why not."""
    try:
        return implementation_class(core)
    except ValueError:
        if core == "cython" and os.environ.get("LAZYCACHE_NO_EXTENSIONS"):
            raise Unavailable("compiled core disabled by LAZYCACHE_NO_EXTENSIONS") from None
        raise Unavailable(
            "compiled core not built" if core == "cython" else f"no {core} core"
        ) from None


def _lazycache(core: str) -> Callable[[], Contender]:
    """Loader for LazyWriterCache on the given core, with an idle writer and pruner and no read-through."""

    def load() -> Contender:
        cls = lazycache_class(core)

        def make(maxsize: int | None) -> Any:
            return cls(
                MemoryStore(),
                maxsize=maxsize,
                write_interval=_IDLE_INTERVAL,
                prune_interval=_IDLE_INTERVAL,
                batch_size=_NO_WRITE_TRIGGER,
                read_through=False,
            )

        return Contender(
            make=make,
            settle=lambda cache: cache.flush(),
            close=lambda cache: cache.close(flush=False),
            core=core,
        )

    return load


def _cachetools() -> Contender:
    cachetools = _import("cachetools", "cachetools")
    return Contender(make=lambda maxsize: cachetools.LRUCache(maxsize or math.inf))


def _cachetools_locked() -> Contender:
    """cachetools.LRUCache as its documentation asks threads to share it: every call under a lock.

    The comparison for lazycache's pure-Python core, which is thread-safe by itself.
    """
    base: Any = _import("cachetools", "cachetools").LRUCache

    class LockedLRUCache(base):  # type: ignore[misc]
        def __init__(self, maxsize: float) -> None:
            super().__init__(maxsize)
            # Re-entrant: an eviction inside __setitem__ calls pop(), hence __getitem__.
            self.lock = threading.RLock()

        def __getitem__(self, key: Any) -> Any:
            with self.lock:
                return super().__getitem__(key)

        def __setitem__(self, key: Any, value: Any) -> None:
            with self.lock:
                super().__setitem__(key, value)

        def __delitem__(self, key: Any) -> None:
            with self.lock:
                super().__delitem__(key)

        def get(self, key: Any, default: Any = None) -> Any:
            with self.lock:
                return super().get(key, default)

    return Contender(make=lambda maxsize: LockedLRUCache(maxsize or math.inf))


def _cachebox() -> Contender:
    cachebox = _import("cachebox", "cachebox")
    return Contender(make=lambda maxsize: cachebox.LRUCache(maxsize or 0))  # 0: unbounded


def _lru_dict() -> Contender:
    lru = _import("lru", "lru-dict")
    return Contender(make=lambda maxsize: lru.LRU(maxsize or _LRU_UNBOUNDED))


BASELINE = "dict"

CONTENDERS: dict[str, Callable[[], Contender]] = {
    BASELINE: _dict,
    "lazycache (cython)": _lazycache("cython"),
    "lazycache (python)": _lazycache("python"),
    "cachetools.LRUCache": _cachetools,
    "cachetools + Lock": _cachetools_locked,
    "cachebox.LRUCache": _cachebox,
    "lru.LRU": _lru_dict,
}
"""Column order of the tables; each loader raises Unavailable when it cannot run here."""


def load_contenders() -> tuple[dict[str, Contender], dict[str, str]]:
    """(available contenders by name, reason by name of those skipped)."""
    available: dict[str, Contender] = {}
    skipped: dict[str, str] = {}
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
    for {target} in keys:
{body}
    return clock() - start
"""


def compile_loop(body: str, prologue: str = "pass", target: str = "k") -> Loop:
    """A function `loop(c, keys)` that runs `body` for each `target` in keys and returns the elapsed ns.

    Generated rather than written with a callback so that nothing but `body` and the
    bare `for` sits inside the timed region. `body` may span several lines.
    """
    namespace: dict[str, Any] = {"clock": time.perf_counter_ns}
    indented = "\n".join(" " * 8 + line for line in body.splitlines())
    source = _LOOP_SOURCE.format(prologue=prologue, target=target, body=indented)
    exec(compile(source, f"<lazycache bench: {' '.join(body.split())}>", "exec"), namespace)
    return namespace["loop"]  # type: ignore[no-any-return]


EMPTY_LOOP = compile_loop("pass")
GET_ITEM = compile_loop("c[k]")
GET_METHOD = compile_loop("get(k)", prologue="get = c.get")
SET_ITEM = compile_loop("c[k] = 1")
DEL_ITEM = compile_loop("del c[k]")
MIXED = compile_loop("if s:\n    c[k] = 1\nelse:\n    c[k]", target="k, s")
MIXED_EMPTY = compile_loop("if s:\n    pass\nelse:\n    pass", target="k, s")
MIXED_WARM = compile_loop("get(k)", prologue="get = c.get", target="k, s")


# ----------------------------------------------------------------------------- workloads

ZIPF_S = 1.1
"""Exponent of the mixed workload's Zipf distribution: key of rank r drawn with probability ∝ 1/r^s."""

MIXED_SET_FRACTION = 0.1
"""Share of sets in the mixed workload; the rest are gets."""


def zipf_ranks(n: int, population: int, s: float, rng: random.Random) -> list[int]:
    """n ranks in [0, population), rank r drawn with probability proportional to 1 / (r + 1) ** s."""
    cumulative = list(itertools.accumulate((r + 1) ** -s for r in range(population)))
    total = cumulative[-1]
    draw, pick = rng.random, bisect.bisect_left
    last = population - 1
    return [min(pick(cumulative, draw() * total), last) for _ in range(n)]


@dataclass
class Workload:
    """The keys of one size: built once, shared by every contender."""

    size: int
    keys: list[str]
    """The keys inserted when a structure is filled, in insertion order."""
    shuffled: list[str]
    """The same keys in random order: the loops over present keys walk this."""
    absent: list[str]
    """`size` keys never inserted, in random order."""
    seed: int = 0
    _mixed: list[tuple[str, bool]] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, size: int, seed: int = 0) -> Workload:
        rng = random.Random(seed)
        keys = [f"key:{i}" for i in range(size)]
        absent = [f"key:{i}" for i in range(size, 2 * size)]
        shuffled = keys[:]
        rng.shuffle(shuffled)
        rng.shuffle(absent)
        for key in keys + absent:
            hash(key)  # str caches its hash: no contender pays for computing it
        return cls(size, keys, shuffled, absent, seed)

    @property
    def mixed(self) -> list[tuple[str, bool]]:
        """`size` operations (key, is_set): 90% gets, 10% sets, keys Zipf-distributed; built on first use.

        Rank r is the key `shuffled[r]`, so the hot keys are spread over the structure.
        """
        if self._mixed is None:
            rng = random.Random(self.seed + 1)
            ranks = zipf_ranks(self.size, self.size, ZIPF_S, rng)
            draw = rng.random
            self._mixed = [(self.shuffled[r], draw() < MIXED_SET_FRACTION) for r in ranks]
        return self._mixed


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


def best_of(samples: Sequence[float]) -> float:
    return min(samples)


def spread_of(samples: Sequence[float]) -> float:
    """(max - min) / min of the samples, in percent."""
    best = min(samples)
    return (max(samples) - best) / best * 100 if best else 0.0


class Runs:
    """A figure measured several times: its `samples` (one per run) give the best and the spread."""

    samples: list[float]

    @property
    def best(self) -> float:
        return best_of(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / min of the runs, in percent."""
        return spread_of(self.samples)


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


class Progress:
    """A one-line progress bar on a terminal: section, bar, what runs now, elapsed time.

    Silent unless enabled (stderr is a TTY and the output is not JSON), and until the
    run has lasted `delay` seconds: a quick run prints nothing.
    """

    def __init__(
        self, enabled: bool, stream: TextIO | None = None, delay: float = 1.0, sections: int = 1
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.sections = sections
        self.started = time.monotonic()
        self._index = 0
        self._title = ""
        self._total = 1
        self._done = 0
        self._drawn = False
        self._last_draw = 0.0

    def section(self, title: str, total: int) -> None:
        """A new section of `total` steps begins."""
        self._index += 1
        self._title = title
        self._total = max(1, total)
        self._done = 0

    def advance(self, label: str) -> None:
        """The next step, described by `label`, begins (the previous one is done)."""
        self._draw(label)
        self._done += 1

    def _draw(self, label: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.started < self.delay or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        width = 24
        filled = min(width, self._done * width // self._total)
        elapsed = int(now - self.started)
        line = (
            f"lazycache bench {elapsed // 60}:{elapsed % 60:02d} [{self._index}/{self.sections}] {self._title} "
            f"[{'#' * filled}{'.' * (width - filled)}] {self._done * 100 // self._total:3d}% {label}"
        )
        columns = _terminal_columns(self.stream)
        print(f"\r{line[: columns - 1]}\033[K", end="", file=self.stream, flush=True)
        self._drawn = True

    def close(self) -> None:
        """Erases the bar."""
        if self._drawn:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._drawn = False


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


NO_PROGRESS = Progress(enabled=False)


def _timed(run: Callable[[], T]) -> T:
    """Runs `run` with the garbage collector off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run()
    finally:
        if was_enabled:
            gc.enable()


def _rotated(names: list[T], turn: int) -> list[T]:
    """Round-robin: each repeat starts with the next contender, so none is always first."""
    if not names:
        return names
    turn %= len(names)
    return names[turn:] + names[:turn]


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
        progress.advance(f"keys @ {_human(size)}")
        work = Workload.build(size)
        runs = report.repeats[size]
        pass_length = report.pass_length[size] = min(size, MAX_PASS)
        # partial binds the arguments now: a lambda would look up `work`, deleted below, when called.
        report.loop_overhead[size] = min(
            _timed(partial(EMPTY_LOOP, None, _pass_slice(work.shuffled, pass_length, 0)))
            / pass_length
            for _ in range(max(runs, 3))
        )
        if "mixed" in operations:
            progress.advance(f"mixed keys @ {_human(size)}")
            ops = _pass_slice(work.mixed, pass_length, 0)
            report.mixed_loop_overhead[size] = min(
                _timed(partial(MIXED_EMPTY, None, ops)) / len(ops) for _ in range(3)
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
            for name in _rotated(list(row), turn):
                progress.advance(f"{op.name} @ {_human(size)}: {name}")
                if name in report.failed:
                    continue
                contender = available[name]
                trial = kept.pop(name, None)
                try:
                    if trial is None:
                        trial = op.prepare(contender, work)
                    keys = _pass_slice(trial.keys, pass_length, turn)
                    _timed(partial(trial.warm_up, keys))
                    row[name].samples.append(_timed(partial(trial.run, keys)) / len(keys))
                    if op.reset is not None and turn < runs - 1:
                        op.reset(contender, trial.structure)
                        kept[name] = trial
                        trial = None
                except Exception as exc:
                    if name == BASELINE:
                        raise
                    report.failed[name] = f"{op.name} @ {_human(size)} raised {exc!r}"
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


# ----------------------------------------------------------------------------- output


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "gil": _gil_enabled(),
        "switch_interval_s": sys.getswitchinterval(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "lazycache_version": lazycache.__version__,
        "lazycache_implementation": lazycache.IMPLEMENTATION,
    }


def _human(size: int) -> str:
    """20000 -> "20k", 1500 -> "1500"."""
    for suffix, unit in (("M", 1_000_000), ("k", 1_000)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _symbols() -> tuple[str, str]:
    """(times, plus-minus) signs, in ASCII if stdout cannot encode them."""
    try:
        "×±µ".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "x", "+/-"
    return "×", "±"


def micro() -> str:
    """The micro sign, or "u" if stdout cannot encode it."""
    return "µ" if _symbols()[0] == "×" else "u"


TABLE_WIDTH = 120
"""Columns the text output fits in: tables wrap their columns, notes their words (--json has it all)."""


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: int = 1,
    width: int = TABLE_WIDTH,
) -> list[str]:
    """Lines of a plain-text table: the first `left` columns left-aligned, the others right-aligned.

    A table wider than `width` is wrapped: its right-hand columns are split into blocks that
    fit, one after the other (separated by a blank line), each repeating the `left` columns.
    """
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    fixed = sum(widths[:left]) + 2 * max(left - 1, 0)
    blocks: list[list[int]] = [[]]
    used = fixed
    for i in range(left, len(header)):
        if blocks[-1] and used + 2 + widths[i] > width:
            blocks.append([])
            used = fixed
        blocks[-1].append(i)
        used += 2 + widths[i]

    lines: list[str] = []
    for block in blocks:
        columns = [*range(left), *block]

        def fmt(line: Sequence[str], columns: list[int] = columns) -> str:
            return "  ".join(
                line[i].ljust(widths[i]) if i < left else line[i].rjust(widths[i]) for i in columns
            ).rstrip()

        if lines:
            lines.append("")
        lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows]
    return lines


def fit_width(text: str, width: int = TABLE_WIDTH) -> str:
    """`text` with every line longer than `width` word-wrapped (tables are wrapped by format_table)."""
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
        else:
            indent = " " * (len(line) - len(line.lstrip()))
            out += textwrap.wrap(
                line, width, subsequent_indent=indent + "  ", break_on_hyphens=False
            ) or [line]
    return "\n".join(out)


def render_header() -> str:
    env = environment()
    gil = "GIL enabled" if env["gil"] else "free-threaded, GIL disabled"
    return (
        f"lazycache bench: Python {env['python']} ({env['python_implementation']}, {gil}) on {env['platform']}; "
        f"{env['cpus']} CPUs ({env['cpu']}); lazycache {env['lazycache_version']}, "
        f"IMPLEMENTATION={env['lazycache_implementation']}"
    )


def render_table(report: Report) -> str:
    """The ops section as a table."""
    times, plus_minus = _symbols()
    lines = [f"== ops: ns/op (ratio to dict) {plus_minus}spread"]
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"FAILED {name}: {what}" for name, what in report.failed.items()]

    cells = {(c.operation, c.size, c.contender): c for c in report.cells}
    header = ["operation", "size", *report.contenders]
    rows = []
    for op_name in report.operations:
        for size in report.sizes:
            row = [op_name, _human(size)]
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
            f"{n} runs at {', '.join(_human(s) for s in report.sizes if report.repeats[s] == n)}"
            for n in runs
        )
    overhead = ", ".join(
        f"{ns:.1f} ns/op at {_human(size)}" for size, ns in report.loop_overhead.items()
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
            f"{ns:.1f} at {_human(size)}" for size, ns in report.mixed_loop_overhead.items()
        )
        lines.append(
            f"mixed: one pass = one op per key, {MIXED_SET_FRACTION:.0%} sets, Zipf s={ZIPF_S} over the keys; "
            f"its loop (`for k, s in ops: if s: ... else: ...`) costs {mixed_overhead} ns/op with empty branches."
        )
    sliced = [size for size, length in report.pass_length.items() if length < size]
    if sliced:
        lines.append(
            "At "
            + ", ".join(_human(s) for s in sliced)
            + f": structures of the full size, but a timed pass walks "
            f"{_human(MAX_PASS)} of the keys, a different slice each run."
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


def render_json(report: Report) -> str:
    """The ops section alone as a JSON document (see `BenchRun.to_json` for the whole run)."""
    return json.dumps({"environment": environment(), **report_json(report)}, indent=2)


# ----------------------------------------------------------------------------- the whole run

SECTIONS = ("ops", "threads", "latency", "memory")


@dataclass
class BenchRun:
    """What one `lazycache bench` run measured, section by section (None: not selected)."""

    sections: list[str]
    quick: bool
    ops: Report | None = None
    threads: Any = None
    """A bench_threads.ThreadReport."""
    latency: Any = None
    """A bench_latency.LatencyReport."""
    memory: Any = None
    """A bench_memory.MemoryReport."""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(
            part is not None and part.failed
            for part in (self.ops, self.threads, self.latency, self.memory)
        )

    def to_json(self) -> dict[str, Any]:
        from . import bench_latency, bench_memory, bench_threads

        return {
            "environment": environment(),
            "sections": self.sections,
            "quick": self.quick,
            "seconds": self.seconds,
            "ops": None if self.ops is None else report_json(self.ops),
            "threads": None if self.threads is None else bench_threads.report_json(self.threads),
            "latency": None if self.latency is None else bench_latency.report_json(self.latency),
            "memory": None if self.memory is None else bench_memory.report_json(self.memory),
        }

    def render(self) -> str:
        from . import bench_latency, bench_memory, bench_threads

        parts = [render_header()]
        if self.ops is not None:
            parts.append(render_table(self.ops))
        if self.threads is not None:
            parts.append(bench_threads.render_table(self.threads))
        if self.latency is not None:
            parts.append(bench_latency.render_table(self.latency))
        if self.memory is not None:
            parts.append(bench_memory.render_table(self.memory))
        parts.append(f"({self.seconds:.0f} s)")
        return fit_width("\n\n".join(parts))


def run_sections(args: argparse.Namespace, progress: Progress = NO_PROGRESS) -> BenchRun:
    """Measures the sections `args` selects; `args` as parsed by `lazycache bench`."""
    from . import bench_latency, bench_memory, bench_threads

    started = time.monotonic()
    run = BenchRun(list(args.sections), bool(args.quick))
    fixed = args.repeat

    def runs(default: int, quick: int) -> int:
        return fixed or (quick if args.quick else default)

    if "ops" in args.sections:
        sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        run.ops = measure(
            args.operations,
            sizes,
            lambda size: fixed or (QUICK_REPEAT if args.quick else default_repeat(size)),
            progress,
        )
    if "threads" in args.sections:
        run.threads = bench_threads.measure(
            thread_counts=args.threads
            or (bench_threads.QUICK_THREAD_COUNTS if args.quick else bench_threads.THREAD_COUNTS),
            keys=bench_threads.QUICK_KEYS if args.quick else bench_threads.KEYS,
            duration=bench_threads.QUICK_DURATION if args.quick else bench_threads.DURATION,
            repeat=runs(bench_threads.REPEAT, 1),
            progress=progress,
        )
    if "latency" in args.sections:
        run.latency = bench_latency.measure(
            pending=bench_latency.QUICK_PENDING if args.quick else bench_latency.PENDING,
            sets=bench_latency.QUICK_SETS if args.quick else bench_latency.SETS,
            repeat=runs(bench_latency.REPEAT, 1),
            progress=progress,
        )
    if "memory" in args.sections:
        run.memory = bench_memory.measure(
            size=bench_memory.QUICK_SIZE if args.quick else bench_memory.SIZE,
            repeat=runs(bench_memory.REPEAT, 1),
            progress=progress,
        )
    run.seconds = time.monotonic() - started
    return run


# ----------------------------------------------------------------------------- command line

DEFAULT_SIZES = [20_000, 100_000, 1_000_000]
QUICK_SIZES = [2_000]
DEFAULT_REPEAT = 9
LARGE_SIZE = 1_000_000
DEFAULT_REPEAT_LARGE = 3
QUICK_REPEAT = 2


def _size_list(text: str) -> list[int]:
    """Parses "20k,100k" or "2000"."""
    sizes = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        digits = part[:-1] if scale > 1 else part
        try:
            size = int(digits) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a size: {part!r} (expected e.g. 20000 or 20k)"
            ) from None
        if size <= 0:
            raise argparse.ArgumentTypeError(f"sizes must be positive, got {part!r}")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sizes


def _name_list(kind: str, known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            what = f"unknown {kind}(s) {', '.join(unknown)}" if unknown else f"no {kind} given"
            raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(known)}")
        return [name for name in known if name in names]  # canonical order, no duplicates

    return parse


def _operation_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPERATIONS]
    if unknown or not names:
        what = f"unknown operation(s) {', '.join(unknown)}" if unknown else "no operation given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(OPERATIONS)}")
    return list(dict.fromkeys(names))


_section_list = _name_list("section", SECTIONS)


def _thread_counts(text: str) -> list[int]:
    counts = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        counts.append(_positive_int(part))
    if not counts:
        raise argparse.ArgumentTypeError("no thread count given")
    return sorted(set(counts))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_bench(args: argparse.Namespace) -> int:
    if is_redis_url(args.store):
        from .bench_redis import run_store_bench  # get-hit vs a Redis GET, flush vs pipelined MSET

        return run_store_bench(
            args.store, sizes=args.sizes, repeat=args.repeat, quick=args.quick, as_json=args.json
        )
    if args.store is not None:  # flush throughput to a database: see lazycache.bench_store
        from .bench_store import run as run_store

        return run_store(args)
    if args.plot is not None:
        from .bench_plot import MissingMatplotlib, check_matplotlib

        try:
            check_matplotlib()
        except MissingMatplotlib as exc:
            print(f"lazycache bench: --plot: {exc}", file=sys.stderr)
            return 2
    progress = Progress(enabled=sys.stderr.isatty() and not args.json, sections=len(args.sections))
    try:
        run = run_sections(args, progress)
    finally:
        progress.close()
    print(json.dumps(run.to_json(), indent=2) if args.json else run.render())
    if args.plot is not None:
        from .bench_plot import plot

        plot(run, args.plot)
        if not args.json:
            print(f"\nplot written to {args.plot}")
    return 1 if run.failed else 0


def _add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure lazycache against dict and other caches: ops, threads, latency, memory",
        description="Measures both lazycache cores, dict and (when installed) cachetools, cachebox and "
        "lru-dict side by side in one run: ns/op of the hot dict operations and a mixed workload (ops), "
        "aggregate throughput of reader threads (threads), set latency while the writer flushes (latency) "
        "and bytes per entry beyond a dict (memory). Every figure is the best (min) of several runs, "
        "with the spread shown.",
        epilog="operations: " + "; ".join(f"{op.name}: {op.summary}" for op in OPERATIONS.values()),
    )
    bench.add_argument(
        "--sections",
        type=_section_list,
        default=list(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    bench.add_argument(
        "--sizes",
        type=_size_list,
        help="ops: comma-separated key counts, e.g. 20k,100k (default: 20k,100k,1M)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive_int,
        help=f"runs per figure in every section; the best is reported (default: ops {DEFAULT_REPEAT}, "
        f"{DEFAULT_REPEAT_LARGE} at 1M keys; threads 3; latency 3; memory 2)",
    )
    bench.add_argument(
        "--operations",
        type=_operation_list,
        default=list(OPERATIONS),
        help="ops: comma-separated subset of the operations",
    )
    bench.add_argument(
        "--threads",
        type=_thread_counts,
        help="threads: comma-separated reader counts (default: 1,5,10,20)",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run in a few seconds: ops at {_human(QUICK_SIZES[0])} keys, small threads, latency and "
        "memory runs, fewer repeats; checks that everything works, its figures mean little",
    )
    bench.add_argument(
        "--json",
        action="store_true",
        help="print a JSON document of every section instead of tables",
    )
    bench.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the ratios to dict as grouped bars into FILE.png (needs matplotlib: pip install 'lazywritercache[bench]')",
    )
    bench.add_argument(
        "--store",
        nargs="?",
        const="sqlite",
        metavar="URL",
        help="measure flush throughput (rows/s) to a database instead: an SQLAlchemy URL, or none (or 'sqlite') "
        "for a temporary SQLite file; --sizes are then batch sizes (default 1k,10k; --quick: 1k on a smaller table). "
        "A redis:// URL measures get-hit against a Redis GET and flush against a pipelined MSET; --sizes are then key counts",
    )
    bench.set_defaults(handler=_run_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazycache", description="lazycache command-line tools.")
    parser.add_argument("--version", action="version", version=f"lazycache {lazycache.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    _add_bench_command(commands)
    add_journal_command(commands)
    add_info_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lazycache` console script and of `python -m lazycache`."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
