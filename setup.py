"""Declares the compiled core; all metadata lives in pyproject.toml.

Set LAZYCACHE_NO_EXTENSIONS=1 to build a pure-Python install (the core's twin is used).
"""
import os
import platform

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("LAZYCACHE_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"

if NO_EXTENSIONS:
    ext_modules = []
else:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("lazycache._core", ["src/lazycache/_core.pyx"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
