"""How the sections print: numbers as text, plain-text tables that fit, the machine they ran on."""

from __future__ import annotations

import math
import os
import platform
import sys
import textwrap
from collections.abc import Collection, Sequence
from typing import Any

import lazycache

TABLE_WIDTH = 120
"""Columns the text output fits in: tables wrap their columns, notes their words (--json has it all)."""


# ----------------------------------------------------------------------------- numbers


def human(size: int) -> str:
    """20000 -> "20k", 1500 -> "1500"."""
    for suffix, unit in (("M", 1_000_000), ("k", 1_000)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def rate(per_second: float, suffix: str = "/s") -> str:
    """A rate, short: "1.2M/s", "25k/s", "2.5k/s", "480/s"; "-" for nan."""
    if math.isnan(per_second):
        return "-"
    if per_second >= 1e6:
        return f"{per_second / 1e6:.1f}M{suffix}"
    if per_second >= 1e4:
        return f"{per_second / 1e3:.0f}k{suffix}"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f}k{suffix}"
    if per_second >= 1 or per_second == 0:
        return (
            f"{per_second:.0f}{suffix}"  # a quick run's writer may set a few hundred keys a second
        )
    return f"{per_second:.2g}{suffix}"


def symbols() -> tuple[str, str]:
    """(times, plus-minus) signs, in ASCII if stdout cannot encode them."""
    try:
        "×±µ".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "x", "+/-"
    return "×", "±"


def micro() -> str:
    """The micro sign, or "u" if stdout cannot encode it."""
    return "µ" if symbols()[0] == "×" else "u"


# ----------------------------------------------------------------------------- text


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: int = 1,
    width: int = TABLE_WIDTH,
    breaks: Collection[int] = (),
) -> list[str]:
    """Lines of a plain-text table: the first `left` columns left-aligned, the others right-aligned.

    A table wider than `width` is wrapped: its right-hand columns are split into blocks that
    fit, one after the other (separated by a blank line), each repeating the `left` columns.
    `breaks`: indexes of the rows to precede by a blank line, to set groups of rows apart.
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
        lines += [fmt(header), fmt(["-" * w for w in widths])]
        for index, row in enumerate(rows):
            if index in breaks:
                lines.append("")
            lines.append(fmt(row))
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


# ----------------------------------------------------------------------------- the machine


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


def switch_interval_ms() -> str:
    """The interpreter's thread switch interval (GIL hand-offs), in ms."""
    return f"{sys.getswitchinterval() * 1000:g}"


def environment() -> dict[str, Any]:
    """The interpreter, the machine and lazycache a run measured."""
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


def render_header() -> str:
    """The first line of a run's text output: what it ran on."""
    env = environment()
    gil = "GIL enabled" if env["gil"] else "free-threaded, GIL disabled"
    return (
        f"lazycache bench: Python {env['python']} ({env['python_implementation']}, {gil}) on {env['platform']}; "
        f"{env['cpus']} CPUs ({env['cpu']}); lazycache {env['lazycache_version']}, "
        f"IMPLEMENTATION={env['lazycache_implementation']}"
    )
