"""`lazycache bench`: the command runs and reports every section. Structure only, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazycache import cli
from lazycache.bench.hotpaths import OPERATIONS
from lazycache.bench.kit.contenders import CONTENDERS, load_contenders
from lazycache.bench.kit.output import format_table, rate
from lazycache.bench.kit.progress import Progress
from lazycache.bench.kit.workload import Workload, zipf_ranks
from lazycache.bench.latency import FLUSH_MEMORY, FLUSH_SQLITE, IDLE
from lazycache.bench.threads import QUICK_THREAD_COUNTS

SECTIONS = ["ops", "threads", "latency", "memory"]

try:
    import matplotlib  # noqa: F401
except ImportError:
    HAVE_MATPLOTLIB = False
else:
    HAVE_MATPLOTLIB = True


def run_bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["bench", *args])
    out, err = capsys.readouterr()
    return status, out, err


def available_contenders() -> list[str]:
    return list(load_contenders()[0])


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    """One `lazycache bench --quick --json [--plot FILE]` run, in a child process, shared by the tests below."""
    plot = tmp_path_factory.mktemp("plot") / "bench.png"
    command = [sys.executable, "-m", "lazycache", "bench", "--quick", "--json"]
    if HAVE_MATPLOTLIB:
        command += ["--plot", str(plot)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    yield json.loads(done.stdout), plot


def test_quick_json_has_every_section(quick_json: tuple[dict[str, Any], Path]) -> None:
    document, _ = quick_json
    assert document["sections"] == SECTIONS
    assert document["quick"] is True
    for key in ("python", "cpu", "cpus", "gil", "lazycache_implementation"):
        assert key in document["environment"]
    for section in SECTIONS:
        part = document[section]
        assert part["failed"] == {}, part["failed"]
        assert part["results"], section
        assert "units" in part


def test_quick_json_ops(quick_json: tuple[dict[str, Any], Path]) -> None:
    ops = quick_json[0]["ops"]
    contenders = available_contenders()
    assert ops["contenders"] == contenders
    assert set(ops["contenders"]) | set(ops["skipped"]) == set(CONTENDERS)
    assert list(ops["operations"]) == list(OPERATIONS)
    assert "mixed" in ops["operations"]
    cells = {(r["operation"], r["size"], r["contender"]) for r in ops["results"]}
    assert cells == {
        (op, size, name) for op in OPERATIONS for size in ops["sizes"] for name in contenders
    }
    for record in ops["results"]:
        assert record["ns_per_op"] > 0 and record["ratio_to_dict"] > 0 and record["spread"] >= 0
        assert len(record["runs_ns_per_op"]) == ops["repeat"]
        if record["contender"] == "dict":
            assert record["ratio_to_dict"] == 1.0


def test_quick_json_threads(quick_json: tuple[dict[str, Any], Path]) -> None:
    threads = quick_json[0]["threads"]
    assert threads["thread_counts"] == list(QUICK_THREAD_COUNTS)
    cells = {(r["contender"], r["readers"], r["writer"]) for r in threads["results"]}
    assert cells == {
        (name, n, writer)
        for name in available_contenders()
        for n in QUICK_THREAD_COUNTS
        for writer in (False, True)
    }
    for record in threads["results"]:
        assert record["ops_per_second"] > 0 and record["ratio_to_dict"] > 0
        assert (record["writer_sets_per_second"] is not None) == record["writer"]


def test_quick_json_latency(quick_json: tuple[dict[str, Any], Path]) -> None:
    latency = quick_json[0]["latency"]
    scenarios = [IDLE, FLUSH_MEMORY] + (
        [FLUSH_SQLITE] if FLUSH_SQLITE in latency["scenarios"] else []
    )
    lazycaches = [name for name in available_contenders() if name.startswith("lazycache")]
    cells = {(r["contender"], r["scenario"]) for r in latency["results"]}
    assert cells == {("dict", IDLE)} | {(name, s) for name in lazycaches for s in scenarios}
    for record in latency["results"]:
        assert 0 < record["p50_us"] <= record["p99_us"] <= record["p99_9_us"] <= record["max_us"]
        assert record["sets_counted"] > 0
        assert (record["flush_ms"] is None) == (record["scenario"] == IDLE)


def test_quick_json_memory(quick_json: tuple[dict[str, Any], Path]) -> None:
    memory = quick_json[0]["memory"]
    expected = set()
    for name in available_contenders():
        modes = ["clean", "pending"] if name.startswith("lazycache") else ["built"]
        expected |= {(name, mode) for mode in modes}
    assert {(r["contender"], r["mode"]) for r in memory["results"]} == expected
    for record in memory["results"]:
        assert record["bytes_per_entry"] > 0
        if record["contender"] == "dict":
            assert record["beyond_dict"] == 0


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib not installed")
def test_plot_writes_a_png(quick_json: tuple[dict[str, Any], Path]) -> None:
    _, plot = quick_json
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000


def test_quick_table_has_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_bench(capsys, "--quick")
    assert status == 0, out
    for section in SECTIONS:
        assert f"== {section}:" in out
    for name in available_contenders():
        assert name in out
    for op in OPERATIONS:
        assert f"\n{op} " in out
    for header in ("p50", "p99", "p99.9", "beyond dict", "B/entry", "reads/s"):
        assert header in out
    assert "best (min)" in out and "GIL" in out
    assert err == ""  # capsys's stderr is not a terminal: no progress bar


def test_sections_option_runs_only_those(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_bench(capsys, "--quick", "--sections", "memory,ops", "--json")
    assert status == 0
    document = json.loads(out)
    assert document["sections"] == ["ops", "memory"]
    assert document["threads"] is None and document["latency"] is None
    assert document["ops"]["results"] and document["memory"]["results"]


def test_unknown_section_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--sections", "ops,bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown section(s) bogus" in err
    assert "choose from ops, threads, latency, memory" in err


def test_unknown_operation_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "--operations", "get-hit,nope"])
    assert "unknown operation(s) nope" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    status, out, err = run_bench(
        capsys, "--quick", "--sections", "ops", "--plot", str(tmp_path / "x.png")
    )
    assert status == 2
    assert "--plot" in err and "matplotlib" in err and "lazywritercache[bench]" in err
    assert out == ""  # refused before measuring anything
    assert not (tmp_path / "x.png").exists()


def test_console_entry_point_runs_the_ops_section() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lazycache",
            "bench",
            "--quick",
            "--sections",
            "ops",
            "--operations",
            "get-hit,mixed",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "== ops:" in done.stdout and "mixed" in done.stdout and "== threads" not in done.stdout


def test_progress_bar_draws_on_a_terminal_only_after_its_delay() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(enabled=True, stream=stream, delay=0.0, sections=2)
    progress.section("ops", 4)
    progress.advance("get-hit @ 2k: dict")
    progress._last_draw = 0.0
    progress.advance("get-hit @ 2k: lru.LRU")
    progress.close()
    text = stream.getvalue()
    assert "[1/2] ops" in text and "25%" in text and text.endswith("\r\x1b[K")

    quiet = io.StringIO()
    progress = Progress(enabled=True, stream=quiet, delay=60.0)
    progress.section("ops", 4)
    progress.advance("get-hit")
    progress.close()
    assert quiet.getvalue() == ""


def test_zipf_ranks_favour_the_first_ranks() -> None:
    import random

    ranks = zipf_ranks(20_000, 1_000, 1.1, random.Random(0))
    assert all(0 <= r < 1_000 for r in ranks)
    assert ranks.count(0) > ranks.count(1) > ranks.count(10) > 0
    work = Workload.build(1_000)
    sets = sum(is_set for _, is_set in work.mixed)
    assert len(work.mixed) == 1_000 and 50 < sets < 150


# ----------------------------------------------------------------------------- newcomer's view


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazycache", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_clear_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith("lazycache bench: --store "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_store_with_an_unknown_scheme_says_so_in_one_line() -> None:
    assert_one_clear_line(run_cli("bench", "--quick", "--store", "foo://bar"), "foo", "URL")


def test_store_whose_driver_is_not_installed_says_which_in_one_line() -> None:
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mysqlclient is installed: mysql+mysqldb:// has its driver here")
    # A named driver is used as written (a plain mysql:// would pick PyMySQL, which is here).
    done = run_cli("bench", "--quick", "--store", "mysql+mysqldb://root@127.0.0.1/test")
    assert_one_clear_line(done, "MySQLdb", "mysql+pymysql://", "lazywritercache[mysql]")


def test_store_whose_server_is_unreachable_says_so_in_one_line_hiding_the_password() -> None:
    # Port 1 on the loopback: nothing listens there.
    done = run_cli(
        "bench", "--quick", "--store", "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"
    )
    assert_one_clear_line(done, "cannot use the database", "127.0.0.1")
    assert "s3cret" not in done.stderr


def test_store_whose_redis_is_unreachable_says_so_in_one_line() -> None:
    pytest.importorskip("redis")
    done = run_cli("bench", "--quick", "--store", "redis://:s3cret@127.0.0.1:1/0")
    assert_one_clear_line(done, "cannot use Redis")
    assert "s3cret" not in done.stderr


def test_store_run_removes_the_sqlite_file_it_created(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    done = run_cli(
        "bench", "--quick", "--sizes", "200", "--store", f"sqlite:///{tmp_path / 'new.db'}"
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_store_run_keeps_an_existing_sqlite_database(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "mine.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE mine (x)")
    conn.close()
    done = run_cli("bench", "--quick", "--sizes", "200", "--store", f"sqlite:///{database}")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(database) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    conn.close()
    assert tables == ["mine"]  # the benchmark's table is dropped, the user's file and table kept


def test_store_table_fits_120_columns_and_says_what_the_origin_is() -> None:
    pytest.importorskip("sqlalchemy")
    done = run_cli("bench", "--quick", "--sizes", "200", "--store")
    assert done.returncode == 0, done.stderr
    assert max(map(len, done.stdout.splitlines())) <= 120, done.stdout
    assert "origin: the Go library pilotso11/lazywritercache" in done.stdout
    assert "origin: per row SELECT" in done.stdout


def test_quick_tables_fit_120_columns_and_the_writer_rate_is_never_0k() -> None:
    done = run_cli("bench", "--quick")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 120, [line for line in lines if len(line) > 120]
    for name in available_contenders():  # wrapped, not cut: every contender still has its columns
        assert name in done.stdout
    import re

    assert not re.search(r"(?<![\d.])0k/s", done.stdout), done.stdout  # 480 sets/s is not "0k/s"


def test_format_table_wraps_columns_into_blocks_that_fit() -> None:
    header = ["name", *(f"column {i}" for i in range(8))]
    rows = [["row", *(f"{i * 1111.1:.1f} ({i}.00x) +-{i}%".rjust(30) for i in range(8))]]
    lines = format_table(header, rows, width=120)
    assert max(map(len, lines)) <= 120
    assert (
        sum(line.startswith("row ") for line in lines) == 3
    )  # 8 columns of 30: 3 per block at most
    text = "\n".join(lines)
    for cell in [*header[1:], *rows[0][1:]]:
        assert cell.strip() in text


def test_writer_rates_below_a_thousand_are_shown_as_they_are() -> None:
    assert rate(480.0) == "480/s"
    assert rate(2_500.0) == "2.5k/s"
    assert rate(25_000.0) == "25k/s"
    assert rate(0.0) == "0/s"
    assert rate(float("nan")) == "-"


def test_format_table_sets_groups_of_rows_apart() -> None:
    rows = [["1,000", "a", "1"], ["1,000", "b", "2"], ["10,000", "a", "3"]]
    lines = format_table(["batch", "method", "rows/s"], rows, left=2, breaks=[2])
    assert lines[2:] == [
        "1,000   a            1",
        "1,000   b            2",
        "",
        "10,000  a            3",
    ]


def test_runs_of_a_rate_take_the_highest_as_best() -> None:
    from lazycache.bench.kit.timing import Runs

    class Times(Runs):
        def __init__(self, samples: list[float]) -> None:
            self.samples = samples

    class Rates(Times):
        higher_is_better = True

    assert (Times([4.0, 5.0]).best, Times([4.0, 5.0]).spread) == (4.0, 25.0)
    assert (Rates([4.0, 5.0]).best, Rates([4.0, 5.0]).spread) == (5.0, 20.0)


# ----------------------------------------------------------------------------- the kit's layers

SRC = Path(__file__).resolve().parent.parent / "src" / "lazycache"
SECTION_MODULES = {"hotpaths", "threads", "latency", "memory", "store", "redis"}


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the lazycache modules `path` imports, at any depth of its code."""
    import ast

    package = ".".join(("lazycache", *path.relative_to(SRC).parent.parts))
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("lazycache")}


def test_bench_imports_point_downward_only() -> None:
    for path in sorted((SRC / "bench").rglob("*.py")):
        name = path.relative_to(SRC / "bench").with_suffix("").as_posix().replace("/", ".")
        bench = {
            module.removeprefix("lazycache.bench.").split(".")[0]
            for module in imported_modules(path)
            if module.startswith("lazycache.bench.")
        }
        assert "lazycache.cli" not in imported_modules(path), name
        if name.startswith("kit"):
            assert bench <= {"kit"}, (name, bench)  # the kit imports no section
        elif name in SECTION_MODULES:
            assert bench <= {"kit"}, (name, bench)  # a section imports the kit only
    for path in sorted(SRC.rglob("*.py")):
        if (SRC / "bench") not in path.parents and path.name != "cli.py":
            library = imported_modules(path)
            assert not any(m.startswith("lazycache.bench") for m in library), (
                path
            )  # nor the library


def test_importing_lazycache_leaves_the_bench_kit_unloaded() -> None:
    code = "import json, sys, lazycache; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = [m for m in json.loads(done.stdout) if m.startswith("lazycache.")]
    assert "lazycache.cache" in loaded
    assert not [m for m in loaded if m.startswith(("lazycache.bench", "lazycache.cli"))]
