"""The one place that decides which core runs: the compiled one (``_core``) or its pure-Python twin.

The pure-Python core runs when ``LAZYCACHE_NO_EXTENSIONS`` is set (any non-empty value: the
twin on purpose), on an interpreter other than CPython (there it is the fast one; setup.py
builds no compiled core for them), and when the compiled core does not import (a build
without a C compiler): then a RuntimeWarning says so, once per process. Everything else asks
this module: `IMPLEMENTATION`, `CORES`, `why_pure()`; nothing else reads the variable or
imports ``_core`` (but for types: its stub is the cores' shared interface).

For type checkers `Core` is the pure-Python class: the compiled one has the same interface.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import TYPE_CHECKING

from . import _core_py

NO_EXTENSIONS: bool = (
    bool(os.environ.get("LAZYCACHE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"
)
"""True when the pure-Python core is meant: LAZYCACHE_NO_EXTENSIONS is set, or not CPython."""

CORES: dict[str, type] = {"python": _core_py.Core}
"""The importable cores by name: "python" always, "cython" when the compiled one loaded."""

IMPORT_ERROR: ImportError | None = None
"""Why the compiled core did not import, when importing it was tried and failed."""

if not NO_EXTENSIONS:
    try:
        from . import _core
    except ImportError as exc:
        IMPORT_ERROR = exc
    else:
        CORES["cython"] = _core.Core

IMPLEMENTATION = "cython" if "cython" in CORES else "python"
"""The active core: "cython" (compiled) or "python"."""

if TYPE_CHECKING:
    from ._core_py import Core as Core
else:
    Core = CORES[IMPLEMENTATION]


def describe_import_error(error: ImportError) -> str:
    """Why the compiled core did not load: absent from the install, or present and failing."""
    from importlib.util import find_spec

    try:
        present = find_spec("lazycache._core") is not None
    except (ImportError, ValueError):
        present = False
    return f"it does not load: {error}" if present else "it is not in this install"


def why_pure() -> str | None:
    """None when the compiled core is active; otherwise why the pure-Python one is."""
    if IMPLEMENTATION == "cython":
        return None
    if sys.implementation.name != "cpython":
        return f"{platform.python_implementation()} runs the pure-Python core (it is the fast one there)"
    if os.environ.get("LAZYCACHE_NO_EXTENSIONS"):
        return "LAZYCACHE_NO_EXTENSIONS is set"
    return "the compiled core did not load: " + (
        describe_import_error(IMPORT_ERROR) if IMPORT_ERROR is not None else "unknown"
    )


# Kept by importlib.reload() of this module, which runs the import of the compiled core again.
_warned: bool = globals().get("_warned", False)


def warn_pure_fallback(error: ImportError) -> None:
    """Warns once per process that CPython runs the pure-Python core: the compiled one is missing.

    Called at import when importing the compiled core failed on CPython without
    LAZYCACHE_NO_EXTENSIONS: a build that fell back for want of a C compiler, or a compiled
    core that does not load. Setting LAZYCACHE_NO_EXTENSIONS=1 says the pure-Python core is
    meant, and so silences this.
    """
    global _warned
    if _warned:  # this module reloaded: said already
        return
    _warned = True
    warnings.warn(
        "lazycache runs its pure-Python core, 4-20x slower than the compiled one "
        f"({describe_import_error(error)}). Install a binary wheel (pip install --force-reinstall "
        "--only-binary=lazywritercache lazywritercache) or build it with a C compiler and the "
        "Python headers; `lazycache info` shows the state. Set LAZYCACHE_NO_EXTENSIONS=1 to "
        "use the pure-Python core on purpose and silence this warning.",
        RuntimeWarning,
        stacklevel=2,
    )


if IMPORT_ERROR is not None:  # the twin behaves the same, only slower: say so, once
    warn_pure_fallback(IMPORT_ERROR)
