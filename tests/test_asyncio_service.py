"""examples/service: the FastAPI app served by real uvicorn processes on loopback, over HTTP.

Both modes (direct async SQLAlchemy, and lazycache) answer the same API; two lazycache
processes keep each other coherent over PostgreSQL LISTEN/NOTIFY.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import TIMEOUT
from services import postgres_url

# The service runs in uvicorn processes of its own: these need only be installed, not imported
# here (on a free-threaded build, importing them would turn this process's GIL back on).
for _needed in ("fastapi", "uvicorn", "asyncpg"):
    if importlib.util.find_spec(_needed) is None:
        pytest.skip(f"{_needed} is not installed", allow_module_level=True)

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "service"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def eventually(check: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Polls an HTTP-visible condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


class Server:
    """One uvicorn process (its workers included) serving the app on a loopback port."""

    def __init__(self, mode: str, table: str, workers: int = 1) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LAZYCACHE_SERVICE_MODE": mode,
            "DATABASE_URL": postgres_url().replace("+psycopg", "+asyncpg"),
            "LAZYCACHE_SERVICE_TABLE": table,
            "LAZYCACHE_SERVICE_WRITE_INTERVAL": "0.05",
        }
        self.process = subprocess.Popen(
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
                str(self.port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
            ],
            env=env,
        )

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"uvicorn exited with {self.process.returncode}")
            try:
                return request("GET", f"{self.base}/health")[1] == {"mode": mode}
            except OSError:
                return False

        assert eventually(up, TIMEOUT * 6), "the service did not come up"

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return request(method, f"{self.base}{path}", body)

    def stop(self) -> None:
        self.process.terminate()  # uvicorn shuts down gracefully: the cache flushes
        # uvicorn re-raises the signal it handled once it has shut down.
        assert self.process.wait(TIMEOUT * 4) in (0, -signal.SIGTERM)


@pytest.fixture
def table() -> Iterator[str]:
    name = f"lcsvc_{uuid.uuid4().hex[:12]}"
    yield name
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url())
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    engine.dispose()


@pytest.mark.parametrize("mode", ["direct", "lazycache"])
def test_service_answers_profiles_and_counts_views(mode: str, table: str) -> None:
    server = Server(mode, table)
    try:
        assert server("GET", "/users/alice")[0] == 404
        assert server("POST", "/users/alice/views")[0] == 404
        status, body = server("PUT", "/users/alice", {"name": "Alice", "email": "a@x"})
        assert status == 200 and body == {
            "id": "alice",
            "name": "Alice",
            "email": "a@x",
            "views": 0,
        }
        for expected in (1, 2, 3):
            assert server("POST", "/users/alice/views") == (200, {"id": "alice", "views": expected})
        assert server("PUT", "/users/alice", {"name": "Alice B"})[1]["views"] == 3
        assert server("GET", "/users/alice")[1] == {
            "id": "alice",
            "name": "Alice B",
            "email": None,
            "views": 3,
        }
    finally:
        server.stop()
    # What the service acknowledged is in the database once it has stopped (both modes).
    restarted = Server("direct", table)
    try:
        assert restarted("GET", "/users/alice")[1]["views"] == 3
    finally:
        restarted.stop()


def test_a_put_to_one_process_is_read_through_the_other(table: str) -> None:
    first = Server("lazycache", table)
    second = Server("lazycache", table)
    try:
        first("PUT", "/users/bob", {"name": "Bob"})
        assert eventually(lambda: second("GET", "/users/bob")[0] == 200)
        assert second("GET", "/users/bob")[1]["name"] == "Bob"  # now cached by the second
        first("PUT", "/users/bob", {"name": "Robert"})
        # Within the documented bound: the write interval, then a notification round trip.
        assert eventually(lambda: second("GET", "/users/bob")[1]["name"] == "Robert")
    finally:
        first.stop()
        second.stop()


def test_the_service_runs_with_two_workers(table: str) -> None:
    server = Server("lazycache", table, workers=2)
    try:
        server("PUT", "/users/carol", {"name": "Carol"})
        # Whichever worker answers, each reads the same value (its own, or read through).
        assert eventually(lambda: all(server("GET", "/users/carol")[0] == 200 for _ in range(10)))
    finally:
        server.stop()
