"""The import graph of coherence and the stores: imports point downward, old paths still work.

The layers: the cache and the openers (`lazycache.cache`, `lazycache._open`) on top; below
them `lazycache.coherence` (base, message, channel, then one module per transport); below
that the stores. A store never imports coherence or the cache layer; coherence never
imports the cache layer, and its transports reach the stores only for connections.

Checked twice: statically (every import statement of the library, those inside functions
and `if TYPE_CHECKING:` included) and at run time (what importing one module loads).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lazycache

PACKAGE = Path(lazycache.__file__).parent

COMPAT_ALIASES = {
    "lazycache.stores.redis_coherence": "lazycache.coherence",
    "lazycache.stores.postgres_coherence": "lazycache.coherence",
}
"""Old import paths kept as thin re-exports of what moved up: modules that import upward by
design. Nothing in the library imports them."""

LAZY_ALIASES = {("lazycache.stores.redis", "__getattr__")}
"""(module, function): `lazycache.stores.redis.open_redis` and `.default_channel`, resolved on
first use only, so that importing the store imports nothing above it."""

CACHE_LAYER = ("lazycache.cache", "lazycache._open", "lazycache.aio", "lazycache.writer")

COHERENCE_IMPORTS = {
    "lazycache.coherence": {"lazycache.coherence.base"},
    "lazycache.coherence.base": set(),
    "lazycache.coherence.message": set(),
    "lazycache.coherence.channel": {"lazycache.coherence.base", "lazycache.coherence.message"},
    "lazycache.coherence.redis": {"lazycache.coherence.channel", "lazycache.stores.redis"},
    "lazycache.coherence.postgres": {
        "lazycache.coherence.channel",
        "lazycache.coherence.message",
    },
}
"""Everything of lazycache each coherence module may import: the modules below it only."""


def module_name(path: Path) -> str:
    parts = ["lazycache", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(tree: ast.AST, package: str) -> list[tuple[str, str | None, int]]:
    """(imported lazycache module, enclosing function or None, line) for every import in tree."""
    found: list[tuple[str, str | None, int]] = []
    todo: list[tuple[ast.AST, str | None]] = [(tree, None)]
    while todo:
        node, function = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                todo.append((child, child.name))
            elif isinstance(child, ast.Import):
                found += [(alias.name, function, child.lineno) for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, function, child.lineno))
                # `from . import x` may name a module: count x as one if it is.
                found += [
                    (f"{base}.{alias.name}", function, child.lineno)
                    for alias in child.names
                    if is_module(f"{base}.{alias.name}")
                ]
            else:
                todo.append((child, function))
    return [item for item in found if item[0] == "lazycache" or item[0].startswith("lazycache.")]


def library_imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """Per library module: (imported lazycache module, enclosing function or None, line)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_of(ast.parse(path.read_text(encoding="utf-8")), package)
    return graph


def is_in(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_the_graph_covers_the_modules_it_checks() -> None:
    graph = library_imports()
    assert set(COHERENCE_IMPORTS) <= set(graph)
    assert {"lazycache.stores.redis", "lazycache.stores.sqlalchemy"} <= set(graph)
    # The walk sees imports inside functions too (open() imports the SQL store lazily).
    assert any(
        target == "lazycache.stores.sqlalchemy" and function == "open"
        for target, function, _ in graph["lazycache._open"]
    )


def test_stores_import_nothing_above_them() -> None:
    upward = [
        f"{module}:{line} imports {target}"
        for module, imports in library_imports().items()
        if is_in(module, "lazycache.stores") and module not in COMPAT_ALIASES
        for target, function, line in imports
        if (target == "lazycache" or is_in(target, "lazycache.coherence", *CACHE_LAYER))
        and (module, function) not in LAZY_ALIASES
    ]
    assert upward == []


def test_coherence_imports_only_what_is_below_it() -> None:
    graph = library_imports()
    wrong = [
        f"{module}:{line} imports {target}"
        for module, allowed in COHERENCE_IMPORTS.items()
        for target, _, line in graph[module]
        if target not in allowed | {module, "lazycache", "lazycache.coherence", "lazycache.stores"}
    ]
    assert wrong == []
    # Nothing in the package imports the transports but the openers, the old paths and the
    # benchmark of the Redis channel.
    users = {
        module
        for module, imports in graph.items()
        for target, _, _ in imports
        if is_in(target, "lazycache.coherence.redis", "lazycache.coherence.postgres")
        and not is_in(module, "lazycache.coherence")
    }
    assert users <= {
        "lazycache._open",
        "lazycache.stores.redis",
        "lazycache.bench.redis",
        *COMPAT_ALIASES,
    }


# ----------------------------------------------------------------------------- at run time

LOADED = """
import importlib, importlib.util, json, sys, types

# The package's __init__ imports the whole library: bypass it, to see what {target} itself needs.
spec = importlib.util.find_spec("lazycache")
package = types.ModuleType("lazycache")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["lazycache"] = package
importlib.import_module({target!r})
print(json.dumps(sorted(sys.modules)))
"""

FORBIDDEN = {
    "lazycache.stores.redis": ("lazycache.coherence", "lazycache._core", *CACHE_LAYER),
    "lazycache.stores.sqlalchemy": ("lazycache.coherence", "lazycache._core", *CACHE_LAYER),
    "lazycache.coherence.base": ("lazycache.stores", "redis", "psycopg", *CACHE_LAYER),
    "lazycache.coherence.message": ("lazycache.stores", "redis", "psycopg", *CACHE_LAYER),
    "lazycache.coherence": (
        "lazycache.coherence.channel",
        "lazycache.stores",
        "redis",
        "psycopg",
        *CACHE_LAYER,
    ),
    "lazycache.coherence.redis": ("lazycache.coherence.postgres", "psycopg", *CACHE_LAYER),
    "lazycache.coherence.postgres": ("lazycache.stores", "redis", *CACHE_LAYER),
}


@pytest.mark.parametrize("target", sorted(FORBIDDEN))
def test_importing_a_module_loads_nothing_above_it(target: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", LOADED.format(target=target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    assert target in loaded
    assert [m for m in loaded if is_in(m, *FORBIDDEN[target])] == []


def test_importing_lazycache_loads_no_channel() -> None:
    code = "import json, sys, lazycache; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    # Every cache needs Coherence; the channel machinery only the caches that use a channel.
    transports = (
        "lazycache.coherence.channel",
        "lazycache.coherence.redis",
        "lazycache.coherence.postgres",
        "redis",
        "psycopg",
    )
    assert [m for m in loaded if is_in(m, *transports)] == []


# ----------------------------------------------------------------------------- old paths


def test_the_old_import_paths_give_the_same_objects() -> None:
    from lazycache.coherence import channel, message, postgres, redis
    from lazycache.stores import postgres_coherence, redis_coherence
    from lazycache.stores import redis as redis_store

    assert redis_coherence.RedisCoherence is redis.RedisCoherence
    assert redis_coherence.ChannelCoherence is channel.ChannelCoherence
    for name in ("encode_keys", "encode_message", "decode_message", "envelope", "all_message"):
        assert getattr(redis_coherence, name) is getattr(message, name)
    assert postgres_coherence.PostgresNotifyCoherence is postgres.PostgresNotifyCoherence
    assert postgres_coherence.conninfo_of is postgres.conninfo_of
    assert postgres_coherence.MAX_PAYLOAD == postgres.MAX_PAYLOAD
    assert redis_store.open_redis is lazycache.open_redis
    assert redis_store.default_channel is redis.default_channel
    from lazycache.stores.redis import open_redis  # the documented form of it

    assert open_redis is lazycache.open_redis
    with pytest.raises(AttributeError, match="no attribute 'opne_redis'"):
        redis_store.opne_redis  # noqa: B018
    # open_redis spells out the store's defaults (its module needs no redis-py): the same ones.
    import inspect

    defaults = inspect.signature(lazycache.open_redis).parameters
    assert defaults["url"].default == redis_store.DEFAULT_URL
    assert defaults["prefix"].default == redis_store.DEFAULT_PREFIX
