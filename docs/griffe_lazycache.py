"""A griffe extension for the API reference: the docstrings of `LazyWriterCache`.

At run time `lazycache.LazyWriterCache` is a class built by `type()` on the active core,
with its docstring taken from `lazycache.cache._DOC` and its methods from `_CacheLayer`
and the core. Static analysis (which is what mkdocstrings uses, so that the docs need no
compiled core) sees instead the typed stub class in the module's `if TYPE_CHECKING:`
block, which has no docstrings: neither its own nor those of the methods it re-declares
with the cache's key and value types. This extension gives the stub the class docstring
the run-time class has, and each re-declared method the docstring of the method that
implements it.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe

_CLASS = "lazycache.cache.LazyWriterCache"
_IMPLEMENTATIONS = (
    "lazycache._cache_layer._CacheLayer",
    "lazycache._read_through._ReadThroughLayer",
    "lazycache._core_py.Core",
)


class LazyWriterCacheDocs(griffe.Extension):
    """Fills in the docstrings of `lazycache.cache.LazyWriterCache` (see the module)."""

    # Called once the package is loaded: on_package, or on_package_loaded before griffe 1.15.
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._fill(pkg)

    if not hasattr(griffe.Extension, "on_package"):

        def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
            self._fill(pkg)

    def _fill(self, pkg: griffe.Module) -> None:
        if pkg.path != "lazycache":
            return
        try:
            cls = pkg.modules_collection[_CLASS]
        except KeyError:
            return
        if cls.docstring is None:
            doc = cls.parent.members.get("_DOC") if cls.parent is not None else None
            if doc is not None and doc.value is not None:
                text = ast.literal_eval(str(doc.value))
                cls.docstring = griffe.Docstring(text, lineno=doc.lineno, parent=cls)
        implementations = []
        for path in _IMPLEMENTATIONS:
            try:
                implementations.append(pkg.modules_collection[path])
            except KeyError:
                pass
        for name, member in cls.members.items():
            if member.docstring is not None:
                continue
            for impl in implementations:
                source = impl.members.get(name)
                if source is not None and source.docstring is not None:
                    member.docstring = griffe.Docstring(
                        source.docstring.value, lineno=source.docstring.lineno, parent=member
                    )
                    break
