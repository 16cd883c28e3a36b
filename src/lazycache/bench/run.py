"""One ``lazycache bench`` run of the in-process sections (ops, threads, latency, memory), as a whole."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from . import hotpaths, latency, memory, threads
from .kit.output import environment, fit_width, render_header
from .kit.progress import NO_PROGRESS, Progress
from .latency import LatencyReport
from .memory import MemoryReport
from .threads import ThreadReport


@dataclass
class BenchRun:
    """What one `lazycache bench` run measured, section by section (None: not selected)."""

    sections: list[str]
    quick: bool
    ops: hotpaths.Report | None = None
    threads: ThreadReport | None = None
    latency: LatencyReport | None = None
    memory: MemoryReport | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(
            part is not None and part.failed
            for part in (self.ops, self.threads, self.latency, self.memory)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": environment(),
            "sections": self.sections,
            "quick": self.quick,
            "seconds": self.seconds,
            "ops": None if self.ops is None else hotpaths.report_json(self.ops),
            "threads": None if self.threads is None else threads.report_json(self.threads),
            "latency": None if self.latency is None else latency.report_json(self.latency),
            "memory": None if self.memory is None else memory.report_json(self.memory),
        }

    def render(self) -> str:
        parts = [render_header()]
        if self.ops is not None:
            parts.append(hotpaths.render_table(self.ops))
        if self.threads is not None:
            parts.append(threads.render_table(self.threads))
        if self.latency is not None:
            parts.append(latency.render_table(self.latency))
        if self.memory is not None:
            parts.append(memory.render_table(self.memory))
        parts.append(f"({self.seconds:.0f} s)")
        return fit_width("\n\n".join(parts))


def run_sections(args: argparse.Namespace, progress: Progress = NO_PROGRESS) -> BenchRun:
    """Measures the sections `args` selects; `args` as parsed by `lazycache bench`."""
    started = time.monotonic()
    run = BenchRun(list(args.sections), bool(args.quick))
    fixed = args.repeat

    def runs(default: int, quick: int) -> int:
        return fixed or (quick if args.quick else default)

    if "ops" in args.sections:
        run.ops = hotpaths.measure(
            args.operations,
            args.sizes or (hotpaths.QUICK_SIZES if args.quick else hotpaths.DEFAULT_SIZES),
            lambda size: (
                fixed or (hotpaths.QUICK_REPEAT if args.quick else hotpaths.default_repeat(size))
            ),
            progress,
        )
    if "threads" in args.sections:
        run.threads = threads.measure(
            thread_counts=args.threads
            or (threads.QUICK_THREAD_COUNTS if args.quick else threads.THREAD_COUNTS),
            keys=threads.QUICK_KEYS if args.quick else threads.KEYS,
            duration=threads.QUICK_DURATION if args.quick else threads.DURATION,
            repeat=runs(threads.REPEAT, 1),
            progress=progress,
        )
    if "latency" in args.sections:
        run.latency = latency.measure(
            pending=latency.QUICK_PENDING if args.quick else latency.PENDING,
            sets=latency.QUICK_SETS if args.quick else latency.SETS,
            repeat=runs(latency.REPEAT, 1),
            progress=progress,
        )
    if "memory" in args.sections:
        run.memory = memory.measure(
            size=memory.QUICK_SIZE if args.quick else memory.SIZE,
            repeat=runs(memory.REPEAT, 1),
            progress=progress,
        )
    run.seconds = time.monotonic() - started
    return run
