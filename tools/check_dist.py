"""Checks what the distributions contain: the sdist can build and test, the wheel can run.

    python tools/check_dist.py [--pure] SDIST [WHEEL...]

sdist: the Cython sources (.pyx, .pxd) and the rest of the package, the build files, the
tests and the examples they run, README and LICENSE (when the tree has one); no generated C,
no compiled objects, no build directories, no byte-code.
wheel: the compiled core (`lazycache/_core` with this platform's extension suffix, the only
binary, without debug information), py.typed and the stubs, LICENSE in the .dist-info (when
the tree has one); no C sources, objects, build directories, byte-code, tests. --pure: a
py3-none-any wheel with no compiled core (a LAZYCACHE_NO_EXTENSIONS=1 build, or one whose
compiler failed: never tagged as a binary wheel).
both: the metadata (PKG-INFO, METADATA) names the distribution `lazywritercache` (the
import name is `lazycache`; `lazycache` on the index is another project), requires
Python >= 3.10, carries the project URLs and a classifier for each supported CPython and
for free-threading; the file names start with `lazywritercache-`.
Exits non-zero with every problem listed.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lazycache"
DISTRIBUTION = "lazywritercache"
REQUIRES_PYTHON = ">=3.10"
PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]
PROJECT_URLS = ["Homepage", "Documentation", "Source", "Issues", "Changelog"]
FREE_THREADING = "Programming Language :: Python :: Free Threading"

SDIST_REQUIRED = [
    "PKG-INFO",
    "README.md",
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "src/lazycache/__init__.py",
    "src/lazycache/_core.pyx",
    "src/lazycache/_core.pxd",
    "src/lazycache/_core.pyi",
    "src/lazycache/_core_py.py",
    "src/lazycache/py.typed",
    "tests/conftest.py",
    "tests/helpers.py",
    "tools/test_installed.py",
    "tools/check_imports.py",
]
"""Paths relative to the sdist's top directory; every test module and example is added."""

WHEEL_REQUIRED = [
    "lazycache/__init__.py",
    "lazycache/_core_py.py",
    "lazycache/_core.pyi",
    "lazycache/py.typed",
    "lazycache/stores/__init__.py",
]

# Build leftovers that belong in neither distribution.
STRAY = re.compile(
    r"(^|/)(build|dist|wheelhouse|__pycache__|\.pytest_cache|\.hypothesis|\.venv)/"
    r"|\.(c|cpp|o|obj|lib|exp|pyc|pyo|html)$"
)
BINARY = re.compile(r"\.(so|pyd|dll|dylib)$|\.so\.")
CORE = re.compile(r"^lazycache/_core\.(cpython-[^/]+\.so|cp[^/]+\.pyd|abi3\.so|so|pyd)$")


def check_metadata(name: str, text: str) -> list[str]:
    """The core metadata of a distribution (PKG-INFO or METADATA): name, Python, URLs, classifiers."""
    message = email.parser.HeaderParser().parsestr(text)
    problems = []
    if message["Name"] != DISTRIBUTION:
        problems.append(f"{name}: Name is {message['Name']!r}, not {DISTRIBUTION!r}")
    if message["Requires-Python"] != REQUIRES_PYTHON:
        problems.append(
            f"{name}: Requires-Python is {message['Requires-Python']!r}, not {REQUIRES_PYTHON!r}"
        )
    urls = {entry.split(",", 1)[0].strip() for entry in message.get_all("Project-URL") or []}
    problems += [f"{name}: no Project-URL {label}" for label in PROJECT_URLS if label not in urls]
    classifiers = set(message.get_all("Classifier") or [])
    problems += [
        f"{name}: no classifier for Python {version}"
        for version in PYTHONS
        if f"Programming Language :: Python :: {version}" not in classifiers
    ]
    if not any(c.startswith(FREE_THREADING) for c in classifiers):
        problems.append(f"{name}: no {FREE_THREADING} classifier")
    return problems


def has_debug_info(data: bytes) -> bool:
    """Whether an ELF shared object carries DWARF debug sections (other formats: not checked)."""
    return data[:4] == b"\x7fELF" and b".debug_info" in data


def tree_files(pattern: str) -> list[str]:
    """Files of the source tree matching a glob, relative to it (what the sdist must carry)."""
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file())


def check_sdist(path: Path) -> list[str]:
    problems: list[str] = []
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        tops = {PurePosixPath(n).parts[0] for n in names}
        if len(tops) != 1:
            return [f"{path.name}: expected one top directory, found {sorted(tops)}"]
        top = tops.pop()
        pkg_info = tar.extractfile(f"{top}/PKG-INFO") if f"{top}/PKG-INFO" in names else None
        if pkg_info is not None:
            problems += check_metadata(path.name, pkg_info.read().decode("utf-8"))
    files = {n[len(top) + 1 :] for n in names}
    if not path.name.startswith(f"{DISTRIBUTION}-"):
        problems.append(f"{path.name}: the sdist's name does not start with {DISTRIBUTION}-")

    required = SDIST_REQUIRED + tree_files("tests/*.py") + tree_files("examples/*.py")
    if (ROOT / "LICENSE").is_file():
        required.append("LICENSE")
    else:
        print(f"note: {ROOT / 'LICENSE'} does not exist yet: not required in the sdist")
    problems += [f"{path.name}: missing {name}" for name in required if name not in files]
    problems += [
        f"{path.name}: stray build file {name}" for name in sorted(files) if STRAY.search(name)
    ]
    problems += [f"{path.name}: binary {name}" for name in sorted(files) if BINARY.search(name)]
    print(f"{path.name}: {len(files)} files, {path.stat().st_size:,} bytes")
    return problems


def check_wheel(path: Path, pure: bool) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(path) as whl:
        files = set(whl.namelist())
        dist_info = {n.split("/")[0] for n in files if n.split("/")[0].endswith(".dist-info")}
        if len(dist_info) != 1:
            return [f"{path.name}: expected one .dist-info directory, found {sorted(dist_info)}"]
        info = dist_info.pop()
        if f"{info}/METADATA" in files:
            problems += check_metadata(path.name, whl.read(f"{info}/METADATA").decode("utf-8"))
        debug = sorted(n for n in files if CORE.match(n) and has_debug_info(whl.read(n)))
    problems += [f"{path.name}: {name} carries debug information" for name in debug]
    if not path.name.startswith(f"{DISTRIBUTION}-"):
        problems.append(f"{path.name}: the wheel's name does not start with {DISTRIBUTION}-")
    tag = path.name[:-4].split("-", 2)[2]  # python-abi-platform (no build tag in these wheels)

    required = [*WHEEL_REQUIRED, f"{info}/METADATA", f"{info}/RECORD", f"{info}/WHEEL"]
    if (ROOT / "LICENSE").is_file():
        required.append(f"{info}/licenses/LICENSE")
    problems += [f"{path.name}: missing {name}" for name in required if name not in files]

    binaries = sorted(n for n in files if BINARY.search(n))
    cores = [n for n in binaries if CORE.match(n)]
    if pure:
        if tag != "py3-none-any":
            problems.append(f"{path.name}: a pure-Python wheel should be py3-none-any, not {tag}")
        problems += [f"{path.name}: binary {name} in a pure-Python wheel" for name in binaries]
    else:
        if tag == "py3-none-any" or "-linux_" in f"-{tag}":
            problems.append(f"{path.name}: {tag} is not a binary wheel tag fit to publish")
        if len(cores) != 1:
            problems.append(f"{path.name}: expected one compiled lazycache/_core, found {cores}")
        problems += [f"{path.name}: stray binary {name}" for name in binaries if name not in cores]

    top_level = {n.split("/")[0] for n in files} - {PACKAGE, info}
    if top_level:
        problems.append(f"{path.name}: unexpected top-level entries {sorted(top_level)}")
    problems += [
        f"{path.name}: stray build file {name}" for name in sorted(files) if STRAY.search(name)
    ]
    size = path.stat().st_size
    print(f"{path.name}: {len(files)} files, {size:,} bytes, tag {tag}, core {cores or 'none'}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pure", action="store_true", help="the wheels are pure-Python builds")
    parser.add_argument("sdist", type=Path)
    parser.add_argument("wheels", type=Path, nargs="*")
    args = parser.parse_args()

    problems = check_sdist(args.sdist)
    for wheel in args.wheels:
        problems += check_wheel(wheel, args.pure)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if not problems:
        print("distributions OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
