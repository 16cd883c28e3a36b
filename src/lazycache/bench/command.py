"""The ``lazycache bench`` subcommand: its options, and which section each run goes to.

Without ``--store``: the in-process sections (``run.run_sections``: ops, threads,
latency, memory), as tables or JSON, and a plot with ``--plot``. ``--store URL``:
flush throughput to a database (``store``) or, for a Redis URL, lazycache in front of
Redis (``redis``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Callable

from .._open import is_redis_url
from .hotpaths import DEFAULT_REPEAT, DEFAULT_REPEAT_LARGE, OPERATIONS, QUICK_SIZES
from .kit.output import human
from .kit.progress import Progress

SECTIONS = ("ops", "threads", "latency", "memory")
"""What `--sections` chooses from: the sections `run.run_sections` measures in one run."""


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


def _name_list(
    kind: str, known: Sequence[str], as_given: bool = False
) -> Callable[[str], list[str]]:
    """A parser of comma-separated names among `known`, without duplicates.

    The names come back in the order of `known`, or in the order given if `as_given`.
    """

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            what = f"unknown {kind}(s) {', '.join(unknown)}" if unknown else f"no {kind} given"
            raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(known)}")
        if as_given:
            return list(dict.fromkeys(names))
        return [name for name in known if name in names]

    return parse


_section_list = _name_list("section", SECTIONS)
_operation_list = _name_list("operation", list(OPERATIONS), as_given=True)


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
    # The sections are imported here, by the runs that use them: `lazycache info` and
    # `lazycache journal` do not pay for them at start-up.
    if args.store is not None:
        # A Redis URL: get-hit against a Redis GET, flush against a pipelined MSET;
        # otherwise flush throughput to the database.
        from . import redis, store

        run_store = redis.run if is_redis_url(args.store) else store.run
        return run_store(
            args.store, sizes=args.sizes, repeat=args.repeat, quick=args.quick, as_json=args.json
        )
    if args.plot is not None:
        from .plot import MissingMatplotlib, check_matplotlib

        try:
            check_matplotlib()
        except MissingMatplotlib as exc:
            print(f"lazycache bench: --plot: {exc}", file=sys.stderr)
            return 2
    from .run import run_sections

    progress = Progress(enabled=sys.stderr.isatty() and not args.json, sections=len(args.sections))
    try:
        run = run_sections(args, progress)
    finally:
        progress.close()
    print(json.dumps(run.to_json(), indent=2) if args.json else run.render())
    if args.plot is not None:
        from .plot import plot

        plot(run, args.plot)
        if not args.json:
            print(f"\nplot written to {args.plot}")
    return 1 if run.failed else 0


def add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `lazycache bench` on the command line's subcommands."""
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
        help=f"smoke run in a few seconds: ops at {human(QUICK_SIZES[0])} keys, small threads, latency and "
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
