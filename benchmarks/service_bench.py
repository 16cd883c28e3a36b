"""End-to-end: examples/service under wrk, direct async SQLAlchemy against lazycache.

For each mode, one uvicorn process (one worker) serves the app on a loopback port, both at
once, each with a table of its own; wrk, a load generator in its own process, drives each
endpoint of one mode and then of the other at a fixed concurrency for a fixed time, in two
regimes:

* saturated: every connection sends its next request as soon as the last one is answered.
  Reported per endpoint and mode: requests/s, p50 and p99 latency, and database commits per
  second (`xact_commit` of the database in `pg_stat_database`, which also counts any other
  client of that database during the run). Here latency is mostly queueing: by Little's law
  the mean is connections / throughput, so the latency ratio follows the throughput ratio.
* a fixed offered load: each connection waits a random think time (exponential) between
  requests, so that both modes are offered the same rate, a share (`--load-share`, 0.5) of
  what direct sustained on that endpoint. Latency there is what one request waits when the
  server is not saturated.

Each endpoint's ceiling is the app's endpoint of the same shape that touches no store
(`/echo/...`: the same method, path, body and answer). The ceiling's p99 ratio, direct's p99
over the ceiling's, is the p99 ratio the app would reach if its store cost nothing: no store
can better it. Before the runs, every endpoint is driven for `WARM_UP` seconds in each mode,
not counted.

    .venv/bin/python benchmarks/service_bench.py [--duration 5] [--connections 32] [--load-share 0.5]

Needs wrk (Debian: apt-get install wrk) and the `service` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "service"
SYNC_URL = "postgresql+psycopg://postgres@127.0.0.1/test"
ASYNC_URL = "postgresql+asyncpg://postgres@127.0.0.1/test"
USERS = 1_000
HOT = 100
MODES = ("direct", "lazycache")


def _script(method: str, path: str, users: int, body: str | None = None) -> str:
    """A wrk script: `method` on `path` ({id}: a user picked at random of the first `users`)."""
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines += ['wrk.headers["Content-Type"] = "application/json"', f"wrk.body = '{body}'"]
    target = ('"' + path.replace("{id}", f'u" .. math.random(0, {users - 1}) .. "') + '"').replace(
        ' .. ""', ""
    )
    lines.append(f"request = function() return wrk.format(nil, {target}) end")
    return "\n".join(lines) + "\n"


PROFILE = '{"name": "someone", "email": "someone@example.com"}'

# Each request picks a user at random (all users for writes, the hot ones for reads). Each
# endpoint is followed by its ceiling: the same request and answer, without the store.
SCRIPTS = {
    "POST /users/{id}/views": _script("POST", "/users/{id}/views", USERS),
    "POST /echo/{id}/views (ceiling)": _script("POST", "/echo/{id}/views", USERS),
    "PUT /users/{id}": _script("PUT", "/users/{id}", USERS, PROFILE),
    "PUT /echo/{id} (ceiling)": _script("PUT", "/echo/{id}", USERS, PROFILE),
    "GET /users/{id} (hot)": _script("GET", "/users/{id}", HOT),
    "GET /echo/{id} (ceiling)": _script("GET", "/echo/{id}", HOT),
}

CEILINGS = {
    "POST /users/{id}/views": "POST /echo/{id}/views (ceiling)",
    "PUT /users/{id}": "PUT /echo/{id} (ceiling)",
    "GET /users/{id} (hot)": "GET /echo/{id} (ceiling)",
}
"""The ceiling of each endpoint: the app's endpoint of the same shape (method, path, body and
answer) that touches no store."""

PACED_LIKE = {ceiling: endpoint for endpoint, ceiling in CEILINGS.items()}
"""Under a fixed offered load, a ceiling is offered the rate of the endpoint it is the ceiling of."""

WARM_UP = 2
"""Seconds each endpoint is driven in each mode before the runs (not counted). Without it the
first write endpoint measured met each server's first writes: its p99 came out 10-30% higher
than in the runs after it."""

STATS_SETTLE = 11.0
"""Seconds for a run's commits to reach `pg_stat_database`: PostgreSQL (15 and later) reports
a backend's counts at most once a second, and those of a backend gone idle after 10 s."""


def paced(script: str, connections: int, rate: float) -> str:
    """The script with an exponential think time: `connections` of them offer about `rate`/s."""
    mean_ms = 1000.0 * connections / rate
    return script + f"delay = function() return -{mean_ms:.3f} * math.log(1 - math.random()) end\n"


def commits(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).scalar_one()
        )


def start(mode: str, table: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LAZYCACHE_SERVICE_MODE": mode,
        "DATABASE_URL": ASYNC_URL,
        "LAZYCACHE_SERVICE_TABLE": table,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--app-dir",
            str(APP_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                if json.loads(reply.read()) == {"mode": mode}:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {mode} service did not come up")


def run_wrk(url: str, script: str, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", file.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(file.name)
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def latency(q: str) -> float:
        match = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * units[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    # A run that met errors measured something else than the endpoint: it stops the benchmark.
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"wrk met errors:\n{out}")
    return {"rps": float(rps.group(1)), "p50": latency("50"), "p99": latency("99")}


def _bound(endpoint: str, direct: dict[str, float], ceiling: dict[str, float]) -> str:
    """Direct's p99 over that of the endpoint's ceiling (in lazycache's process): the p99 ratio
    the app would have if the store cost nothing, which no store can better."""
    return "—" if endpoint not in CEILINGS else f"{direct['p99'] / ceiling['p99']:.1f}×"


def _commits(figures: dict[str, float]) -> str:
    return f"{figures['commits/s']:,.0f}" if "commits/s" in figures else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per endpoint and mode")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--load-share",
        type=float,
        default=0.5,
        help="the fixed offered load, as a share of direct's saturated requests/s",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    engine = sa.create_engine(SYNC_URL)
    tables = {mode: f"lcbench_svc_{mode}_{uuid.uuid4().hex[:8]}" for mode in MODES}
    results: dict[tuple[str, str], dict[str, float]] = {}
    at_load: dict[tuple[str, str], dict[str, float]] = {}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    # Both modes are served at once, each from its own table, and take turns on each
    # endpoint: a machine whose speed drifts during the run moves both alike.
    try:
        for number, mode in enumerate(MODES):
            port = 18000 + (os.getpid() % 1000) * 2 + number
            servers[mode] = (start(mode, tables[mode], port), f"http://127.0.0.1:{port}")
            with engine.begin() as conn:  # the users, written once into the app's own table
                conn.exec_driver_sql(
                    f"INSERT INTO {tables[mode]} (key, value) SELECT 'u' || i, "
                    '\'{"name": "user", "views": 0}\' FROM generate_series(0, %(n)s) i',
                    {"n": USERS - 1},
                )
            # Warm-up, not counted: every user read once (lazycache: loaded into memory).
            warm = f"""
counter = -1
request = function() counter = (counter + 1) % {USERS}; return wrk.format(nil, "/users/u" .. counter) end
"""
            run_wrk(servers[mode][1], warm, max(2, args.duration // 2), 4)
        # Warm-up, not counted: every endpoint driven a while in each mode first, so that the
        # runs find both servers in their steady state (pools full, first batches written).
        for script in SCRIPTS.values():
            for mode in MODES:
                run_wrk(servers[mode][1], script, WARM_UP, args.connections)
        for endpoint, script in SCRIPTS.items():
            for mode in MODES:
                before, started = commits(engine), time.monotonic()
                figures = run_wrk(servers[mode][1], script, args.duration, args.connections)
                elapsed = time.monotonic() - started
                if endpoint in CEILINGS:  # (a ceiling, which commits nothing, needs no count)
                    time.sleep(STATS_SETTLE)
                    figures["commits/s"] = (commits(engine) - before) / elapsed
                results[(endpoint, mode)] = figures
                print(f"{mode:9} {endpoint:32} {figures}", flush=True)
        for endpoint, script in SCRIPTS.items():
            # Both modes are offered the same rate: a share of what direct sustained.
            rate = args.load_share * results[(PACED_LIKE.get(endpoint, endpoint), "direct")]["rps"]
            for mode in MODES:
                figures = run_wrk(
                    servers[mode][1],
                    paced(script, args.connections, rate),
                    2 * args.duration,
                    args.connections,
                )
                figures["offered"] = rate
                at_load[(endpoint, mode)] = figures
                print(f"{mode:9} {endpoint:32} at {rate:,.0f}/s {figures}", flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(60)
        with engine.begin() as conn:
            for name in tables.values():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        engine.dispose()
    print()
    print(
        f"wrk: 1 thread, {args.connections} connections, {args.duration}s per endpoint and mode; "
        f"uvicorn: 1 worker; load average at the end: {os.getloadavg()[0]:.1f}"
    )
    saturated = []
    for endpoint in SCRIPTS:
        d, lc = results[(endpoint, "direct")], results[(endpoint, "lazycache")]
        ceiling = results[(CEILINGS.get(endpoint, endpoint), "lazycache")]
        saturated.append(
            [
                endpoint,
                f"{d['rps']:,.0f}",
                f"{lc['rps']:,.0f}",
                f"{lc['rps'] / d['rps']:.1f}×",
                f"{lc['rps'] / ceiling['rps']:.0%}",
                f"{d['p50']:.1f} / {d['p99']:.1f}",
                f"{lc['p50']:.1f} / {lc['p99']:.1f}",
                f"{d['p99'] / lc['p99']:.1f}×",
                _bound(endpoint, d, ceiling),
                _commits(d),
                _commits(lc),
            ]
        )
    _print_table(
        "Saturated:",
        [
            "endpoint",
            "direct req/s",
            "lazycache req/s",
            "ratio",
            "lazycache / its ceiling",
            "direct p50/p99 ms",
            "lazycache p50/p99 ms",
            "p99 ratio",
            "the ceiling's p99 ratio",
            "direct commits/s",
            "lazycache commits/s",
        ],
        saturated,
    )
    loaded = []
    for endpoint in SCRIPTS:
        d, lc = at_load[(endpoint, "direct")], at_load[(endpoint, "lazycache")]
        ceiling = at_load[(CEILINGS.get(endpoint, endpoint), "lazycache")]
        loaded.append(
            [
                endpoint,
                f"{d['offered']:,.0f}",
                f"{d['rps']:,.0f}",
                f"{lc['rps']:,.0f}",
                f"{d['p50']:.2f} / {d['p99']:.2f}",
                f"{lc['p50']:.2f} / {lc['p99']:.2f}",
                f"{d['p50'] / lc['p50']:.1f}×",
                f"{d['p99'] / lc['p99']:.1f}×",
                _bound(endpoint, d, ceiling),
            ]
        )
    _print_table(
        f"At a fixed offered load ({args.load_share:.0%} of direct's saturated rate on each "
        f"endpoint; {2 * args.duration}s per endpoint and mode):",
        [
            "endpoint",
            "offered req/s",
            "direct req/s",
            "lazycache req/s",
            "direct p50/p99 ms",
            "lazycache p50/p99 ms",
            "p50 ratio",
            "p99 ratio",
            "the ceiling's p99 ratio",
        ],
        loaded,
    )


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """`title`, then a Markdown table (as benchmarks/README.md shows them)."""
    print()
    print(title)
    print()
    for cells in [header, ["---"] * len(header), *rows]:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
