"""``lazycache bench --plot FILE.png``: the ratios to dict as grouped bars (needs matplotlib).

One panel per ops size (groups: operations; bars: contenders; ratio of ns/op to
dict's, log scale, dict = 1), one for threads (groups: reader counts, alone and
with a writer; ratio of aggregate ns/op to dict's), one for memory (bytes per
entry beyond dict) and one for latency (p50, p99, p99.9 in µs, log scale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .hotpaths import Report
from .kit.contenders import BASELINE
from .kit.output import environment, human
from .latency import LatencyReport
from .memory import MemoryReport
from .run import BenchRun
from .threads import ThreadReport


class MissingMatplotlib(Exception):
    """matplotlib cannot be imported: the message says how to install it."""


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingMatplotlib(
            "matplotlib is not installed; it comes with the bench extra: pip install 'lazywritercache[bench]' "
            "(or pip install matplotlib)"
        ) from None


_COLOURS = {
    "lazycache (cython)": "#1f77b4",
    "lazycache (python)": "#9ecae1",
    "cachetools.LRUCache": "#ff7f0e",
    "cachetools + Lock": "#ffbb78",
    "cachebox.LRUCache": "#2ca02c",
    "lru.LRU": "#d62728",
    BASELINE: "#7f7f7f",
}


def _grouped_bars(
    axes: Any,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    log: bool,
    reference: float = math.nan,
) -> None:
    """Bars of each series (a value per group; nan = no bar) side by side within each group."""
    names = list(series)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        values = list(series[name])
        shown = [(x, v) for x, v in zip(xs, values) if not math.isnan(v)]
        if not shown:
            continue
        axes.bar(
            [x for x, _ in shown],
            [v for _, v in shown],
            width=width * 0.95,
            label=name,
            color=_COLOURS.get(name),
            edgecolor="none",
        )
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups, fontsize=8)
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        axes.set_yscale("log")
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        shown_values = [
            v for values in series.values() for v in values if not math.isnan(v) and v > 0
        ]
        if shown_values:
            low = min(shown_values + ([reference] if not math.isnan(reference) else []))
            axes.set_ylim(bottom=low * 0.7)
    if not math.isnan(reference):
        axes.axhline(reference, color="black", linewidth=0.8, linestyle="--")
    axes.grid(axis="y", which="both", alpha=0.3)
    axes.set_axisbelow(True)


def _panels(run: BenchRun) -> list[tuple[str, Any]]:
    panels: list[tuple[str, Any]] = []
    if run.ops is not None:
        for size in run.ops.sizes:
            panels.append(("ops", size))
    if run.threads is not None and run.threads.cells:
        panels.append(("threads", None))
    if run.latency is not None and run.latency.cells:
        panels.append(("latency", None))
    if run.memory is not None and run.memory.cells:
        panels.append(("memory", None))
    return panels


def plot(run: BenchRun, path: str) -> None:
    """Draws every measured section of `run` into the PNG file `path`."""
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(run)
    if not panels:
        raise ValueError("nothing to plot: no section measured anything")
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(14, 3.4 * len(panels)), squeeze=False)
    env = environment()
    figure.suptitle(
        f"lazycache bench: Python {env['python']}, {env['cpus']} CPUs ({env['cpu']}); "
        f"best of several runs; lower is better",
        fontsize=10,
    )
    for (kind, size), row in zip(panels, axes_list):
        axes = row[0]
        if kind == "ops" and run.ops is not None:
            _ops_panel(axes, run.ops, size)
        elif kind == "threads" and run.threads is not None:
            _threads_panel(axes, run.threads)
        elif kind == "latency" and run.latency is not None:
            _latency_panel(axes, run.latency)
        elif kind == "memory" and run.memory is not None:
            _memory_panel(axes, run.memory)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _ops_panel(axes: Any, report: Report, size: int) -> None:
    cells = {(c.operation, c.contender): c for c in report.cells if c.size == size}
    names = [n for n in report.contenders if n != BASELINE]
    series = {
        name: [
            cells[op, name].ratio if (op, name) in cells else math.nan for op in report.operations
        ]
        for name in names
    }
    _grouped_bars(axes, report.operations, series, log=True, reference=1.0)
    axes.set_title(
        f"ops at {human(size)} keys: ns/op relative to dict (dashed line = dict)", fontsize=9
    )
    axes.set_ylabel("× dict (log)", fontsize=8)


def _threads_panel(axes: Any, report: ThreadReport) -> None:
    configs = [(n, writer) for writer in (False, True) for n in report.thread_counts]
    groups = [f"{n}r{' + w' if writer else ''}" for n, writer in configs]
    names = [n for n in report.contenders if n != BASELINE and n not in report.failed]
    series = {}
    for name in names:
        values = []
        for n, writer in configs:
            cell = report.cell(name, n, writer)
            values.append(math.nan if cell is None else cell.ratio)
        series[name] = values
    _grouped_bars(axes, groups, series, log=True, reference=1.0)
    axes.set_title(
        f"threads: aggregate get-hit ns/op of N readers (r), alone and with one writer (w), on "
        f"{human(report.keys)} keys, relative to dict",
        fontsize=9,
    )
    axes.set_ylabel("× dict (log)", fontsize=8)


def _latency_panel(axes: Any, report: LatencyReport) -> None:
    order = {
        (name, scenario): i
        for i, (name, scenario) in enumerate(
            (name, scenario) for name in report.contenders for scenario in report.scenarios
        )
    }
    rows = sorted(report.cells, key=lambda c: order.get((c.contender, c.scenario), len(order)))
    groups = [f"{c.contender}\n{c.scenario}" for c in rows]
    series = {
        "p50": [c.best(50.0) / 1000 for c in rows],
        "p99": [c.best(99.0) / 1000 for c in rows],
        "p99.9": [c.best(99.9) / 1000 for c in rows],
    }
    _grouped_bars(axes, groups, series, log=True)
    axes.set_title(
        f"latency of one set while the writer flushes {human(report.pending)} pending entries, µs (log)",
        fontsize=9,
    )
    axes.set_ylabel("µs (log)", fontsize=8)


def _memory_panel(axes: Any, report: MemoryReport) -> None:
    rows = [c for c in report.cells if c.contender != BASELINE]
    groups = [c.label.replace(", ", "\n") for c in rows]
    values = [c.beyond_dict for c in rows]
    colours = [_COLOURS.get(c.contender, "#999999") for c in rows]
    axes.bar(range(len(rows)), values, color=colours, width=0.6)
    for x, v in enumerate(values):
        axes.annotate(f"{v:+.0f}", (x, v), ha="center", va="bottom", fontsize=7)
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels(groups, fontsize=8)
    axes.axhline(0, color="black", linewidth=0.8)
    if values:
        axes.set_ylim(min(0.0, min(values) * 1.15), max(0.0, max(values)) * 1.15 + 1)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    dict_cell = next((c for c in report.cells if c.contender == BASELINE), None)
    dict_text = f" (dict itself: {dict_cell.best:.0f} B/entry)" if dict_cell is not None else ""
    axes.set_title(
        f"memory: bytes per entry beyond a dict at {human(report.size)} entries{dict_text}",
        fontsize=9,
    )
    axes.set_ylabel("bytes/entry", fontsize=8)
