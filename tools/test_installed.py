"""Runs the test suite against an installed lazycache, never the source tree.

    python tools/test_installed.py [--wheel WHEEL] [--expect cython|python] [-- PYTEST_ARGS...]

The tests (tests/, examples/ which some tests run, tools/ whose import check a test runs on
the installed package, and pyproject.toml for the pytest settings) are copied to a temporary directory and run from there, so `import lazycache`
can only find the installed package. Before pytest runs, a check from that directory
asserts lazycache is imported from the interpreter's site-packages (not from a source
tree, nor an editable install), and that the expected core is active.

--wheel WHEEL   make a fresh virtual environment in a temporary directory, install the
                wheel (lazywritercache, imported as lazycache) there on its own (an `import lazycache` with no extras installed must
                work: no undeclared dependency), then with its `dev` extra (the test
                dependencies), and test it there; removed afterwards.
                Without --wheel: the running interpreter's installed lazycache is tested
                (how cibuildwheel uses it, in its test environment).
--expect        the core that must be active: "cython" (the default) or "python".
PYTEST_ARGS     passed on to pytest, which runs all of tests/ unless they name a part of
                it (tests/test_mapping.py, tests/test_x.py::test_y).

Database-backed tests skip when their servers are unreachable, unless
LAZYCACHE_REQUIRE_SERVICES=1 is set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The source tree (or the unpacked sdist, or cibuildwheel's copy of the test sources)."""

COPIED = ("tests", "examples", "tools", "pyproject.toml")
"""What the tests need from the tree: the tests, the example scripts some of them run, the
import check (tests/test_import_graph.py) and the [tool.pytest.ini_options] (markers, timeout)."""

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")

CHECK = """
import os, sys, sysconfig
from importlib import metadata
import lazycache

path = os.path.realpath(lazycache.__file__)
print(f"lazycache {lazycache.__version__} from {path}")
# The distribution is lazywritercache (`lazycache` on the index is another project).
assert metadata.version("lazywritercache") == lazycache.__version__, "not installed as lazywritercache"
print(f"IMPLEMENTATION = {lazycache.IMPLEMENTATION!r}, Python {sys.version.split()[0]} at {sys.executable}")
site = {os.path.realpath(sysconfig.get_path(name)) for name in ("purelib", "platlib")}
assert any(os.path.commonpath([path, d]) == d for d in site), (
    f"lazycache is not imported from this environment's site-packages {sorted(site)}"
)
assert lazycache.IMPLEMENTATION == sys.argv[1], (
    f"the {sys.argv[1]!r} core should be active, not {lazycache.IMPLEMENTATION!r}"
)
if lazycache.IMPLEMENTATION == "cython" and sysconfig.get_config_var("Py_GIL_DISABLED"):
    # A module not declared free-threading compatible turns the GIL back on at import.
    assert not sys._is_gil_enabled(), "importing the compiled core re-enabled the GIL"
    print("free-threaded build: the GIL stays disabled")
"""


def run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join("<script>" if "\n" in arg else arg for arg in cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def clean_environ() -> dict[str, str]:
    """The environment without anything that could point imports at the source tree."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONUSERBASE"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def venv_python(directory: Path) -> Path:
    bindir = "Scripts" if sys.platform == "win32" else "bin"
    return directory / bindir / ("python.exe" if sys.platform == "win32" else "python")


def install_wheel(wheel: Path, directory: Path, env: dict[str, str]) -> Path:
    """A fresh virtual environment with the wheel, checked importable on its own, then with the
    extras the suite uses: `dev`, and `service` (FastAPI, uvicorn) for the example service's tests."""
    venv.EnvBuilder(with_pip=True).create(directory)
    python = venv_python(directory)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    run([*pip, str(wheel)], env=env)
    # Nothing but the wheel and its declared dependencies: an undeclared import fails here.
    # The bench command imports its sections when a run needs them: imported here by name.
    modules = ["lazycache", "lazycache.cli"]
    modules += [f"lazycache.bench.{name}" for name in ("run", "plot", "store", "redis")]
    run([str(python), "-c", f"import {', '.join(modules)}"], env=env, cwd=directory)
    run([*pip, f"{wheel}[dev,service]"], env=env)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="test this wheel in a fresh virtual environment")
    parser.add_argument("--expect", choices=("cython", "python"), default="cython")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed on to pytest")
    args = parser.parse_args()

    env = clean_environ()
    with tempfile.TemporaryDirectory(prefix="lazycache-installed-") as tmp:
        work = Path(tmp)
        python = Path(sys.executable)
        if args.wheel is not None:
            python = install_wheel(args.wheel.resolve(), work / "venv", env)

        suite = work / "suite"
        suite.mkdir()
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, suite / name, ignore=IGNORED)
            else:
                shutil.copy2(source, suite / name)

        run([str(python), "-c", CHECK, args.expect], env=env, cwd=suite)
        # What a user sees: the core, the interpreter, the GIL and the extras (in the build log).
        run([str(python), "-m", "lazycache", "info"], env=env, cwd=suite)
        # The whole suite, unless the arguments name a part of it (tests/test_x.py, tests/...::test):
        # pytest given both `tests` and a file under it would run everything.
        chosen = any(arg == "tests" or arg.startswith("tests/") for arg in args.pytest_args)
        cmd = [
            str(python),
            "-m",
            "pytest",
            *([] if chosen else ["tests"]),
            "-q",
            "-p",
            "no:cacheprovider",
            *args.pytest_args,
        ]
        print("+", " ".join(cmd), flush=True)
        return subprocess.run(cmd, env=env, cwd=suite).returncode


if __name__ == "__main__":
    sys.exit(main())
