"""End-to-end: examples/service under wrk, direct async SQLAlchemy against lazycache.

For each mode, one uvicorn process (one worker) serves the app on a loopback port; wrk, a
load generator in its own process, drives each endpoint at a fixed concurrency for a fixed
time. Reported per endpoint and mode: requests/s, p50 and p99 latency, and database commits
per second (`xact_commit` of the database in `pg_stat_database`, which also counts any other
client of that database during the run). The ceiling is an endpoint that touches no store:
`GET /health`, and for `PUT /users/{id}` `PUT /echo/{id}`, which parses the same body.

    .venv/bin/python benchmarks/service_bench.py [--duration 5] [--connections 32]

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

# wrk scripts: each request picks a user at random (all users for writes, the hot ones for reads).
SCRIPTS = {
    "POST /users/{id}/views": f"""
wrk.method = "POST"
request = function() return wrk.format(nil, "/users/u" .. math.random(0, {USERS - 1}) .. "/views") end
""",
    "PUT /users/{id}": f"""
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"name": "someone", "email": "someone@example.com"}}'
request = function() return wrk.format(nil, "/users/u" .. math.random(0, {USERS - 1})) end
""",
    "GET /users/{id} (hot)": f"""
request = function() return wrk.format(nil, "/users/u" .. math.random(0, {HOT - 1})) end
""",
    "GET /health (ceiling)": """
request = function() return wrk.format(nil, "/health") end
""",
    # PUT /users/{id}'s request without the store: the same body parsed and validated.
    "PUT /echo/{id} (ceiling)": f"""
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"name": "someone", "email": "someone@example.com"}}'
request = function() return wrk.format(nil, "/echo/u" .. math.random(0, {USERS - 1})) end
""",
}

CEILINGS = {"PUT /users/{id}": "PUT /echo/{id} (ceiling)"}
"""The ceiling of each endpoint: a request of the same shape that touches no store (a body to
parse costs FastAPI more than the bare GET); the others' is GET /health."""


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
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per endpoint and mode")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    engine = sa.create_engine(SYNC_URL)
    table = f"lcbench_svc_{uuid.uuid4().hex[:8]}"
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for mode in ("direct", "lazycache"):
            port = 18000 + (os.getpid() % 1000)
            process = start(mode, table, port)
            try:
                if mode == "direct":  # the users, written once through the API's own table
                    with engine.begin() as conn:
                        conn.exec_driver_sql(
                            f"INSERT INTO {table} (key, value) SELECT 'u' || i, "
                            '\'{"name": "user", "views": 0}\' FROM generate_series(0, %(n)s) i',
                            {"n": USERS - 1},
                        )
                # Warm-up, not counted: every user read once (lazycache: loaded into memory).
                warm = f"""
counter = -1
request = function() counter = (counter + 1) % {USERS}; return wrk.format(nil, "/users/u" .. counter) end
"""
                run_wrk(f"http://127.0.0.1:{port}", warm, max(2, args.duration // 2), 4)
                for endpoint, script in SCRIPTS.items():
                    before, started = commits(engine), time.monotonic()
                    figures = run_wrk(
                        f"http://127.0.0.1:{port}", script, args.duration, args.connections
                    )
                    figures["commits/s"] = (commits(engine) - before) / (time.monotonic() - started)
                    results[(endpoint, mode)] = figures
                    print(f"{mode:9} {endpoint:24} {figures}", flush=True)
            finally:
                process.terminate()
                process.wait(60)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()
    print()
    print(
        f"wrk: 1 thread, {args.connections} connections, {args.duration}s per endpoint and mode; "
        f"uvicorn: 1 worker; load average at the end: {os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| endpoint | direct req/s | lazycache req/s | ratio | lazycache / its ceiling | direct p50/p99 ms | lazycache p50/p99 ms | direct commits/s | lazycache commits/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for endpoint in SCRIPTS:
        d, lc = results[(endpoint, "direct")], results[(endpoint, "lazycache")]
        ceiling = results[(CEILINGS.get(endpoint, "GET /health (ceiling)"), "lazycache")]["rps"]
        print(
            f"| {endpoint} | {d['rps']:,.0f} | {lc['rps']:,.0f} | {lc['rps'] / d['rps']:.1f}× "
            f"| {lc['rps'] / ceiling:.0%} "
            f"| {d['p50']:.1f} / {d['p99']:.1f} | {lc['p50']:.1f} / {lc['p99']:.1f} "
            f"| {d['commits/s']:,.0f} | {lc['commits/s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
