"""The runner: worker threads, a monitor, the nemesis, close/reopen and fork, and the checker.

One run = one scenario (a store, a mode, a core, the faults allowed) and one seed. The seed
fixes every random choice: the cache's configuration, each thread's operations, keys and
values, the nemesis's faults, their order and durations, and the forked children's work. The
interleaving of threads is the operating system's: a replay repeats the same schedule of
operations and faults, not the same instruction interleaving (run it a few times).

Invariants, checked as the run goes (by the threads that act, and by a monitor thread that
samples the cache every few milliseconds) and at the end:

- store: after the run (faults healed, a final flush), the store holds the model's value of
  every key (see model.py for the exemptions). After any flush(), each key the flushing thread
  owns that is not in the result's failed_keys (still pending) nor reported is in the store
  with its model value: a FlushResult never claims a write that is not there. A flush that
  did not raise has ok == True and leaves none of the flushing thread's keys pending; one that
  raised FlushError does not have ok == True. (Its poisoned_keys count as reported.)
- reads: get/del/update_entry of a thread's own key see its last acknowledged write.
- size: len(cache) <= maxsize + pending + SIZE_SLACK whenever sampled, except for at most
  PRUNE_GRACE seconds at a time (the pruner runs asynchronously: entries inserted since its last
  run are over the bound until it runs again). At the end, after the final flush, the pruner
  must bring len(cache) to maxsize or below within PRUNE_GRACE.
- pending: cache.pending <= max_pending whenever sampled.
- threads: the writer and pruner threads of an open cache are alive; no background thread
  logged an unexpected error; no call hangs (HANG_TIMEOUT).
- reports: every acknowledged write of a key no store can take (a hostile key) is reported.
- fork: a forked child writes keys of its own and closes with a timeout while no fault is active
  (the nemesis is the thread that forks) and the parent's writer goes on writing its backlog.
  Its close must write them: one that reports them (FlushError) loses nothing, so they count as
  reported in the model, but a child that cannot write at all is a liveness violation.
- close(timeout=T) returns or raises within T + CLOSE_SLACK.
"""

from __future__ import annotations

import collections
import faulthandler
import json
import logging
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from lazycache import MISSING, FlushError, FlushResult
from lazycache.cache import implementation_class

from .faults import HostileKey, SlowStore, rejected_value, unstable_value
from .model import ABSENT, Model
from .stores import Env, open_env

SIZE_SLACK = 64
"""Entries allowed over maxsize + pending at any sample (inserted since the pruner's last run)."""
PRUNE_GRACE = 5.0
"""Seconds the size may stay over its bound before it is a violation (the pruner must have run by then)."""
CLOSE_SLACK = 10.0
"""Seconds close(timeout=T) may take beyond T (scheduling on a loaded machine), before it is a hang."""
HANG_TIMEOUT = 120.0
FORK_TIMEOUT = 45.0
"""Seconds a forked child may take (its close() has FORK_CLOSE_TIMEOUT) before it counts as hung."""
FORK_CLOSE_TIMEOUT = 15.0
"""Seconds a worker, the nemesis or a forked child may take to finish before it counts as hung."""

NEMESIS_FAULTS = ("cut", "delay", "reset", "slow", "lock", "reopen", "fork", "doubt")
VALUE_FAULTS = ("reject", "oversize", "constraint", "hostile", "unstable")
ALL_FAULTS = NEMESIS_FAULTS + VALUE_FAULTS
DEFAULT_FAULTS = ("cut", "delay", "reset", "slow", "lock", "reopen", "fork", "reject", "constraint")
"""The faults of a scenario unless it says otherwise; bad input (hostile, oversize, unstable) and
in-doubt commits (doubt) are chosen per scenario."""

PROXY_FAULTS = {"cut", "delay", "reset"}


@dataclass(frozen=True)
class Scenario:
    store: str
    """sqlite, postgresql, mariadb or redis."""
    impl: str = "python"
    """The core: python or cython."""
    mode: str = "kv"
    """kv (JSON values) or rows (SQL only)."""
    faults: tuple[str, ...] = DEFAULT_FAULTS
    journal: bool = False
    crash: bool = False
    """The kill -9 scenario (crash.py) instead of threads in this process."""
    ops: int = 300
    """Operations per worker thread."""
    heal_timeout: float = 15.0
    """Seconds a flush after the faults healed may retry before pending keys count as stuck."""

    def applicable_faults(self) -> tuple[str, ...]:
        def fits(kind: str) -> bool:
            if kind in PROXY_FAULTS:
                return self.store != "sqlite"
            if kind == "lock":
                return self.store == "sqlite"
            if kind == "doubt":  # a COMMIT in doubt: PostgreSQL key-value (a deferred trigger)
                return self.store == "postgresql" and self.mode == "kv"
            if kind == "constraint":
                return self.mode == "rows"
            if kind == "unstable":
                return self.mode == "kv"
            return True

        return tuple(kind for kind in self.faults if fits(kind))

    @property
    def name(self) -> str:
        parts = [self.store, self.mode, self.impl]
        if self.crash:
            parts.append("crash")
        if self.journal:
            parts.append("journal")
        return "-".join(parts)

    def replay_args(self, seed: int) -> str:
        args = f"--seed {seed} --store {self.store} --mode {self.mode} --impl {self.impl} --ops {self.ops}"
        args += f" --faults {','.join(self.faults)} --heal-timeout {self.heal_timeout:g}"
        if self.journal:
            args += " --journal"
        if self.crash:
            args += " --crash"
        return args


FIXED_DEFECTS = {
    1: "pruner stopped pruning",
    3: "hostile keys",
    6: "MariaDB oversized values",
    8: "JSON values changing type",
}
"""Defects of issue 12 (by its numbering) this suite found, with the symptoms the runner can
recognise. All are fixed: a violation that resembles one is a regression, and fails the run
like any other (the resemblance is a hint for whoever investigates, never an excuse)."""


@dataclass
class Violation:
    kind: str
    message: str
    defect: int | None = None
    """The fixed defect of issue 12 this violation resembles, if the runner can tell."""

    def __str__(self) -> str:
        like = (
            f" (resembles issue 12 defect {self.defect}, fixed: {FIXED_DEFECTS[self.defect]})"
            if self.defect
            else ""
        )
        return f"[{self.kind}] {self.message}{like}"


@dataclass
class Outcome:
    scenario: Scenario
    seed: int
    counts: collections.Counter = field(default_factory=collections.Counter)
    """ops:<kind>, faults:<kind>, checks, errors:<exception type>"""
    violations: list[Violation] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def defects(self) -> set[int]:
        """The fixed defects this run's violations resemble (regressions to look at first)."""
        return {v.defect for v in self.violations if v.defect}

    def summary(self) -> str:
        kinds = collections.Counter(v.kind for v in self.violations)
        lines = [
            f"{self.scenario.name} seed={self.seed} config={self.config} ({self.duration:.1f}s)"
        ]
        lines.append(
            f"  violations: {dict(kinds)}; resembling fixed defects: {sorted(self.defects) or 'none'}"
        )
        shown: collections.Counter = collections.Counter()
        for violation in sorted(self.violations, key=lambda v: v.defect is not None):
            if shown[(violation.kind, violation.defect)] < 3:
                shown[(violation.kind, violation.defect)] += 1
                lines.append(f"  {str(violation)[:700]}")
        return "\n".join(lines)


class Gate:
    """Operations run under the shared side; close/reopen and fork take the exclusive side."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _Capture(logging.Handler):
    """Every lazycache log line at WARNING or above, stamped on the model's clock."""

    def __init__(self, run: Run) -> None:
        super().__init__(logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" [{record.exc_info[1]!r}]"
        self.run.log_line(record.levelno, message)


class Run:
    def __init__(self, scenario: Scenario, seed: int, tmpdir: str) -> None:
        self.scenario = scenario
        self.seed = seed
        self.tmpdir = tmpdir
        self.outcome = Outcome(scenario, seed)
        self.counts = self.outcome.counts
        self.faults = scenario.applicable_faults()
        rng = random.Random(f"{seed}-config")
        self.threads = rng.randint(2, 4)
        self.nkeys = rng.choice([8, 32, 128])
        self.maxsize = rng.choice([None, 16, 64, 256])
        self.max_pending = rng.choice([None, None, 32, 200])
        self.on_full = rng.choice(["block", "block", "raise", "write-through"])
        self.batch_size = rng.choice([1, 7, 64, 1000])
        self.write_interval = rng.choice([0.005, 0.02, 0.1])
        self.prune_interval = rng.choice([0.01, 0.05])
        self.max_retries = rng.choice([None, None, None, 3])
        self.counters = [f"c{i}" for i in range(rng.randint(1, 3))]
        self.outcome.config = {
            "threads": self.threads,
            "keys": self.nkeys,
            "maxsize": self.maxsize,
            "max_pending": self.max_pending,
            "on_full": self.on_full,
            "batch_size": self.batch_size,
            "write_interval": self.write_interval,
            "max_retries": self.max_retries,
        }
        self.env: Env | None = None
        self.model: Model | None = None
        self.gate = Gate()
        self.stop = threading.Event()
        self.lock = threading.Lock()  # counts and violations
        self.pid = os.getpid()
        self.errors_logged: list[tuple[int, str]] = []  # (model clock, message) of ERROR lines
        self.hostile_acked: list[HostileKey] = []
        self.hostile_reported: set[int] = set()
        self.child_reports: list[Any] = []  # in a forked child: what it was told
        self.cache: Any = None
        self.slow: SlowStore | None = None
        self.forks = 0
        # key -> the value fault of its last acknowledged write
        self.key_faults: dict[str, str] = {}
        self.reported_violations: set[tuple[str, Any]] = set()

    # ----------------------------------------------------------- bookkeeping
    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def violation(
        self, kind: str, message: str, key: Any = None, defect: int | None = None
    ) -> None:
        """Records a violation, once per (kind, key) for a key; `defect`: a fixed one it resembles."""
        if defect is None:
            defect = self.resembles(kind, message, key)
        with self.lock:
            if key is not None:
                if (kind, key) in self.reported_violations:
                    return
                self.reported_violations.add((kind, key))
            if len(self.outcome.violations) < 500:
                self.outcome.violations.append(Violation(kind, message, defect))

    def resembles(self, kind: str, message: str, key: Any) -> int | None:
        """The fixed defect a violation looks like, from what the run did to the key.

        (A forked child that cannot write is no longer put down to defect 5, connections
        shared across fork(): on SQLite it was the child inheriting the parent's locks,
        fixed since, and any such violation now is a finding of its own.)
        """
        if "Hostile" in message:
            return 3
        if kind == "size":
            return 1
        fault = self.key_faults.get(key) if isinstance(key, str) else None
        if fault == "unstable":
            return 8
        if fault == "oversize" and self.scenario.store == "mariadb":
            return 6
        if (
            kind == "stuck"
            and self.scenario.store == "mariadb"
            and "oversize" in self.key_faults.values()
        ):
            return 6  # an oversized value is retried forever, and holds back every batch behind it
        return None

    def log_line(self, level: int, message: str) -> None:
        # A forked child: its own list, no lock (the parent's may be held).
        if os.getpid() != self.pid:
            if level >= logging.ERROR:
                self.child_reports.append(message)
            return
        if level >= logging.ERROR:
            assert self.model is not None
            with self.lock:
                self.errors_logged.append((self.model.tick(), message))
        if "unexpected error" in message:
            self.violation("background-error", message[:500])

    def on_write_error(self, key: Any, value: Any, exc: BaseException) -> None:
        # A forked child: its own list, no lock (the parent's may be held).
        if os.getpid() != self.pid:
            self.child_reports.append(key)
            return
        self.count("reports:on_write_error")
        if isinstance(key, HostileKey):
            with self.lock:
                self.hostile_reported.add(id(key))
            return
        assert self.model is not None
        self.model.reported_value(
            key, ABSENT if value is MISSING else value, f"on_write_error: {exc!r}"[:200]
        )

    def logged(self, key: Any, since: int) -> bool:
        """Whether an ERROR line after `since` (model clock) names key."""
        text = repr(key)
        with self.lock:
            return any(at > since and text in message for at, message in self.errors_logged)

    # ----------------------------------------------------------- the cache
    def open_cache(self) -> Any:
        assert self.env is not None
        self.slow = SlowStore(self.env.make_store())
        cls = implementation_class(self.scenario.impl)
        options: dict[str, Any] = {
            "maxsize": self.maxsize,
            "batch_size": self.batch_size,
            "write_interval": self.write_interval,
            "prune_interval": self.prune_interval,
            "retry_initial": 0.01,
            "retry_max": 0.2,
            "max_retries": self.max_retries,
            "max_pending": self.max_pending,
            "on_full": self.on_full,
            "block_timeout": 5.0,
            "on_write_error": self.on_write_error,
            "exit_timeout": 5.0,
        }
        if self.scenario.journal:
            options["journal"] = os.path.join(self.tmpdir, f"journal-{self.seed}")
            options["journal_fsync"] = "no"
        return cls(self.slow, **options)

    # ----------------------------------------------------------- values
    def value(self, key: str, wid: str, rng: random.Random) -> Any:
        if self.scenario.mode == "rows":
            return {"w": wid, "email": f"{key}@chaos", "n": rng.randint(0, 1000)}
        payload = rng.choice(
            [
                rng.randint(-(2**40), 2**40),
                f"s{rng.randint(0, 10**6)}é",
                [rng.randint(0, 9) for _ in range(rng.randint(0, 4))],
                {"a": rng.randint(0, 9), "b": [True, None]},
                None,
                rng.random(),
                rng.random() < 0.5,
            ]
        )
        return {"w": wid, "p": payload}

    def bad_value(self, kind: str, key: str, wid: str, rng: random.Random) -> Any:
        assert self.env is not None
        if kind == "oversize":
            value = self.value(key, wid, rng)
            field_name = "w" if self.scenario.mode == "rows" else "p"
            value[field_name] = wid + "x" * self.env.oversize
            return value
        if kind == "constraint":  # rows: another key's unique email, or a NOT NULL column left NULL
            other = f"t0-k{rng.randrange(self.nkeys)}"
            return {"w": wid, "email": None if rng.random() < 0.3 else f"{other}@chaos", "n": 1}
        if kind == "unstable":
            return {"w": wid, "p": unstable_value(wid, rng.randrange(3))}
        if self.scenario.mode == "rows":  # reject: no dict of columns
            return [["not a row", wid], {"w": wid, "no_such_column": 1}][rng.randrange(2)]
        return {"w": wid, "p": rejected_value(rng.randrange(4))}

    def counter_next(self, current: Any) -> Any:
        if self.scenario.mode == "rows":
            n = 0 if current is None else current["n"]
            return {"w": f"count{n + 1}", "email": "", "n": n + 1}
        return (current or 0) + 1

    def counter_of(self, observed: Any) -> Any:
        if self.scenario.mode == "rows" and isinstance(observed, dict):
            return observed.get("n")
        return observed

    # ----------------------------------------------------------- workers
    def worker(self, tid: int) -> None:
        rng = random.Random(f"{self.seed}-worker{tid}")
        keys = [f"t{tid}-k{j}" for j in range(self.nkeys)]
        value_faults = [kind for kind in self.faults if kind in VALUE_FAULTS]
        for i in range(self.scenario.ops):
            if self.stop.is_set():
                return
            with self.gate.shared():
                self.operation(tid, i, rng, self.cache, keys, value_faults)
            # Paced, so that a run spans the nemesis's faults (about 1 s per 300 operations).
            if rng.random() < 0.3:
                self.stop.wait(rng.uniform(0.0, 0.02))

    def operation(
        self,
        tid: int,
        i: int,
        rng: random.Random,
        cache: Any,
        keys: list[str],
        value_faults: list[str],
    ) -> None:
        assert self.model is not None
        model = self.model
        key = rng.choice(keys)
        wid = f"{tid}.{i}"
        roll = rng.random()
        if value_faults and roll < 0.03:
            kind = rng.choice(value_faults)
            self.count(f"faults:{kind}")
            if kind == "hostile":
                self.hostile(rng, cache, wid)
                return
            value = self.bad_value(kind, key, wid, rng)
            self.count("ops:set")
            self.key_faults[key] = kind  # its value may be in the store, or be reported
            try:
                cache[key] = value
            except Exception as exc:
                self.count(f"errors:{type(exc).__name__}")
                model.raised(key, value)
            else:
                model.acked(key, value)
            return
        if roll < 0.33:
            value = self.value(key, wid, rng)
            self.count("ops:set")
            try:
                cache[key] = value
            except Exception as exc:
                self.count(f"errors:{type(exc).__name__}")
                model.raised(key, value)
            else:
                model.acked(key, value)
                self.key_faults.pop(key, None)
        elif roll < 0.58:
            self.count("ops:get")
            try:
                got = cache.get(key, ABSENT)
            except Exception as exc:
                self.count(f"errors:{type(exc).__name__}")
                return
            self.check_read("get", key, got)
        elif roll < 0.64:
            self.count("ops:del")
            self.delete(cache, key)
        elif roll < 0.70:
            self.count("ops:discard")
            try:
                cache.discard(key)
            except Exception as exc:
                self.count(f"errors:{type(exc).__name__}")
                model.raised(key, ABSENT)
            else:
                model.acked(key, ABSENT)
                self.key_faults.pop(key, None)
        elif roll < 0.82:
            self.count("ops:update_entry")
            self.update(cache, key, wid, rng)
        elif roll < 0.94:
            self.count("ops:increment")
            counter = rng.choice(self.counters)
            try:
                cache.update_entry(counter, self.counter_next, None)
            except Exception as exc:
                self.count(f"errors:{type(exc).__name__}")
                model.counter_raised(counter)
            else:
                model.counter_acked(counter)
        else:
            self.count("ops:flush")
            self.flush(cache, keys, rng)

    def check_read(self, what: str, key: str, got: Any) -> None:
        assert self.model is not None
        self.count("checks")
        problem = self.model.check(key, got)
        if problem:
            self.violation("read", f"{what}: {problem}", key)

    def delete(self, cache: Any, key: str) -> None:
        assert self.model is not None
        model = self.model
        expected = model.expected(key)
        certain = not expected.reported and not expected.maybe
        try:
            del cache[key]
        except KeyError:
            if certain and expected.value is not ABSENT:
                self.count("checks")
                self.violation(
                    "read",
                    f"del {key!r} raised KeyError; the last acknowledged write is {expected.value!r}",
                    key,
                )
            return
        except Exception as exc:
            self.count(f"errors:{type(exc).__name__}")
            model.raised(key, ABSENT)
            return
        if certain and expected.value is ABSENT:
            self.count("checks")
            self.violation(
                "read", f"del {key!r} succeeded; the key was deleted (or never written)", key
            )
        model.acked(key, ABSENT)
        self.key_faults.pop(key, None)

    def update(self, cache: Any, key: str, wid: str, rng: random.Random) -> None:
        assert self.model is not None
        model = self.model
        seen: list[Any] = []
        new_value = self.value(key, wid, rng)

        def fn(current: Any) -> Any:
            seen.append(current)
            return new_value

        expected = model.expected(key)
        try:
            cache.update_entry(key, fn, None)
        except Exception as exc:
            self.count(f"errors:{type(exc).__name__}")
            model.raised(key, new_value)
            return
        model.acked(key, new_value)
        if not expected.reported and not expected.maybe and seen:
            self.count("checks")
            got = ABSENT if seen[-1] is None else seen[-1]
            if got is expected.original:
                pass  # the very object acknowledged
            elif (got is ABSENT) != (expected.value is ABSENT) or (
                got is not ABSENT and not _same(model.same, got, expected.value)
            ):
                self.violation(
                    "read",
                    f"update_entry({key!r}) was given {got!r}; the last acknowledged write is {expected.value!r}",
                    key,
                )
        # After the check: what update_entry was given came from that value.
        self.key_faults.pop(key, None)

    def hostile(self, rng: random.Random, cache: Any, wid: str) -> None:
        key = HostileKey(rng.randrange(10**9), rng.randint(0, 6))
        self.count("ops:set")
        try:
            cache[key] = {"w": wid}
        except Exception as exc:
            self.count(f"errors:{type(exc).__name__}")
            return
        with self.lock:
            self.hostile_acked.append(key)

    def flush(self, cache: Any, keys: list[str], rng: random.Random) -> None:
        timeout = rng.choice([None, None, 0.1, 1.0])
        try:
            result: FlushResult = cache.flush(timeout=timeout)
            raised = False
        except FlushError as exc:
            result = exc.result
            raised = True
        except Exception as exc:
            self.count(f"errors:{type(exc).__name__}")
            self.violation("flush", f"flush(timeout={timeout}) raised {exc!r}, not FlushError")
            return
        self.check_flush_result(result, raised, keys, "flush")
        if not raised:
            # ok: everything pending at the call reached the store, and only this thread changes its keys.
            self.count("checks")
            still = [key for key in keys if cache._is_pending(key)]
            if still:
                self.violation(
                    "flush-ok-pending",
                    f"flush() returned ok, yet {len(still)} of this thread's keys are still pending: {still[:5]!r}",
                )

    def check_flush_result(
        self, result: FlushResult, raised: bool, keys: list[str], what: str
    ) -> None:
        assert self.model is not None and self.env is not None
        self.count("checks")
        if not raised and not result.ok:
            self.violation("flush", f"{what} returned a result that is not ok: {result!r}")
        if raised and result.ok:
            self.violation("flush", f"{what} raised FlushError with an ok result: {result!r}")
        for key in result.poisoned_keys:
            if isinstance(key, HostileKey):
                continue
            self.model.reported_key(key, "FlushError.poisoned_keys")
        # (A hostile key cannot be hashed: only the workers' keys are looked up.)
        failed = {key for key in result.failed_keys if isinstance(key, str)}
        todo = [key for key in keys if key not in failed and not self.model.is_exempt(key)]
        if not todo:
            return
        try:
            stored = self.env.oracle.load_many(todo)
        # The oracle bypasses the proxy, but SQLite may be locked by the nemesis.
        except Exception as exc:
            self.count(f"errors:oracle:{type(exc).__name__}")
            return
        for key in todo:
            self.count("checks")
            problem = self.model.check(key, stored.get(key, ABSENT))
            if problem and not self.model.is_exempt(key):
                self.violation(
                    "flush-claims",
                    f"after {what} ({'FlushError' if raised else 'ok'}, {len(result.failed_keys)} failed, "
                    f"{len(result.poisoned_keys)} poisoned), {key!r} is not failed nor reported, but the store "
                    f"disagrees: {problem}",
                    key,
                )

    # ----------------------------------------------------------- monitor
    def monitor(self) -> None:
        over_since: float | None = None
        while not self.stop.wait(0.003):
            cache = self.cache
            try:
                size = len(cache)
                pending = cache.pending
            except Exception as exc:
                self.violation("monitor", f"len/pending raised {exc!r}")
                return
            self.count("checks")
            if self.max_pending is not None and pending > self.max_pending:
                # Once per value seen (the monitor samples every few milliseconds).
                self.violation(
                    "max-pending",
                    f"pending={pending} > max_pending={self.max_pending}",
                    key=pending,
                )
            if self.maxsize is not None:
                bound = self.maxsize + pending + SIZE_SLACK
                if size > bound:
                    now = time.monotonic()
                    if over_since is None:
                        over_since = now
                    elif now - over_since > PRUNE_GRACE:
                        self.violation(
                            "size",
                            f"len={size} > maxsize {self.maxsize} + pending {pending} + slack {SIZE_SLACK} "
                            f"for more than {PRUNE_GRACE}s (evictions so far: {cache.stats.evictions})",
                        )
                        over_since = None
                else:
                    over_since = None
            if not cache.closed:
                if not cache._writer.alive or not cache._pruner.alive:
                    if not cache.closed:  # closed meanwhile: its threads stop
                        self.violation(
                            "thread-dead", "the writer or pruner thread of an open cache died"
                        )
                        return

    # ----------------------------------------------------------- nemesis
    def nemesis(self) -> None:
        rng = random.Random(f"{self.seed}-nemesis")
        kinds = [kind for kind in self.faults if kind in NEMESIS_FAULTS]
        if not kinds:
            return
        weights = {
            "cut": 3,
            "delay": 3,
            "reset": 3,
            "slow": 2,
            "lock": 3,
            "reopen": 1,
            "fork": 1,
            "doubt": 3,
        }
        choices = [kind for kind in kinds for _ in range(weights[kind])]
        while not self.stop.wait(rng.uniform(0.02, 0.3)):
            kind = rng.choice(choices)
            duration = rng.uniform(0.05, 0.8)
            self.count(f"faults:{kind}")
            self.apply(kind, duration, rng)

    def apply(self, kind: str, duration: float, rng: random.Random) -> None:
        assert self.env is not None
        proxy = self.env.proxy
        if kind == "cut":
            assert proxy is not None
            proxy.cut()
            self.stop.wait(duration)
            proxy.restore()
        elif kind == "delay":
            assert proxy is not None
            proxy.delay = rng.uniform(0.001, 0.03)
            self.stop.wait(duration)
            proxy.delay = 0.0
        elif kind == "reset":
            assert proxy is not None
            proxy.reset()
        elif kind == "slow":
            slow = self.slow
            assert slow is not None
            slow.delay = rng.uniform(0.01, 0.2)
            self.stop.wait(duration)
            slow.delay = 0.0
        elif kind == "lock":
            self.env.hold_sqlite_lock(duration, self.stop)
        elif kind == "doubt":
            # COMMITs take SLOW_COMMIT s on the server; the connections die while they run, so
            # the writer sees failures whose writes the server may still commit afterwards.
            assert proxy is not None and self.env.slow_commit is not None
            self.env.slow_commit(True)
            self.stop.wait(rng.uniform(0.05, 0.2))
            proxy.cut()
            self.stop.wait(duration / 4)
            proxy.restore()
            self.env.slow_commit(False)
        elif kind == "reopen":
            self.reopen(rng)
        elif kind == "fork":
            self.fork(rng)

    def heal(self) -> None:
        assert self.env is not None
        if self.env.proxy is not None:
            self.env.proxy.heal()
        if self.slow is not None:
            self.slow.delay = 0.0

    def reopen(self, rng: random.Random) -> None:
        assert self.env is not None
        proxy = self.env.proxy
        with self.gate.exclusive():
            old, old_store = self.cache, self.slow
            cut = proxy is not None and rng.random() < 0.3
            timeout = rng.choice([0.2, 1.0]) if cut else rng.choice([None, 0.5, 3.0])
            if cut:
                proxy.cut()  # type: ignore[union-attr]
            started = time.monotonic()
            try:
                old.close(timeout=timeout)
            except FlushError as exc:
                self.check_flush_result(exc.result, True, [], "close")
            except Exception as exc:
                self.violation("close", f"close(timeout={timeout}) raised {exc!r}")
            elapsed = time.monotonic() - started
            if timeout is not None and elapsed > timeout + CLOSE_SLACK:
                self.violation("close", f"close(timeout={timeout}) took {elapsed:.1f}s")
            self.heal()
            if old.pending:
                # The closed cache keeps what it could not write; once the store is back, flush() writes it.
                try:
                    old.flush(timeout=self.scenario.heal_timeout)
                except FlushError as exc:
                    self.check_flush_result(exc.result, True, [], "flush after close")
                    stuck = [k for k in exc.result.failed_keys][:10]
                    if exc.result.failed_keys:
                        self.violation(
                            "stuck",
                            f"{len(exc.result.failed_keys)} keys still pending {self.scenario.heal_timeout}s after the faults healed "
                            f"(a closed cache, flushed again): {stuck!r}; {exc}"[:600],
                        )
                except Exception as exc:
                    self.violation("close", f"flush() of a closed cache raised {exc!r}")
            if old_store is not None:
                old_store.close()
            self.cache = self.open_cache()

    def fork(self, rng: random.Random) -> None:
        child_seed = rng.randrange(2**32)
        with self.gate.exclusive():
            n = self.forks
            self.forks += 1
            read_fd, write_fd = os.pipe()
            stacks_path = os.path.join(self.tmpdir, f"fork-{n}.stacks")
            pid = os.fork()
            if pid == 0:
                status = 0
                try:
                    os.close(read_fd)
                    # If the child hangs, its threads' stacks say where (the parent reads them).
                    stacks = open(stacks_path, "w")
                    faulthandler.dump_traceback_later(FORK_TIMEOUT - 5, file=stacks)
                    try:
                        payload = self.child_work(child_seed, n, stacks)
                    except BaseException:
                        payload = {"error": traceback.format_exc()}
                    data = json.dumps(payload, default=repr).encode()
                    view = memoryview(data)
                    while view:
                        view = view[os.write(write_fd, view) :]
                    os.close(write_fd)
                except BaseException:
                    status = 70
                finally:
                    os._exit(status)
            os.close(write_fd)
            chunks = []
            deadline = time.monotonic() + FORK_TIMEOUT
            hung = False
            try:
                while True:
                    ready, _, _ = select.select(
                        [read_fd], [], [], max(0.0, deadline - time.monotonic())
                    )
                    if not ready:
                        hung = True
                        os.kill(pid, signal.SIGKILL)
                        break
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            finally:
                os.close(read_fd)
            os.waitpid(pid, 0)
        if hung:
            try:
                with open(stacks_path) as f:
                    where = f.read()[-2500:]
            except OSError:
                where = "(no stacks)"
            self.violation(
                "fork",
                f"the forked child {n} hung for {FORK_TIMEOUT}s and was killed; its stacks:\n{where}",
            )
            return
        try:
            payload = json.loads(b"".join(chunks))
        except ValueError:
            self.violation("fork", f"the forked child {n} died without a report")
            return
        if "error" in payload:
            self.violation("fork", f"the forked child {n} failed: {payload['error'][-800:]}")
            return
        assert self.model is not None
        self.count("ops:fork-child", payload["ops"])
        for key, value in payload["acked"].items():
            self.model.acked(key, ABSENT if value is None else value)
        for key in payload["reported"]:
            self.model.reported_key(key, "reported in the forked child")
        for problem in payload["violations"]:
            self.violation("fork", f"in forked child {n}: {problem}")

    def child_work(self, seed: int, n: int, stacks: Any) -> dict[str, Any]:
        """In a forked child: a few writes of its own keys, then close(); what it acknowledged."""
        rng = random.Random(seed)
        cache = self.cache
        acked: dict[str, Any] = {}
        problems: list[str] = []
        keys = [f"f{n}-k{j}" for j in range(8)]
        ops = rng.randint(5, 40)
        for i in range(ops):
            key = rng.choice(keys)
            if rng.random() < 0.8:
                value = self.value(key, f"f{n}.{i}", rng)
                cache[key] = value
                acked[key] = value
            else:
                cache.discard(key)
                acked[key] = None
        reported: list[Any] = []
        try:
            cache.close(timeout=FORK_CLOSE_TIMEOUT)
        except FlushError as exc:
            # Where its threads are, for the report (a writer stuck on a lock the fork inherited?).
            faulthandler.dump_traceback(stacks)
            stacks.flush()
            with open(stacks.name) as f:
                where = f.read()[-2500:]
            problems.append(
                f"close() could not write the child's keys with no fault active (reported, not "
                f"lost): {exc}"[:500]
                + f"; its stacks:\n{where}"
            )
            reported += [
                key
                for key in exc.result.failed_keys + exc.result.poisoned_keys
                if isinstance(key, str)
            ]
        for report in self.child_reports:
            if isinstance(report, str) and report in keys:  # on_write_error named one of its keys
                reported.append(report)
            problems.append(f"reported {report!r}"[:300])
        return {"ops": ops, "acked": acked, "reported": reported, "violations": problems}

    # ----------------------------------------------------------- the run
    def execute(self) -> Outcome:
        started = time.monotonic()
        capture = _Capture(self)
        logger = logging.getLogger("lazycache")
        logger.addHandler(capture)
        try:
            self._execute()
        except Exception:
            self.violation("harness", traceback.format_exc()[-1500:])
        finally:
            logger.removeHandler(capture)
            self.outcome.duration = time.monotonic() - started
        self.attribute_consequences()
        return self.outcome

    def attribute_consequences(self) -> None:
        """A hostile key that broke the writer (3), or an oversized value it retries forever (6),
        leaves other keys in flight or stuck behind it: in such a run, the violations on other
        keys are most likely consequences of that regression, and say so. (Runs without those
        faults show the rest.)"""
        for defect in (3, 6):
            if defect in self.outcome.defects:
                for violation in self.outcome.violations:
                    # Stuck entries count as pending, but the limit holds for them too.
                    if violation.defect is None and violation.kind != "max-pending":
                        violation.defect = defect
                        violation.message += (
                            f" [likely a consequence of the defect {defect} regression in this run]"
                        )
                return

    def _execute(self) -> None:
        self.env = env = open_env(self.scenario.store, self.scenario.mode, self.tmpdir)
        try:
            self.model = Model(env.same)
            self.cache = self.open_cache()
            workers = [
                threading.Thread(
                    target=self._guard(self.worker, f"worker {t}"), args=(t,), daemon=True
                )
                for t in range(self.threads)
            ]
            monitor = threading.Thread(target=self._guard(self.monitor, "monitor"), daemon=True)
            nemesis = threading.Thread(target=self._guard(self.nemesis, "nemesis"), daemon=True)
            for thread in (*workers, monitor, nemesis):
                thread.start()
            deadline = time.monotonic() + HANG_TIMEOUT
            for thread in workers:
                thread.join(max(0.0, deadline - time.monotonic()))
            hung = [thread for thread in workers if thread.is_alive()]
            self.stop.set()
            nemesis.join(HANG_TIMEOUT)
            monitor.join(HANG_TIMEOUT)
            if hung or nemesis.is_alive():
                self.violation("hung", f"threads still running after {HANG_TIMEOUT}s:\n{_stacks()}")
                return  # the cache may be wedged: checking the store now would only add noise
            self.heal()
            self.finish()
        finally:
            env.close()

    def _guard(self, target: Callable[..., None], name: str) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                target(*args)
            except Exception:
                self.violation("harness", f"{name}: {traceback.format_exc()[-1500:]}")
                self.stop.set()

        return run

    def finish(self) -> None:
        assert self.model is not None and self.env is not None
        cache = self.cache
        model = self.model
        try:
            cache.flush(timeout=self.scenario.heal_timeout)
        except FlushError as exc:
            self.check_flush_result(exc.result, True, [], "final flush")
            if exc.result.failed_keys:
                stuck = list(exc.result.failed_keys)[:10]
                self.violation(
                    "stuck",
                    f"{len(exc.result.failed_keys)} keys still pending {self.scenario.heal_timeout}s after the faults healed: {stuck!r}; {exc}"[
                        :600
                    ],
                )
        if self.maxsize is not None:
            deadline = time.monotonic() + PRUNE_GRACE
            while len(cache) > self.maxsize + cache.pending and time.monotonic() < deadline:
                time.sleep(0.01)
            self.count("checks")
            if len(cache) > self.maxsize + cache.pending:
                self.violation(
                    "size",
                    f"{PRUNE_GRACE}s after the last write, len={len(cache)} > maxsize {self.maxsize} + pending {cache.pending}",
                )
        self.count("checks")
        if not cache._writer.alive or not cache._pruner.alive:
            self.violation(
                "thread-dead", "at the end, the writer or pruner thread of the open cache is dead"
            )
        try:
            cache.close(timeout=self.scenario.heal_timeout)
        except FlushError as exc:
            self.check_flush_result(exc.result, True, [], "final close")
        if self.slow is not None:
            self.slow.close()
        # The store against the model, key by key.
        keys = list(model.keys) + list(model.counters)
        stored: dict[Any, Any] = {}
        for start in range(0, len(keys), 500):
            stored.update(self.env.oracle.load_many(keys[start : start + 500]))
        for key in keys:
            self.count("checks")
            observed = stored.get(key, ABSENT)
            if key in model.counters:
                observed = ABSENT if observed is ABSENT else self.counter_of(observed)
            problem = model.check(key, observed)
            if problem is None:
                continue
            if self.logged(key, model.expected(key).at):
                continue
            self.violation("store", problem, key)
        with self.lock:
            unreported = [key for key in self.hostile_acked if id(key) not in self.hostile_reported]
        for key in unreported:
            self.count("checks")
            if not self.logged(key, 0):
                self.violation(
                    "unreported",
                    f"the acknowledged write of {key!r} (no store can take it) was never reported",
                    defect=3,
                )


def _same(same: Callable[[Any, Any], bool], observed: Any, expected: Any) -> bool:
    try:
        return bool(same(observed, expected))
    except Exception:
        return False


def _stacks() -> str:
    frames = sys._current_frames()
    out = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or 0)
        if frame is not None:
            out.append(f"--- {thread.name}\n" + "".join(traceback.format_stack(frame)[-6:]))
    return "\n".join(out)[-6000:]


def run_scenario(scenario: Scenario, seed: int, tmpdir: str) -> Outcome:
    """Runs one scenario with one seed; the outcome holds the counts and any violations."""
    if scenario.crash:
        from .crash import run_crash

        return run_crash(scenario, seed, tmpdir)
    return Run(scenario, seed, tmpdir).execute()
