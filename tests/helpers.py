"""Shared test helpers: polling with a deadline, stores with switches, keys with Python hash/eq.

Every store here is a real `MemoryStore` subclass (no mocks): a switch makes it fail or
block, and it records what it was asked to do.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import pytest

from lazycache import MemoryStore
from lazycache.cache import implementation_class
from lazycache.coherence import Coherence

NO_EXTENSIONS = bool(os.environ.get("LAZYCACHE_NO_EXTENSIONS"))
"""Any non-empty value turns the compiled core off: the rule of lazycache._compat, restated here
on purpose as what the tests expect of it (test_implementation checks the library against it)."""

SHORT = 0.02
"""Default write/prune interval of caches made by the `make_cache` fixture."""

LONG = 3600.0
"""An interval long enough that a background thread never runs on its own during a test."""

TIMEOUT = 5.0
"""How long polling helpers wait for background behaviour before failing."""

HOT_METHODS = ("__getitem__", "__setitem__", "__delitem__", "__contains__", "__len__", "get")


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
"""A free-threaded build: a module not declared compatible re-enables the GIL when imported."""


@functools.cache
def _turns_the_gil_on(name: str) -> bool:
    """Whether importing `name` re-enables the GIL (asked of a fresh interpreter, not of this one)."""
    probe = f"import sys, {name}; print(sys._is_gil_enabled())"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() == "True"


def require_module(name: str) -> Any:
    """`pytest.importorskip(name)`, and on a free-threaded build also a skip if importing `name`
    would turn the GIL back on: the rest of the suite must go on running without it. Called at
    a module's top, it skips the module."""
    if importlib.util.find_spec(name.partition(".")[0]) is None:
        pytest.skip(f"{name} is not installed", allow_module_level=True)
    if FREE_THREADED and os.environ.get("PYTHON_GIL") != "0" and _turns_the_gil_on(name):
        reason = f"importing {name} re-enables the GIL on this free-threaded build"
        pytest.skip(reason, allow_module_level=True)
    return pytest.importorskip(name)


def require_implementation(name: str) -> type:
    """The LazyWriterCache class on core `name`.

    The compiled core is required: if `lazycache._core` cannot be imported the calling test
    FAILS, unless LAZYCACHE_NO_EXTENSIONS is set, in which case it is skipped.
    """
    if name == "cython":
        if NO_EXTENSIONS:
            pytest.skip(
                "LAZYCACHE_NO_EXTENSIONS is set: the compiled core is deliberately not tested"
            )
        try:
            importlib.import_module("lazycache._core")
        except ImportError as exc:
            pytest.fail(
                f"the compiled core lazycache._core cannot be imported ({exc}). Build it "
                "(pip install -e .) or set LAZYCACHE_NO_EXTENSIONS=1 to test only the pure-Python core.",
                pytrace=False,
            )
    return implementation_class(name)


EVENT_LOOPS = ("asyncio", "uvloop")
"""The event loops the awaitable API is tested on (the `loop_kind` fixture): asyncio's own, and
uvloop, which uvicorn runs a service on when it is installed (the `service` extra installs it)."""

_loop_kind = "asyncio"


@contextmanager
def event_loop_kind(kind: str) -> Iterator[None]:
    """Within it, `run_async` runs its scenarios on a new event loop of `kind` (EVENT_LOOPS);
    a uvloop test skips where uvloop is not installed, or where asyncio.Runner (3.11+) is not."""
    global _loop_kind
    if kind == "uvloop":
        pytest.importorskip("uvloop")
        if sys.version_info < (3, 11):
            pytest.skip("running a scenario on uvloop takes asyncio.Runner (Python 3.11+)")
    _loop_kind, before = kind, _loop_kind
    try:
        yield
    finally:
        _loop_kind = before


def run_async(scenario: Callable[[], Awaitable[Any]], timeout: float = TIMEOUT * 6) -> Any:
    """`scenario()` run to its end, with a deadline, as asyncio.run runs it: on a new event loop
    of the kind the test runs on (`event_loop_kind`), closed afterwards."""
    main = asyncio.wait_for(scenario(), timeout)
    if _loop_kind == "asyncio":
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, message: str = "") -> None:
    """Polls predicate until it is true; fails the test after timeout seconds (no speed asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(0.005)


def run_threads(
    target: Callable[..., None], args_list: Sequence[tuple[Any, ...]], timeout: float = 30.0
) -> None:
    """Runs target(*args) in one thread per args tuple, starting together; re-raises the first error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(args_list))

    def run(*args: Any) -> None:
        try:
            barrier.wait()
            target(*args)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=args, daemon=True) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a test thread hung"
    if errors:
        raise errors[0]


def quiet_class(cache_cls: type) -> type:
    """A subclass whose writer and pruner threads never act on their own: only the test's
    explicit `flush()` and `prune()` calls write and evict.

    A full batch wakes the writer and size pressure wakes the pruner even with long
    intervals, and a woken thread may run at once (on a free-threaded build it does, in
    parallel with the test). Tests that need an exact, repeatable sequence use this to keep
    writing and eviction in their hands. Backpressure still wakes the writer: a setter
    blocked on `max_pending` waits for it by design.
    """

    class QuietCache(cache_cls):  # type: ignore[misc,valid-type]
        def _wake(self, signal: int) -> None:
            return None  # neither a full batch nor size pressure starts a thread

        def prune(self) -> int:
            if threading.current_thread().name.startswith("lazycache-pruner"):
                return 0
            return super().prune()

    QuietCache.__name__ = QuietCache.__qualname__ = f"Quiet{cache_cls.__name__}"
    return QuietCache


class FakeClock:
    """A cache's `clock=` for tests: monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FailingStore(MemoryStore):
    """A MemoryStore with switches: `fail` makes write raise, `fail_loads` makes load_many raise.

    `error` builds the exception (ConnectionError, recoverable, by default). Every write call
    is recorded in `write_calls` as (upserts, deletes), failed or not.
    """

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        super().__init__(data)
        self.fail = False
        self.fail_loads = False
        self.error: Callable[[], BaseException] = lambda: ConnectionError("store is down")
        self.write_calls: list[tuple[list[tuple[Any, Any]], list[Any]]] = []
        self.load_calls: list[list[Any]] = []

    def load_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        self.load_calls.append(list(keys))
        if self.fail_loads:
            raise self.error()
        return super().load_many(keys)

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        self.write_calls.append((list(upserts), list(deletes)))
        if self.fail:
            raise self.error()
        return super().write(upserts, deletes)

    @property
    def upserted_keys(self) -> list[Any]:
        return [key for upserts, _ in self.write_calls for key, _ in upserts]


class BlockingStore(FailingStore):
    """A FailingStore whose write can be held: after `hold()`, the next write signals
    `entered` and waits for `release` (then fails if `fail` is set, else writes)."""

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        super().__init__(data)
        self._holding = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()
        self._holding = True

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        if self._holding:
            self._holding = False
            self.entered.set()
            if not self.release.wait(TIMEOUT * 2):
                raise TimeoutError("the test never released the blocked write")
        return super().write(upserts, deletes)

    def wait_entered(self) -> None:
        assert self.entered.wait(TIMEOUT), "the store's write was never called"


class IdStore(BlockingStore):
    """Assigns autoincrement ids like a database and returns them as generated fields.

    A value gets an id when it has none (dict item or attribute "id" missing or None).
    """

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        super().__init__(data)
        self.next_id = 1

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        super().write(upserts, deletes)
        generated = {}
        for key, value in upserts:
            current = value.get("id") if isinstance(value, dict) else getattr(value, "id", None)
            if current is None:
                generated[key] = {"id": self.next_id}
                self.next_id += 1
        return generated


class SlowKey:
    """A key whose __eq__ is Python code that gives up the GIL, with many hash collisions."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return self.n % 3

    def __eq__(self, other: object) -> bool:
        time.sleep(0)  # invite a thread switch in the middle of a lookup
        if not isinstance(other, SlowKey):
            return NotImplemented
        return self.n == other.n

    def __repr__(self) -> str:
        return f"SlowKey({self.n})"


# ----------------------------------------------------------------- failure-pipeline helpers
# (tests/test_failures.py, test_backpressure.py, test_shutdown.py, test_observability.py, test_fork.py)

SLACK = 2.0
"""Scheduling slack allowed on top of a documented deadline (close(timeout=...), block_timeout)."""


class TimedStore(FailingStore):
    """A FailingStore that records when each write was called (`call_times`, time.monotonic())
    and can fail a given number of times: `fail_times(n)` makes the next n writes raise `error()`."""

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        super().__init__(data)
        self.call_times: list[float] = []
        self.failures_left = 0

    def fail_times(self, count: int) -> None:
        self.failures_left = count

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        self.call_times.append(time.monotonic())
        if self.failures_left > 0:
            self.failures_left -= 1
            self.write_calls.append((list(upserts), list(deletes)))
            raise self.error()
        return super().write(upserts, deletes)

    def gaps(self) -> list[float]:
        """Seconds between consecutive write calls."""
        return [b - a for a, b in zip(self.call_times, self.call_times[1:])]


class RejectingStore(FailingStore):
    """Rejects, like a constraint violation (ValueError: not recoverable), every batch that upserts
    a key in `poison` or a value in `poison_values`, or deletes a key in `poison_deletes`.

    All or nothing per batch, like a database transaction. Every call is recorded in
    `write_calls`; the ones that succeeded also in `committed_calls`.
    """

    def __init__(self, data: dict[Any, Any] | None = None, poison: Sequence[Any] = ()) -> None:
        super().__init__(data)
        self.poison = set(poison)
        self.poison_values: set = set()
        self.poison_deletes: set = set()
        self.committed_calls: list[tuple[list[tuple[Any, Any]], list[Any]]] = []

    def rejected(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> list[Any]:
        bad = [
            k for k, v in upserts if k in self.poison or (_hashable(v) and v in self.poison_values)
        ]
        return bad + [k for k in deletes if k in self.poison_deletes]

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        bad = self.rejected(upserts, deletes)
        if bad:
            self.write_calls.append((list(upserts), list(deletes)))
            raise ValueError(f"constraint violated by {bad!r}")
        result = super().write(upserts, deletes)
        self.committed_calls.append((list(upserts), list(deletes)))
        return result

    @property
    def committed_keys(self) -> list[Any]:
        """Every key committed, in commit order, once per commit (upserts and deletes)."""
        return [
            k
            for upserts, deletes in self.committed_calls
            for k in [k for k, _ in upserts] + list(deletes)
        ]


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class SharedLogStore(BlockingStore):
    """A BlockingStore that also appends one JSON line per committed write to the file `path`,
    with the pid of the writing process: forked processes share it, so a test can see who wrote what."""

    def __init__(self, path: Any, data: dict[Any, Any] | None = None) -> None:
        super().__init__(data)
        self.path = str(path)

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        result = super().write(upserts, deletes)
        line = json.dumps(
            {"pid": os.getpid(), "upserts": [[k, v] for k, v in upserts], "deletes": list(deletes)}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(
                fd, (line + "\n").encode()
            )  # one write(2) on an O_APPEND file: lines never interleave
        finally:
            os.close(fd)
        return result

    def log(self) -> list[dict[str, Any]]:
        """The committed writes of every process, in order."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def run_in_forked_child(child: Callable[[], Any], timeout: float = TIMEOUT * 2) -> Any:
    """Forks; the child runs child() and leaves by os._exit, whatever happens, so it never
    returns into pytest. Returns what child() returned (JSON-serialisable); re-raises its
    failure as an AssertionError carrying the child's traceback. A child still running after
    timeout seconds is killed (by its pid) and the test fails."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 70
        try:
            os.close(read_fd)
            try:
                payload: dict[str, Any] = {"ok": True, "result": child()}
            except BaseException:  # reported to the parent below
                payload = {"ok": False, "error": traceback.format_exc()}
            data = json.dumps(payload, default=repr).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
            os.close(write_fd)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the forked child hung for {timeout}s and was killed")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"the forked child failed (wait status {status})"
    )
    payload = json.loads(b"".join(chunks))
    if not payload["ok"]:
        raise AssertionError("in the forked child:\n" + payload["error"])
    return payload["result"]


def recording(make_cache: Callable[..., Any]) -> tuple[Callable[..., Any], list[tuple[Any, bool]]]:
    """(make, made): make_cache(store, **options), each cache also recorded in `made` as
    (cache, close_may_fail), so that a fixture can close_caches(made) before it tears down
    what those caches write to (conftest's make_cache closes them only at its own teardown)."""
    made: list[tuple[Any, bool]] = []

    def make(store: Any, **options: Any) -> Any:
        cache = make_cache(store, **options)
        made.append((cache, options.get("close_may_fail", False)))
        return cache

    return make, made


def close_caches(made: Sequence[tuple[Any, bool]]) -> None:
    """Closes every (cache, close_may_fail) made by a fixture; re-raises the first FlushError not expected."""
    from lazycache import FlushError

    unexpected: list[BaseException] = []
    for cache, may_fail in made:
        try:
            cache.close()
        except FlushError as exc:
            if not may_fail:
                unexpected.append(exc)
    if unexpected:
        raise unexpected[0]


class LocalCoherence(Coherence):
    """A coherence channel within this process: the test calls `on_lost()`/`on_restored()`
    itself to play the subscription breaking and coming back."""

    def start(
        self,
        on_keys: Callable[[Sequence[Any]], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None],
    ) -> None:
        self.on_lost, self.on_restored = on_lost, on_restored

    def publish(self, keys: Sequence[Any]) -> None:
        pass
