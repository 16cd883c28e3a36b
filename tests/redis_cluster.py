"""Throwaway Redis servers started by the tests: a 3-master Redis Cluster, and single servers.

Both listen on free loopback ports only (127.0.0.1, from 7100 up), keep nothing on
disk beyond their temporary directory (`--save '' --appendonly no`), and are killed
(by their own pid) at teardown.

* `redis_cluster` (session-scoped): three `redis-server --cluster-enabled yes`, joined
  by `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, ready once
  every node reports `cluster_state:ok`. Use `cluster.client()` for a `RedisCluster`.
* `private_redis` (per test): one plain `redis-server`, for tests that kill clients
  (`CLIENT KILL TYPE pubsub`), read server-wide counters or stop the server, none of
  which may disturb the shared Redis at 127.0.0.1:6379 that other tests use.

Both skip with a clear reason if `redis-server`/`redis-cli` are not installed, and fail
under LAZYCACHE_REQUIRE_SERVICES=1 (see tests/services.py).

Import the fixtures into a test module: `from redis_cluster import redis_cluster  # noqa: F401`.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import HOST, redis_binaries

PORT_RANGE = (7100, 7999)
"""Where the servers' ports are picked (a cluster node also needs port + 10000 for its bus)."""

START_TIMEOUT = 15.0
"""Seconds a server, or the cluster, may take to come up."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A loopback port nothing listens on now (and, for a cluster node, port + 10000 too).

    Random within PORT_RANGE so that concurrent test sessions rarely pick the same one;
    a server that still fails to bind is restarted on another port (see RedisServer.start).
    """
    low, high = PORT_RANGE
    for _ in range(200):
        port = random.randint(low, high)
        if _port_free(port) and (not cluster_bus or _port_free(port + 10000)):
            return port
    raise RuntimeError(f"no free loopback port in {low}-{high}")


class RedisServer:
    """One redis-server process on 127.0.0.1, in its own directory."""

    def __init__(
        self, directory: Path, *, cluster: bool = False, extra: list[str] | None = None
    ) -> None:
        self.directory = directory
        self.cluster = cluster
        self.extra = list(extra or [])
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis(
            host=HOST, port=self.port, socket_timeout=5, socket_connect_timeout=3, **options
        )

    def start(self, port: int | None = None) -> RedisServer:
        """Starts the server (on `port`, or on a free one) and waits until it answers PING."""
        server, _ = redis_binaries()
        last_error = ""
        for _ in range(1 if port else 5):
            self.port = port or free_port(cluster_bus=self.cluster)
            workdir = self.directory / str(self.port)
            workdir.mkdir(parents=True, exist_ok=True)
            args = [
                server,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(workdir / "redis.log"),
            ]
            if self.cluster:
                args += [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-announce-ip",
                    HOST,
                ]
            self.process = subprocess.Popen(
                args + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready():
                return self
            last_error = self._log_tail(workdir)
            self.stop()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    @staticmethod
    def _log_tail(workdir: Path) -> str:
        try:
            return (workdir / "redis.log").read_text()[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Kills the server (SIGTERM, then SIGKILL after 5 s) and reaps it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Cluster:
    """Three cluster-enabled redis-servers joined into one cluster (masters only)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.servers = [RedisServer(directory, cluster=True) for _ in range(masters)]

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def url(self) -> str:
        """The URL of the first node: enough for a cluster client to discover the others."""
        return self.servers[0].url

    def client(self, **options: Any) -> Any:
        """A new `redis.cluster.RedisCluster` on this cluster (close it when done)."""
        from redis.cluster import RedisCluster

        return RedisCluster(
            host=HOST,
            port=self.servers[0].port,
            socket_timeout=5,
            socket_connect_timeout=3,
            **options,
        )

    def start(self) -> Cluster:
        try:
            for server in self.servers:
                server.start()
            _, cli = redis_binaries()
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *[s.address for s in self.servers],
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT * 2,
            )
            if create.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {create.stdout[-2000:]}{create.stderr[-2000:]}"
                )
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            states = []
            for server in self.servers:
                client = server.client()
                try:
                    info = client.cluster("INFO")  # parsed into a dict by redis-py
                    states.append(
                        _field(info, "cluster_state") == "ok"
                        and _field(info, "cluster_slots_ok") == "16384"
                    )
                except Exception:
                    states.append(False)
                finally:
                    client.close()
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster on ports {self.ports} did not reach cluster_state:ok"
                )
            time.sleep(0.05)

    def flushall(self) -> None:
        for server in self.servers:
            client = server.client()
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _field(info: Any, name: str) -> str:
    value = info.get(name, info.get(name.encode(), "")) if isinstance(info, dict) else ""
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-master Redis Cluster on free loopback ports, for the whole session; killed at teardown."""
    redis_binaries()  # skips (or fails under LAZYCACHE_REQUIRE_SERVICES=1) without them
    cluster = Cluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A plain redis-server of this test's own, on a free loopback port; killed at teardown."""
    redis_binaries()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["Cluster", "RedisServer", "free_port", "private_redis", "redis_cluster"]
