"""Checks lazycache's import graph: no cycle between its modules, no import pointing upward.

    python tools/check_imports.py [PACKAGE_DIR]        (run by `make lint`)

PACKAGE_DIR defaults to src/lazycache. Every module of the package (``.py``, and the compiled
core's ``.pyx``/``.pxd``, read line by line) must sit in one of the LAYERS below, and may
import only modules of its own layer or of the layers under it. Checked:

* every import statement counts: at module level, inside functions (where cycles hide: a
  function-level import is the usual way to break one at import time and keep it in the
  design) and under ``if TYPE_CHECKING:``. Importing ``a.b.c`` also runs ``a.b``'s
  ``__init__``: that counts too (but not the importer's own packages, already running);
* TYPE_CHECKING imports must point downward like the others (a type is a dependency), but
  never run, so they make no cycle: they are left out of the cycle check and counted apart;
* no cycle among the rest (a strongly connected set of modules is reported whole);
* ONLY_IMPORTED_BY: modules that one module alone may import at run time (the compiled core
  and its twin: `lazycache._compat` picks the core, nothing else imports one);
* ALLOWED: the upward imports kept on purpose, each with its reason. They are left out of
  both checks and listed in the output, with any cycle they close: the debt stays visible.

Exits 1, with every problem listed, if anything fails. tests/test_import_graph.py uses the same
walker (`walk`) and the same `check`.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "src" / "lazycache"

Layers = Sequence[tuple[str, Sequence[str]]]

# From the bottom up. A name ending in ".*" stands for a package and everything under it.
LAYERS: Layers = [
    # Import nothing of lazycache but each other. `lazycache.metrics` is the histograms the writer
    # records (its exporters, `.otel` and `.prometheus`, are tools, at the top);
    # `lazycache.coherence` is the package's __init__, which imports only `Coherence` (`.base`).
    (
        "leaves",
        [
            "lazycache._sentinels",
            "lazycache._checks",
            "lazycache._pacing",
            "lazycache.serializers",
            "lazycache.stats",
            "lazycache.metrics",
            "lazycache.stores.base",
            "lazycache.coherence",
            "lazycache.coherence.base",
            "lazycache.coherence.message",
        ],
    ),
    # What both cores share, the two cores, the one module that picks one of them, and the
    # typed contract of a core with the layer and the writer above it.
    (
        "cores",
        [
            "lazycache._core_common",
            "lazycache._core_py",
            "lazycache._core",
            "lazycache._compat",
            "lazycache._contracts",
        ],
    ),
    # The SQL store's package (its __init__ says what each module holds), from the bottom up:
    # how database errors are seen, and what a driver's fast path is; each database's own
    # ways; engines, writes in doubt and what both modes do to their table; the two modes.
    # Its front, `store`, is a store.
    (
        "sql store: errors, fast path",
        ["lazycache.stores.sqlalchemy.errors", "lazycache.stores.sqlalchemy.fastpath"],
    ),
    (
        "sql store: databases",
        [
            "lazycache.stores.sqlalchemy.postgresql",
            "lazycache.stores.sqlalchemy.sqlite",
            "lazycache.stores.sqlalchemy.mysql",
        ],
    ),
    (
        "sql store: engines, sessions, tables",
        [
            "lazycache.stores.sqlalchemy.engine",
            "lazycache.stores.sqlalchemy.sessions",
            "lazycache.stores.sqlalchemy.layout",
        ],
    ),
    ("sql store: modes", ["lazycache.stores.sqlalchemy.kv", "lazycache.stores.sqlalchemy.rows"]),
    (
        "stores",
        [
            "lazycache.stores",
            "lazycache.stores.memory",
            "lazycache.stores.redis",
            "lazycache.stores.sqlalchemy",
            "lazycache.stores.sqlalchemy.store",
        ],
    ),
    # From the core's dirty queue to the store: the batch writer, the journal, the thread runner.
    ("write path", ["lazycache.writer", "lazycache.journal", "lazycache._worker"]),
    # The channels (the Redis one reaches the Redis store for its connections).
    (
        "coherence channels",
        [
            "lazycache.coherence.channel",
            "lazycache.coherence.redis",
            "lazycache.coherence.postgres",
        ],
    ),
    # What the cache layer is made of: its views, its journaling scope, its life at exit, in the
    # garbage collector and across forks, and its base that loads (read-through).
    (
        "cache layer's parts",
        [
            "lazycache._views",
            "lazycache._journaling",
            "lazycache._lifecycle",
            "lazycache._read_through",
        ],
    ),
    ("cache layer", ["lazycache._cache_layer"]),
    # LazyWriterCache: the layer over each core, and its journaled variant.
    ("cache classes", ["lazycache._journaled_layer", "lazycache.cache"]),
    # What users import: the package, the openers, the asyncio layer, the memoizing decorator;
    # and the old import paths of the channels, kept as re-exports (they live under stores/
    # but import coherence).
    (
        "entry points",
        [
            "lazycache",
            "lazycache._open",
            "lazycache.aio",
            "lazycache.memoize",
            "lazycache.stores.redis_coherence",
            "lazycache.stores.postgres_coherence",
        ],
    ),
    # Built on the library, never imported by it: the command line, the benchmark kit, the
    # metric exporters.
    (
        "tools",
        [
            "lazycache.info",
            "lazycache.journal_cli",
            "lazycache.metrics.otel",
            "lazycache.metrics.prometheus",
            "lazycache.bench.*",
            "lazycache.cli",
            "lazycache.__main__",
        ],
    ),
]

ALLOWED: Mapping[tuple[str, str, str | None], str] = {
    # (importer, imported, enclosing function or None): why.
    ("lazycache.stores.redis", "lazycache._open", "__getattr__"): (
        "old import path: `from lazycache.stores.redis import open_redis`, resolved on first use "
        "so that importing the store imports nothing above it"
    ),
    ("lazycache.stores.redis", "lazycache.coherence.redis", "__getattr__"): (
        "old import path: `from lazycache.stores.redis import default_channel`, resolved on "
        "first use (as open_redis)"
    ),
}

ONLY_IMPORTED_BY: Mapping[str, frozenset[str]] = {
    "lazycache._core": frozenset({"lazycache._compat"}),
    "lazycache._core_py": frozenset({"lazycache._compat"}),
}
"""Modules that only these may import at run time (TYPE_CHECKING imports of their types are free)."""


@dataclass(frozen=True)
class Import:
    """One import of a package module by another (or of a package run by it)."""

    source: str
    target: str
    line: int
    function: str | None = None  # the enclosing function; None at module level
    type_checking: bool = False  # under `if TYPE_CHECKING:`
    implicit: bool = False  # the package `__init__` an import of one of its modules runs

    def __str__(self) -> str:
        where = f" (in {self.function})" if self.function else ""
        how = " [TYPE_CHECKING]" if self.type_checking else ""
        how += " [its package]" if self.implicit else ""
        return f"{self.source}:{self.line}{where} imports {self.target}{how}"


# ----------------------------------------------------------------------------- the walker

Statement = tuple[str, int, "str | None", bool, list[str]]
"""One import statement: (module imported from, line, enclosing function, under TYPE_CHECKING,
names imported from it: empty for `import x`)."""


def module_name(package_dir: Path, path: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(package_dir: Path) -> dict[str, list[Path]]:
    """Module name -> its source files (a compiled module: its .pyx and .pxd)."""
    found: dict[str, list[Path]] = {}
    for pattern in ("*.py", "*.pyx", "*.pxd"):
        for path in sorted(package_dir.rglob(pattern)):
            found.setdefault(module_name(package_dir, path), []).append(path)
    return found


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The package module `name` is, or the one it is an attribute of; None outside the package."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _python_imports(tree: ast.AST, package: str) -> list[Statement]:
    """(base, line, function, type_checking, names) for each import statement of tree."""
    found: list[Statement] = []
    todo: list[tuple[ast.AST, str | None, bool]] = [(tree, None, False)]
    while todo:
        node, function, typing_only = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                todo.append((child, child.name, typing_only))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.append((ast.Module(body=child.body, type_ignores=[]), function, True))
                todo.append((ast.Module(body=child.orelse, type_ignores=[]), function, typing_only))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, child.lineno, function, typing_only, []))
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child.module or "", child.level, package)
                names = [alias.name for alias in child.names]
                found.append((base, child.lineno, function, typing_only, names))
            else:
                todo.append((child, function, typing_only))
    return found


def _absolute(module: str, level: int, package: str) -> str:
    if not level:
        return module
    anchor = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*anchor, module] if module else anchor)


_CYTHON_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)(?:from[ \t]+(?P<base>\.*[\w.]*)[ \t]+c?import[ \t]+(?P<names>[^#]+)"
    r"|c?import[ \t]+(?P<modules>[^#]+))"
)


def _cython_imports(text: str, package: str) -> list[Statement]:
    """The import lines of a .pyx or .pxd file (Cython is not Python: read line by line).

    Lines inside triple-quoted strings are skipped; an indented import is counted as in a
    function ("<indented>"); continuation lines of a parenthesised import list are followed."""
    found: list[Statement] = []
    lines = text.splitlines()
    in_string = False
    for number, line in enumerate(lines, 1):
        quotes = line.count('"""') + line.count("'''")
        if in_string or quotes:
            in_string ^= quotes % 2 == 1
            continue
        match = _CYTHON_IMPORT.match(line)
        if match is None:
            continue
        function = "<indented>" if match["indent"] else None
        if match["modules"] is not None:
            for name in match["modules"].split(","):
                found.append((name.split()[0], number, function, False, []))
            continue
        names_text = match["names"]
        if "(" in names_text:  # from x import (a,\n b)
            rest = iter(lines[number:])
            while ")" not in names_text:
                names_text += next(rest, ")")
        names = [
            n.split()[0] for n in names_text.strip("() \t").replace(")", "").split(",") if n.strip()
        ]
        dots = len(match["base"]) - len(match["base"].lstrip("."))
        base = _absolute(match["base"].lstrip("."), dots, package)
        found.append((base, number, function, False, names))
    return found


def walk(package_dir: Path = PACKAGE_DIR) -> dict[str, list[Import]]:
    """Per module of the package: its imports of the package's modules, in source order."""
    sources = modules_of(package_dir)
    modules = set(sources)
    root = package_dir.name
    graph: dict[str, list[Import]] = {}
    for name, paths in sorted(sources.items()):
        package = name if paths[0].stem == "__init__" else name.rpartition(".")[0]
        statements = []
        for path in paths:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".py":
                statements += _python_imports(ast.parse(text, str(path)), package)
            else:
                statements += _cython_imports(text, package)
        imports: list[Import] = []
        for base, line, function, typing_only, names in statements:
            if base != root and not base.startswith(root + "."):
                continue
            targets = []
            # `from x import y`: y is x's submodule, or an attribute of x (which then runs).
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            targets += submodules
            base_module = _resolve(base, modules)
            if base_module is not None and (
                not names or len(submodules) < len(names) or not _is_ancestor(base_module, name)
            ):
                targets.append(base_module)
            seen = set()
            for target in targets:
                for implied in (target, *_packages_run(target, name, modules)):
                    if implied == name or implied in seen:
                        continue
                    seen.add(implied)
                    imports.append(
                        Import(name, implied, line, function, typing_only, implied != target)
                    )
        graph[name] = sorted(imports, key=lambda item: (item.line, item.implicit, item.target))
    return graph


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def _packages_run(target: str, importer: str, modules: set[str]) -> list[str]:
    """The packages whose __init__ importing `target` runs, but for the importer's own."""
    parts = target.split(".")
    return [
        package
        for package in (".".join(parts[:i]) for i in range(1, len(parts)))
        if package in modules and not _is_ancestor(package, importer)
    ]


# ----------------------------------------------------------------------------- the checks


@dataclass
class Report:
    graph: dict[str, list[Import]]
    layer_of: dict[str, int]
    problems: list[str] = field(default_factory=list)
    allowed: list[tuple[Import, str]] = field(default_factory=list)
    known_cycles: list[list[str]] = field(default_factory=list)


def layer_index(layers: Layers, module: str) -> int | None:
    for index, (_, names) in enumerate(layers):
        for pattern in names:
            if module == pattern or (
                pattern.endswith(".*")
                and (module == pattern[:-2] or module.startswith(pattern[:-1]))
            ):
                return index
    return None


def check(
    package_dir: Path = PACKAGE_DIR,
    layers: Layers = LAYERS,
    allowed: Mapping[tuple[str, str, str | None], str] = ALLOWED,
    only_imported_by: Mapping[str, frozenset[str]] = ONLY_IMPORTED_BY,
) -> Report:
    """Every problem of the package's import graph (none: `report.problems == []`)."""
    graph = walk(package_dir)
    layer_of: dict[str, int] = {}
    report = Report(graph, layer_of)
    for module in graph:
        index = layer_index(layers, module)
        if index is None:
            report.problems.append(f"{module} is in no layer: add it to LAYERS ({__file__})")
        else:
            layer_of[module] = index
    used_allowances = set()
    runtime: dict[str, set[str]] = {module: set() for module in graph}
    with_allowed: dict[str, set[str]] = {module: set() for module in graph}
    for module, imports in graph.items():
        for item in imports:
            key = (item.source, item.target, item.function)
            if key in allowed:
                used_allowances.add(key)
                report.allowed.append((item, allowed[key]))
            elif item.source in layer_of and item.target in layer_of:
                if layer_of[item.target] > layer_of[item.source]:
                    below, above = (
                        layers[layer_of[item.source]][0],
                        layers[layer_of[item.target]][0],
                    )
                    report.problems.append(f"upward: {item} (layer {above!r} over {below!r})")
            gatekeepers = only_imported_by.get(item.target)
            if gatekeepers is not None and not item.type_checking and module not in gatekeepers:
                report.problems.append(
                    f"{item}: only {', '.join(sorted(gatekeepers))} may import {item.target}"
                )
            if not item.type_checking:
                with_allowed[module].add(item.target)
                if key not in allowed:
                    runtime[module].add(item.target)
    for key in sorted(set(allowed) - used_allowances, key=str):
        report.problems.append(f"allowed import no longer made (remove it from ALLOWED): {key}")
    for cycle in _cycles(runtime):
        report.problems.append(f"cycle among {', '.join(cycle)}:" + _lines(graph, cycle))
    report.known_cycles = [c for c in _cycles(with_allowed) if c not in _cycles(runtime)]
    return report


def _lines(graph: Mapping[str, list[Import]], cycle: list[str]) -> str:
    members = set(cycle)
    edges = [
        str(item)
        for module in cycle
        for item in graph[module]
        if item.target in members and not item.type_checking
    ]
    return "".join(f"\n    {edge}" for edge in edges)


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative: a deep chain of imports must not hit the recursion limit.
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


# ----------------------------------------------------------------------------- the command


def describe(report: Report, layers: Layers = LAYERS) -> str:
    imports = [item for items in report.graph.values() for item in items]
    in_functions = sum(item.function is not None for item in imports)
    typing_only = sum(item.type_checking for item in imports)
    lines = [
        f"{len(report.graph)} modules in {len(layers)} layers, {len(imports)} imports "
        f"({in_functions} inside functions, {typing_only} under TYPE_CHECKING), from the bottom up:"
    ]
    for index, (name, _) in enumerate(layers):
        members = sorted(m for m, i in report.layer_of.items() if i == index)
        lines.append(f"  {index} {name}: {', '.join(members)}")
    if report.allowed:
        lines.append("allowed upward imports (ALLOWED, each with its reason):")
        lines += [f"  {item}\n      {reason}" for item, reason in report.allowed]
    for cycle in report.known_cycles:
        lines.append(f"cycle closed by allowed imports only, among {', '.join(cycle)}")
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  {problem}" for problem in report.problems]
    else:
        lines.append("ok: no cycle, no upward import")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    package_dir = Path(argv[0]) if argv else PACKAGE_DIR
    report = check(package_dir)
    print(describe(report))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
