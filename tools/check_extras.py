"""Installs a built wheel with each of its user-facing extras, each in a fresh virtual environment,
and imports what that extra is for; on a free-threaded build, also checks the GIL stayed off.

    python tools/check_extras.py --wheel dist/lazywritercache-*.whl [--extra NAME ...]

Prints one row per extra (installed or not, the first line of pip's complaint, the modules
imported, the GIL state after importing them) and exits 1 if any extra did not install or
import. The interpreter running this script is the one tested (make test-pythons runs it on
each). The development extras (dev, docs, lint, release, bench) are not user-facing: skipped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

DEVELOPMENT = frozenset({"dev", "docs", "lint", "release", "bench"})

IMPORTS = {
    "sqlalchemy": ["lazycache.stores.sqlalchemy"],
    "postgresql": ["lazycache.stores.sqlalchemy", "psycopg", "lazycache.coherence.postgres"],
    "mysql": ["lazycache.stores.sqlalchemy", "pymysql"],
    "redis": ["lazycache.stores.redis", "lazycache.coherence.redis"],
    "msgpack": ["msgpack"],
    "prometheus": ["lazycache.metrics.prometheus"],
    "opentelemetry": ["lazycache.metrics.otel"],
    "asyncio": ["lazycache.aio", "sqlalchemy.ext.asyncio"],
    "asyncpg": ["lazycache.aio", "asyncpg", "psycopg"],
    "aiosqlite": ["lazycache.aio", "aiosqlite"],
    "aiomysql": ["lazycache.aio", "aiomysql", "pymysql"],
    "service": ["lazycache.aio", "fastapi", "uvicorn", "asyncpg", "uvloop", "httptools"],
}
"""What each extra is for: the modules a user of it imports. An extra missing here fails the check."""

PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
gil = getattr(sys, "_is_gil_enabled", None)
print("off" if gil is not None and not gil() else "on")
"""


def user_extras(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    return [e for e in metadata.get_all("Provides-Extra") or [] if e not in DEVELOPMENT]


def check(wheel: Path, extra: str, work: Path) -> tuple[bool, str]:
    modules = IMPORTS.get(extra)
    if modules is None:
        return False, "no modules listed for this extra in tools/check_extras.py"
    env_dir = work / extra
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{wheel}[{extra}]",
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        errors = [
            line for line in install.stderr.splitlines() if "ERROR" in line or "error:" in line
        ]
        return (
            False,
            f"pip install failed: {(errors or install.stderr.splitlines() or ['?'])[0].strip()}",
        )
    probe = subprocess.run([python, "-c", PROBE, *modules], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"import failed: {probe.stderr.strip().splitlines()[-1]}"
    gil = probe.stdout.strip()
    free_threaded = (
        subprocess.run(
            [
                python,
                "-c",
                "import sysconfig; print(bool(sysconfig.get_config_var('Py_GIL_DISABLED')))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        == "True"
    )
    if free_threaded and gil != "off":
        return False, f"imported {', '.join(modules)}, and the GIL is back on"
    return True, f"imported {', '.join(modules)}" + (", GIL off" if free_threaded else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--extra", action="append", help="only these extras (repeatable)")
    args = parser.parse_args()
    wheel = args.wheel.resolve()
    extras = args.extra or user_extras(wheel)
    failed = 0
    print(f"{wheel.name} on Python {sys.version.split()[0]} ({sys.executable})")
    with tempfile.TemporaryDirectory(prefix="lazycache-extras-") as tmp:
        for extra in extras:
            ok, detail = check(wheel, extra, Path(tmp))
            failed += not ok
            print(f"  {extra:<14} {'ok' if ok else 'FAILED':<7} {detail}", flush=True)
    print(f"{len(extras) - failed} of {len(extras)} extras install and import")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
