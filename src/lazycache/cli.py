"""The ``lazycache`` command line: ``lazycache bench``, ``lazycache journal ...``, ``lazycache info``.

Each subcommand lives with what it runs and registers itself here: ``bench`` in the
benchmark kit (``lazycache.bench.command``), ``journal`` in ``lazycache.journal_cli``,
``info`` in ``lazycache.info``. To add a subcommand, write an ``add_<name>_command``
beside its code and call it from ``build_parser``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lazycache

from .bench.command import add_bench_command
from .info import add_info_command
from .journal_cli import add_journal_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazycache", description="lazycache command-line tools.")
    parser.add_argument("--version", action="version", version=f"lazycache {lazycache.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    add_bench_command(commands)
    add_journal_command(commands)
    add_info_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lazycache` console script and of `python -m lazycache`."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
