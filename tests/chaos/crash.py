"""kill -9 of a writing process, with and without the journal.

A child process (this module run as a script) writes to its cache and prints, for every
operation, a line before it (`B i key value`) and one after it returns (`A i`): a write is
acknowledged once its `A` line is read. Before each explicit flush it prints `F i` (every
operation below i was acknowledged before the flush began) and `K i` once the flush returned
ok. The parent injects faults on the child's connection (through the proxy) and kills it with
SIGKILL after a random number of acknowledgements.

The model, per key:

- With the journal: nothing acknowledged is lost. After a new cache opens the journal (it
  replays it) and closes, the store holds the last acknowledged value, or the value of the
  operation in progress at the kill (begun, not acknowledged: either is allowed).
- Without the journal: only what was pending can be lost. Let F be the last flush that
  returned ok (`K`), begun after operation i. The store holds the key's value as of i, or the
  value of any operation on it from i on (acknowledged or in progress): never a value older
  than the last successful flush, never one nobody wrote. Before any `K`, i = 0 (empty).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .model import ABSENT
from .runner import Outcome, Scenario, Violation
from .stores import open_env

TESTS = str(Path(__file__).resolve().parents[1])
KEYS = 40


def child_main(argv: list[str]) -> None:
    from lazycache import FlushError
    from lazycache.cache import implementation_class

    from .stores import child_store

    args = json.loads(argv[0])
    rng = random.Random(args["seed"])
    cls = implementation_class(args["impl"])
    options: dict[str, Any] = {
        "write_interval": rng.choice([0.005, 0.05, 0.5]),
        "batch_size": rng.choice([1, 16, 1000]),
        "retry_initial": 0.01,
        "retry_max": 0.1,
        "on_write_error": lambda key, value, exc: print(f"R {key}", flush=True),
    }
    if args["journal"]:
        options["journal"] = args["journal"]
        options["journal_fsync"] = rng.choice(["no", "everysec", "always"])
    cache = cls(child_store(args["spec"]), **options)
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    i = 0
    while True:
        if rng.random() < 0.03:
            out.write(f"F {i}\n")
            out.flush()
            try:
                cache.flush()
            except FlushError:
                pass
            else:
                out.write(f"K {i}\n")
                out.flush()
        # A pause now and then, so that the nemesis's faults meet pending writes.
        if rng.random() < 0.05:
            time.sleep(0.005)
        key = f"k{rng.randrange(KEYS)}"
        if rng.random() < 0.8:
            value = {"w": i, "p": rng.randint(0, 10**6)}
            out.write(f"B {i} {key} {json.dumps(value)}\n")
            out.flush()
            cache[key] = value
        else:
            out.write(f"B {i} {key} null\n")
            out.flush()
            cache.discard(key)
        out.write(f"A {i}\n")
        out.flush()
        i += 1


def run_crash(scenario: Scenario, seed: int, tmpdir: str) -> Outcome:
    """Starts the writing child, injects faults, kills it with SIGKILL, and checks the store."""
    outcome = Outcome(scenario, seed)
    started = time.monotonic()
    rng = random.Random(f"{seed}-crash")
    env = open_env(scenario.store, "kv", tmpdir)
    journal = os.path.join(tmpdir, f"crash-journal-{seed}") if scenario.journal else None
    kill_after = rng.randint(20, 1500)
    outcome.config = {"kill_after_acks": kill_after, "journal": bool(journal)}
    counts = outcome.counts
    try:
        args = {"seed": seed, "impl": scenario.impl, "spec": env.child_spec, "journal": journal}
        environ = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
        child = subprocess.Popen(
            [sys.executable, "-m", "chaos.crash", json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
        )
        stop = threading.Event()
        nemesis = threading.Thread(target=_nemesis, args=(env, rng, stop, counts), daemon=True)
        lines, died = _read_until(child, kill_after, nemesis)
        stop.set()
        nemesis.join()
        if env.proxy is not None:
            env.proxy.heal()
        if died:
            stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
            outcome.violations.append(
                Violation("crash", f"the writing child died on its own: {stderr[-1500:]}")
            )
            return outcome
        counts["faults:kill-9"] += 1
        # Reopen: with the journal, a new cache replays what the dead one acknowledged.
        if journal is not None:
            from lazycache import FlushError
            from lazycache.cache import implementation_class

            cache = implementation_class(scenario.impl)(
                env.make_store(), journal=journal, owns_store=True
            )
            try:
                cache.close(timeout=30)
            except FlushError as exc:
                outcome.violations.append(
                    Violation("crash", f"closing the reopened journaled cache failed: {exc}")
                )
        _check(env, lines, journal is not None, outcome)
    finally:
        env.close()
        outcome.duration = time.monotonic() - started
    return outcome


def _read_until(
    child: subprocess.Popen, acks: int, nemesis: threading.Thread
) -> tuple[list[str], bool]:
    """The child's complete lines until `acks` acknowledgements; then SIGKILL. (lines, died on its own)."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    buffer = b""
    lines: list[str] = []
    seen = 0
    deadline = time.monotonic() + 60
    died = False
    while seen < acks and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            died = True
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode()
            lines.append(line)
            if line == "READY" and not nemesis.is_alive():
                nemesis.start()
            if line.startswith("A "):
                seen += 1
    child.send_signal(signal.SIGKILL)
    child.wait()
    # What was printed before the kill: complete lines only (a torn last line was never read as one).
    rest = child.stdout.read()
    buffer += rest
    *complete, _torn = buffer.split(b"\n")
    lines += [raw.decode() for raw in complete]
    return lines, died


def _nemesis(env: Any, rng: random.Random, stop: threading.Event, counts: Any) -> None:
    proxy = env.proxy
    while not stop.wait(rng.uniform(0.01, 0.2)):
        duration = rng.uniform(0.05, 0.5)
        if proxy is None:
            counts["faults:lock"] += 1
            env.hold_sqlite_lock(duration, stop)
            continue
        kind = rng.choice(["cut", "delay", "reset"])
        counts[f"faults:{kind}"] += 1
        if kind == "cut":
            proxy.cut()
            stop.wait(duration)
            proxy.restore()
        elif kind == "delay":
            proxy.delay = rng.uniform(0.001, 0.02)
            stop.wait(duration)
            proxy.delay = 0.0
        else:
            proxy.reset()


def _check(env: Any, lines: list[str], journaled: bool, outcome: Outcome) -> None:
    ops: list[tuple[str, Any]] = []  # by operation index: (key, value or ABSENT)
    acked = 0
    cut = 0  # the operation index the last successful flush covers
    flush_begun: int | None = None
    reported: set[str] = set()
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "B":
            index, key, value = rest.split(" ", 2)
            assert int(index) == len(ops)
            ops.append((key, ABSENT if value == "null" else json.loads(value)))
        elif kind == "A":
            acked = int(rest) + 1
        elif kind == "F":
            flush_begun = int(rest)
        elif kind == "K":
            assert flush_begun == int(rest)
            cut = flush_begun
        elif kind == "R":
            reported.add(rest)
    in_progress = len(ops) > acked  # begun, not acknowledged
    outcome.counts["ops:crash-child"] += len(ops)
    keys = sorted({key for key, _ in ops})
    stored = env.oracle.load_many(keys)
    for key in keys:
        outcome.counts["checks"] += 1
        if key in reported:
            continue
        history = [(index, value) for index, (k, value) in enumerate(ops) if k == key]
        last_acked = ABSENT
        for index, value in history:
            if index < acked:
                last_acked = value
        if journaled:
            allowed = [last_acked]
        else:
            before = [value for index, value in history if index < cut]
            allowed = [before[-1] if before else ABSENT]
            allowed += [value for index, value in history if index >= cut and index < acked]
        if in_progress and ops[-1][0] == key:
            allowed.append(ops[-1][1])
        observed = stored.get(key, ABSENT)
        if not any(
            observed is value if value is ABSENT else observed == value for value in allowed
        ):
            what = (
                "the journal's model: the last acknowledged write"
                if journaled
                else (f"the values from the last successful flush (op {cut}) on")
            )
            outcome.violations.append(
                Violation(
                    "crash",
                    f"after kill -9, {key!r} is {observed!r}; allowed ({what}): {allowed[-5:]!r}",
                )
            )


if __name__ == "__main__":
    child_main(sys.argv[1:])
