"""`lazycache info`, the warning when CPython runs the pure-Python core, and the install hints.

The fallback is made real: a copy of the installed package without its compiled core, imported
by a child interpreter that sees nothing else (`python -S`, from the copy's directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from helpers import require_implementation

import lazycache
from lazycache import info

PACKAGE = Path(lazycache.__file__).resolve().parent
WARNING = "lazycache runs its pure-Python core"


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, site: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *([] if site else ["-S"]), "-m", "lazycache", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def environ(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="module")
def without_compiled_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a copy of the lazycache package with no compiled core in it."""
    root = tmp_path_factory.mktemp("pure-fallback")
    shutil.copytree(
        PACKAGE,
        root / "lazycache",
        ignore=shutil.ignore_patterns(
            "_core.*.so", "_core.*.pyd", "_core.so", "_core.c", "__pycache__"
        ),
    )
    assert not [p for p in (root / "lazycache").iterdir() if p.suffix in (".so", ".pyd")]
    return root


def import_in(root: Path, code: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a child interpreter whose `import lazycache` finds only the copy at `root`."""
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env=environ(**env),
    )


@pytest.mark.skipif(
    sys.implementation.name != "cpython", reason="the warning concerns CPython only"
)
def test_cpython_without_its_compiled_core_warns_once_at_import(
    without_compiled_core: Path,
) -> None:
    done = import_in(
        without_compiled_core,
        # The module that picks the core, reloaded: it tries the compiled core again, says nothing.
        "import importlib, lazycache, lazycache._compat as c; importlib.reload(c); "
        "print(lazycache.IMPLEMENTATION, lazycache.__file__)",
        LAZYCACHE_NO_EXTENSIONS=None,
    )
    assert done.returncode == 0, done.stderr
    implementation, path = done.stdout.split()
    assert implementation == "python"
    assert Path(path).resolve().is_relative_to(without_compiled_core.resolve())
    assert done.stderr.count(WARNING) == 1, done.stderr
    assert "RuntimeWarning" in done.stderr and "LAZYCACHE_NO_EXTENSIONS=1" in done.stderr
    assert f"--only-binary={info.DISTRIBUTION} {info.DISTRIBUTION}" in done.stderr


def test_no_extensions_means_the_pure_core_on_purpose_and_stays_silent(
    without_compiled_core: Path,
) -> None:
    done = import_in(
        without_compiled_core,
        "import lazycache; print(lazycache.IMPLEMENTATION)",
        LAZYCACHE_NO_EXTENSIONS="1",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "python"
    assert done.stderr == ""


def test_importing_the_compiled_core_warns_nothing() -> None:
    require_implementation("cython")
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import lazycache; print(lazycache.IMPLEMENTATION)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cython" and done.stderr == ""


def test_info_reports_the_compiled_core_the_interpreter_the_gil_and_the_extras() -> None:
    require_implementation("cython")
    done = run_cli("info", "--json", env=environ())
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["core"]["implementation"] == "cython" and report["core"]["compiled"] is True
    assert report["core"]["reason"] is None
    assert Path(report["core"]["path"]).name.startswith("_core.")
    assert report["lazycache"]["version"] == lazycache.__version__
    assert report["lazycache"]["distribution"] == {
        "name": "lazywritercache",
        "version": metadata.version("lazywritercache"),
    }
    python = report["python"]
    assert python["version"] == ".".join(map(str, sys.version_info[:3]))
    assert python["executable"] == sys.executable
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    # What a fresh interpreter that imported lazycache has, not this one (a test dependency
    # may have turned this process's GIL on): off on a free-threaded build unless forced.
    gil_enabled = not free_threaded or os.environ.get("PYTHON_GIL") == "1"
    assert report["gil"] == {"free_threaded_build": free_threaded, "enabled": gil_enabled}

    extras = {extra["extra"]: extra for extra in report["extras"]}
    assert list(extras) == list(info.USER_EXTRAS)
    sqlalchemy = extras["sqlalchemy"]  # the dev extra, which runs these tests, installs it
    assert sqlalchemy["found"] is True
    assert sqlalchemy["packages"] == [
        {"name": "SQLAlchemy", "version": metadata.version("SQLAlchemy")}
    ]
    for extra in extras.values():
        assert extra["packages"], extra
        for package in extra["packages"]:
            try:
                expected = metadata.version(package["name"])
            except metadata.PackageNotFoundError:
                expected = None
            assert package["version"] == expected, package
        assert extra["found"] == all(p["version"] for p in extra["packages"])


def test_info_text_says_core_interpreter_gil_and_each_extra() -> None:
    require_implementation("cython")
    done = run_cli("info", env=environ())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"lazycache {lazycache.__version__} (distribution lazywritercache ")
    assert lines[1].startswith("core: compiled (Cython), ")
    assert lines[2].startswith(f"python: CPython {sys.version.split()[0]}, {sys.executable}")
    assert lines[3].startswith("GIL: ")
    assert lines[4] == "extras:"
    listed = [line.split()[0] for line in lines[5:]]
    assert listed == list(info.USER_EXTRAS)
    sqlalchemy = next(line for line in lines[5:] if line.split()[0] == "sqlalchemy")
    assert f"found    SQLAlchemy {metadata.version('SQLAlchemy')}" in sqlalchemy
    for line in lines[5:]:
        if " missing " in line:
            extra = line.split()[0]
            assert line.endswith(f"pip install 'lazywritercache[{extra}]'"), line


def test_info_says_why_the_core_is_pure_python(without_compiled_core: Path) -> None:
    done = run_cli(
        "info", cwd=without_compiled_core, env=environ(LAZYCACHE_NO_EXTENSIONS="1"), site=False
    )
    assert done.returncode == 0, done.stderr
    assert (
        "core: pure Python, 4-20x slower than the compiled one (LAZYCACHE_NO_EXTENSIONS is set)"
        in done.stdout
    )
    if sys.implementation.name == "cpython":
        done = run_cli(
            "info",
            "--json",
            cwd=without_compiled_core,
            env=environ(LAZYCACHE_NO_EXTENSIONS=None),
            site=False,
        )
        assert done.returncode == 0, done.stderr
        core = json.loads(done.stdout)["core"]
        assert core["compiled"] is False
        assert core["reason"].startswith("the compiled core did not load: ")
        assert WARNING in done.stderr


def test_every_install_hint_names_this_distribution_and_a_real_extra() -> None:
    """`lazycache` on the package index is another project: every hint must name ours."""
    extras = set(metadata.metadata("lazywritercache").get_all("Provides-Extra") or [])
    hints = []
    for source in sorted(PACKAGE.rglob("*.py")):
        for line in source.read_text(encoding="utf-8").splitlines():
            hints += [
                (source.name, hint) for hint in re.findall(r"pip install[^\n]*?'([^']+)'", line)
            ]
    # psycopg: a driver upgrade; "{": an f-string template (lazycache.info fills in the name).
    named = [(n, h) for n, h in hints if not h.startswith(("psycopg", ".")) and "{" not in h]
    assert len(named) >= 10, hints  # the stores', serializers' and benchmarks' ImportError hints
    for name, hint in named:
        distribution, _, extra = hint.partition("[")
        assert distribution == "lazywritercache", (name, hint)
        assert extra.rstrip("]") in extras, (name, hint)
