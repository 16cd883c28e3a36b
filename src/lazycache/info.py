"""``lazycache info``: which core runs, on which interpreter, with which extras.

The compiled core is 4-20x faster than its pure-Python twin and a build without a C
compiler falls back to the twin quietly, so this says which one is active and why,
whether the GIL is on, and what each extra found installed. Which core is active, and
why, is `lazycache._compat`'s to say (it also warns at import when CPython runs the
pure-Python core although a compiled one was expected); this only reports it.

Nothing imports this module at ``import lazycache``: only the command line does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import sysconfig
from importlib import metadata
from typing import Any

from . import _compat

DISTRIBUTION = "lazywritercache"
"""The distribution's name on the package index (the import name is `lazycache`)."""

USER_EXTRAS = ("sqlalchemy", "postgresql", "mysql", "redis", "msgpack", "bench")
"""The extras a user installs for a store or a feature, in the order shown; the others
(dev, docs, lint, release) are the project's own tooling."""

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _gil() -> dict[str, Any]:
    """The GIL as the running interpreter has it."""
    free_threaded_build = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13 and later
    return {
        "free_threaded_build": free_threaded_build,
        "enabled": True if is_enabled is None else bool(is_enabled()),
    }


def _core() -> dict[str, Any]:
    """The active core, and why it is the pure-Python one when it is."""
    compiled = _compat.IMPLEMENTATION == "cython"
    module = sys.modules.get("lazycache._core")
    return {
        "implementation": _compat.IMPLEMENTATION,
        "compiled": compiled,
        "reason": _compat.why_pure(),
        "path": getattr(module, "__file__", None) if compiled else None,
    }


def _requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement.strip())
    return match.group(0) if match else requirement.strip()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _psycopg_implementation() -> str:
    """Which psycopg implementation loads: binary, c or python (the latter needs libpq)."""
    try:
        import psycopg
    except ImportError as exc:  # psycopg without a binary and with no libpq to load
        return f"does not load: {exc}"
    return str(psycopg.pq.__impl__)


def _extras(requires: list[str]) -> list[dict[str, Any]]:
    """Each user extra: its requirements, the version of each found installed (None: not)."""
    by_extra: dict[str, list[str]] = {extra: [] for extra in USER_EXTRAS}
    for requirement in requires:
        marker = _EXTRA_MARKER.search(requirement)
        if marker and marker.group(1) in by_extra:
            name = _requirement_name(requirement)
            if name not in by_extra[marker.group(1)]:
                by_extra[marker.group(1)].append(name)
    extras = []
    for extra, names in by_extra.items():
        packages = []
        for name in names:
            package: dict[str, Any] = {"name": name, "version": _version(name)}
            if name.lower() == "psycopg" and package["version"] is not None:
                package["implementation"] = _psycopg_implementation()
            packages.append(package)
        found = bool(packages) and all(p["version"] is not None for p in packages)
        extras.append({"extra": extra, "found": found, "packages": packages})
    return extras


def collect() -> dict[str, Any]:
    """Everything `lazycache info` reports, as a JSON-ready dict."""
    import lazycache

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
        distribution = None
        requires: list[str] = []
    else:
        distribution = {"name": DISTRIBUTION, "version": dist.version}
        requires = dist.requires or []
    return {
        "lazycache": {
            "version": lazycache.__version__,
            "path": os.path.dirname(os.path.abspath(lazycache.__file__)),
            "distribution": distribution,
        },
        "core": _core(),
        "python": {
            "implementation": platform.python_implementation(),
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "gil": _gil(),
        "extras": _extras(requires),
    }


def render(report: dict[str, Any]) -> str:
    """The report as lines of text, one topic per line."""
    lib, core, python, gil = report["lazycache"], report["core"], report["python"], report["gil"]
    dist = lib["distribution"]
    installed = (
        f"distribution {dist['name']} {dist['version']}"
        if dist
        else f"no {DISTRIBUTION} distribution installed"
    )
    if core["compiled"]:
        core_line = f"core: compiled (Cython), {core['path']}"
    else:
        core_line = f"core: pure Python, 4-20x slower than the compiled one ({core['reason']})"
    if gil["free_threaded_build"]:
        gil_line = "GIL: " + (
            "enabled (re-enabled on this free-threaded build)"
            if gil["enabled"]
            else "disabled (free-threaded build)"
        )
    else:
        gil_line = "GIL: enabled (not a free-threaded build)"
    lines = [
        f"lazycache {lib['version']} ({installed}) from {lib['path']}",
        core_line,
        f"python: {python['implementation']} {python['version']}, {python['executable']} on {python['platform']}",
        gil_line,
        "extras:"
        if report["extras"]
        else "extras: unknown (no installed distribution to read them from)",
    ]
    width = max((len(e["extra"]) for e in report["extras"]), default=0)
    for extra in report["extras"]:
        packages = []
        for package in extra["packages"]:
            text = f"{package['name']} {package['version'] or 'not installed'}"
            if "implementation" in package:
                text += f" ({package['implementation']})"
            packages.append(text)
        state = "found  " if extra["found"] else "missing"
        hint = "" if extra["found"] else f"   pip install '{DISTRIBUTION}[{extra['extra']}]'"
        lines.append(f"  {extra['extra']:<{width}}  {state}  {', '.join(packages)}{hint}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def add_info_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `lazycache info` on the command line's subcommands."""
    info = commands.add_parser(
        "info",
        help="show the core in use (compiled or pure Python), the interpreter, the GIL and the extras",
        description="Shows which lazycache core is active (compiled or pure Python, and why), the "
        "interpreter, whether the GIL is enabled, and each extra with the versions installed.",
    )
    info.add_argument("--json", action="store_true", help="print a JSON document instead")
    info.set_defaults(handler=run)
