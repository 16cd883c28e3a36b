"""The import graph of the library: no cycle, no upward import, old paths still work.

The layers and the walker are tools/check_imports.py's (`make lint` runs it): the first test
runs that check on the package under test, the second shows it catches what it must. The
ones after it pin finer rules of coherence and the stores: a store never imports coherence
or the cache layer; coherence never imports the cache layer, and its transports reach the
stores only for connections. Checked twice: statically (every import statement of the
library, those inside functions and `if TYPE_CHECKING:` included) and at run time (what
importing one module loads).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import lazycache

PACKAGE = Path(lazycache.__file__).parent


def load_tool() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tools" / "check_imports.py"
    spec = importlib.util.spec_from_file_location("check_imports", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_imports = load_tool()

CACHE_LAYER = (
    "lazycache.cache",
    "lazycache._cache_layer",
    "lazycache._read_through",
    "lazycache._journaled_layer",
    "lazycache._journaling",
    "lazycache._lifecycle",
    "lazycache._views",
    "lazycache._open",
    "lazycache.aio",
    "lazycache.writer",
)

COHERENCE_IMPORTS = {
    "lazycache.coherence": {"lazycache.coherence.base"},
    "lazycache.coherence.base": set(),
    "lazycache.coherence.message": {"lazycache.serializers"},  # its one JSON encoder (a leaf)
    "lazycache.coherence.channel": {
        "lazycache._checks",
        "lazycache.coherence.base",
        "lazycache.coherence.message",
    },
    "lazycache.coherence.redis": {"lazycache.coherence.channel", "lazycache.stores.redis"},
    "lazycache.coherence.postgres": {
        "lazycache.coherence.channel",
        "lazycache.coherence.message",
    },
}
"""Everything of lazycache each coherence module may import: the modules below it only."""

OLD_PATHS = {"lazycache.stores.redis_coherence", "lazycache.stores.postgres_coherence"}
"""Old import paths kept as thin re-exports of what moved up to lazycache.coherence."""


def library_imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """Per library module: (imported lazycache module, enclosing function or None, line)."""
    return {
        module: [(item.target, item.function, item.line) for item in imports]
        for module, imports in check_imports.walk(PACKAGE).items()
    }


def is_in(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_no_cycle_and_no_upward_import_in_the_library() -> None:
    report = check_imports.check(PACKAGE)
    assert report.problems == [], check_imports.describe(report)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


def test_the_check_finds_cycles_upward_imports_and_modules_without_a_layer(
    tmp_path: Path,
) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from .high import Thing  # a type is a dependency too
                def helper():
                    from . import high  # hidden in a function: still upward
            """,
            "high.py": "from .loop_b import x\n",
            "loop_b.py": "import pkg.loop_c\n",
            "loop_c.py": """
                def late():
                    from pkg.loop_b import x  # the function-level half of a cycle
            """,
            "core.pyx": "from pkg.low import helper\ncimport cython\n",
            "stray.py": "",
            "sub/__init__.py": "from . import deep\n",
            "sub/deep.py": "",
            "user.py": "from pkg.sub.deep import y\nfrom pkg import core\n",
        },
    )
    layers = [
        ("bottom", ["pkg.low", "pkg.core", "pkg.sub.*"]),
        ("top", ["pkg", "pkg.high", "pkg.loop_b", "pkg.loop_c", "pkg.user"]),
    ]
    report = check_imports.check(
        package,
        layers=layers,
        allowed={("pkg.gone", "pkg.low", None): "an exception nobody needs any more"},
        only_imported_by={"pkg.core": frozenset({"pkg.low"})},
    )
    problems = "\n".join(report.problems)
    assert "pkg.stray is in no layer" in problems
    assert "upward: pkg.low:4 imports pkg.high [TYPE_CHECKING]" in problems
    assert "upward: pkg.low:6 (in helper) imports pkg.high" in problems
    assert "cycle among pkg.loop_b, pkg.loop_c:" in problems
    assert "pkg.loop_c:3 (in late) imports pkg.loop_b" in problems
    assert "pkg.user:2 imports pkg.core: only pkg.low may import pkg.core" in problems
    assert "no longer made" in problems and "pkg.gone" in problems
    assert len(report.problems) == 6, problems
    # The compiled module's imports are read too, and importing a module runs its package.
    assert [i.target for i in report.graph["pkg.core"]] == ["pkg.low"]
    assert {(i.target, i.implicit) for i in report.graph["pkg.user"]} >= {
        ("pkg.sub.deep", False),
        ("pkg.sub", True),
    }


def test_the_graph_covers_the_modules_it_checks() -> None:
    graph = library_imports()
    assert set(COHERENCE_IMPORTS) <= set(graph)
    assert {"lazycache.stores.redis", "lazycache.stores.sqlalchemy", "lazycache._core"} <= set(
        graph
    )
    # The walk sees imports inside functions too (open() imports the SQL store lazily).
    assert any(
        target == "lazycache.stores.sqlalchemy" and function == "open"
        for target, function, _ in graph["lazycache._open"]
    )


def test_stores_import_nothing_above_them() -> None:
    # But in the functions that resolve an old import path on first use (the tool's ALLOWED).
    lazy_aliases = {(module, function) for module, _, function in check_imports.ALLOWED}
    assert ("lazycache.stores.redis", "__getattr__") in lazy_aliases
    upward = [
        f"{module}:{line} imports {target}"
        for module, imports in library_imports().items()
        if is_in(module, "lazycache.stores") and module not in OLD_PATHS
        for target, function, line in imports
        if (target == "lazycache" or is_in(target, "lazycache.coherence", *CACHE_LAYER))
        and (module, function) not in lazy_aliases
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
        *OLD_PATHS,
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
    # The switch that picks the core, and the cores: nothing above them, not even `info`.
    "lazycache._compat": (
        "lazycache.stores",
        "lazycache.coherence",
        "lazycache.info",
        *CACHE_LAYER,
    ),
    "lazycache._core_py": (
        "lazycache._compat",
        "lazycache._core",
        "lazycache.stores",
        *CACHE_LAYER,
    ),
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
