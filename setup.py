"""Declares the compiled core; all metadata lives in pyproject.toml.

The compiled core (src/lazycache/_core.pyx) is optional: lazycache falls back to its
pure-Python twin (_core_py.py) when it is missing. Environment switches (any non-empty
value turns one on, the same rule lazycache applies at import):

LAZYCACHE_NO_EXTENSIONS       do not build the compiled core: a pure-Python package
                              (a py3-none-any wheel).
LAZYCACHE_REQUIRE_EXTENSIONS  a failed build of the compiled core is an error instead of a
                              fall-back to the pure-Python package (CI and release builds).
LAZYCACHE_CYTHON_TRACE        compile with Cython line tracing, for coverage of the Cython
                              code (Cython.Coverage); slower, never for a release.

Without LAZYCACHE_REQUIRE_EXTENSIONS, a build of the compiled core that fails (no C
compiler, no Python headers, no Cython) prints a short notice and installs the
pure-Python package instead, which behaves the same, only slower; its wheel is tagged
py3-none-any like a LAZYCACHE_NO_EXTENSIONS build, never as a binary wheel for this
interpreter. The compiled core is built without debug information (GCC and Clang: -g0,
and the linker strips the symbols the extension does not export): a sixth of the size.
"""

import os
import platform
import re
import sys

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError


def env_flag(name):
    return bool(os.environ.get(name))


# Whether to build the compiled core. Which core runs is decided at import, by
# src/lazycache/_compat.py (the same variable: set, the pure-Python one runs on purpose).
NO_EXTENSIONS = env_flag("LAZYCACHE_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = env_flag("LAZYCACHE_REQUIRE_EXTENSIONS")
CYTHON_TRACE = env_flag("LAZYCACHE_CYTHON_TRACE")
CPYTHON = platform.python_implementation() == "CPython"

PYX = "src/lazycache/_core.pyx"
TRACE_MACRO = "CYTHON_TRACE_NOGIL"  # implies CYTHON_TRACE: lines run without the GIL are traced too

NOTICE = """
********************************************************************************
lazycache: the compiled core was not built ({reason}).
Installing the pure-Python core instead: it behaves the same, only slower
(lazycache.IMPLEMENTATION == "python").
To get the compiled core, install a binary wheel (pip install
--only-binary=lazywritercache lazywritercache), or make a C compiler and the Python
headers available (Debian/Ubuntu: apt install gcc python3-dev; macOS: xcode-select
--install; Windows: Microsoft C++ Build Tools) and reinstall past pip's wheel cache (pip
install --no-cache-dir --force-reinstall lazywritercache). `lazycache info` says which
core is active. LAZYCACHE_REQUIRE_EXTENSIONS=1 makes this an error,
LAZYCACHE_NO_EXTENSIONS=1 skips the attempt (and silences the warning at import).
********************************************************************************
"""


def short_reason(exc):
    """What went wrong, in one short line (a failed compiler command is named, not quoted)."""
    text = str(exc).strip()
    failed = re.search(r"Command '\['([^']+)'.*returned non-zero exit status (\d+)", text, re.S)
    if failed:
        text = f"the C compiler {failed.group(1)} exited with status {failed.group(2)}"
    text = text.splitlines()[0] if text else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def c_file_is_traced(c_file):
    """Whether an existing generated C file was made with line tracing (its metadata header says)."""
    try:
        with open(c_file, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    return TRACE_MACRO in head.partition("END: Cython Metadata")[0]


class CythonError(Exception):
    """Cython could not translate the core to C."""


# What a build can fail with for want of a tool: no Cython, no (working) C compiler, no Python
# headers, no MSVC. Anything else is a bug in this file and is not turned into a fall-back.
BUILD_ERRORS = (
    ImportError,
    OSError,
    ValueError,
    CythonError,
    CCompilerError,
    ExecError,
    PlatformError,
)


class optional_build_ext(build_ext):
    """Cythonizes and compiles the core; on failure falls back to the pure-Python package."""

    def build_extensions(self):
        try:
            self.cythonize()
            if self.compiler.compiler_type == "unix":  # GCC or Clang (MSVC adds no debug info)
                for ext in self.extensions:
                    ext.extra_compile_args.append("-g0")  # after CFLAGS' -g: it wins
                    if sys.platform.startswith("linux"):
                        ext.extra_link_args.append("-Wl,--strip-all")
            super().build_extensions()
        except BUILD_ERRORS as exc:
            if REQUIRE_EXTENSIONS:
                raise
            sys.stderr.write(NOTICE.format(reason=short_reason(exc)))
            sys.stderr.flush()
            # A core compiled by an earlier build in this build directory must not ship in
            # the pure-Python package (whose wheel says it has no compiled core).
            for ext in self.extensions:
                stale = self.get_ext_fullpath(ext.name)
                if os.path.exists(stale):
                    os.remove(stale)
            # Nothing is left to build, copy in place or list as an output: the package is pure Python.
            self.extensions[:] = []

    def cythonize(self):
        """Translates each extension's .pyx sources to C, in place: the Extension objects stay
        the ones setuptools prepared, only their sources now name the generated C files."""
        from Cython.Build import cythonize

        # A generated C file is reused while it is newer than its sources: regenerate it
        # when line tracing is switched on or off.
        force = self.force or c_file_is_traced(os.path.splitext(PYX)[0] + ".c") not in (
            None,
            CYTHON_TRACE,
        )
        directives = {"language_level": "3"}
        if CYTHON_TRACE:
            directives["linetrace"] = True
        try:
            translated = cythonize(
                self.extensions, compiler_directives=directives, force=force, quiet=True
            )
        except Exception as exc:
            raise CythonError(short_reason(exc)) from exc
        for ext, done in zip(self.extensions, translated):
            ext.sources = done.sources


class wheel_tagged_by_content(bdist_wheel):
    """Tags the wheel by what the build produced, not by what setup() declared.

    bdist_wheel decides "pure or not" from the declared extensions before building; when
    the compiled core falls back (optional_build_ext), nothing compiled is left and the
    wheel must be py3-none-any, not a binary wheel for this interpreter (which would claim a
    compiled core it lacks, and install under the data directory's purelib).
    """

    def run(self):
        if not self.skip_build:
            self.run_command("build")  # may fall back, emptying the distribution's ext_modules
            self.skip_build = True  # built: the install step must not build again
        if not self.distribution.has_ext_modules():
            self.root_is_pure = True
        super().run()


def extensions():
    if NO_EXTENSIONS or not CPYTHON:  # PyPy, GraalPy: the pure-Python core is the fast one there
        return []
    macros = [(TRACE_MACRO, "1")] if CYTHON_TRACE else []
    return [Extension("lazycache._core", [PYX], define_macros=macros)]


# With no extension modules the wheel is pure: py3-none-any.
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": optional_build_ext, "bdist_wheel": wheel_tagged_by_content},
)
