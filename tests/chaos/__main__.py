"""`python -m chaos` (run with tests/ on the path; `make chaos` does): fresh seeds for N minutes, or one replay.

    make chaos MINUTES=10
    PYTHONPATH=tests .venv/bin/python -m chaos --minutes 10
    PYTHONPATH=tests .venv/bin/python -m chaos --seed 123 --store postgresql --mode kv --impl cython ...

Every failing run is printed with its seed and the one-line command that replays it; at the
end, the totals: runs, operations, faults injected per kind, invariant checks, violations.
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import sys
import tempfile
import time

from lazycache.cache import implementation_class

from .runner import ALL_FAULTS, DEFAULT_FAULTS, FIXED_DEFECTS, Outcome, Scenario, run_scenario
from .stores import STORES, wait_reachable


def resemblance(outcome: Outcome) -> str:
    """Which fixed defects of issue 12 the run's violations resemble (regressions?), if any."""
    if not outcome.defects:
        return "none (a new finding)"
    return ", ".join(f"{n} ({FIXED_DEFECTS[n]})" for n in sorted(outcome.defects)) + (
        ": fixed, so a regression?"
    )


def replay_command(scenario: Scenario, seed: int) -> str:
    return f"PYTHONPATH=tests .venv/bin/python -m chaos {scenario.replay_args(seed)}"


def random_scenario(rng: random.Random, impls: list[str], stores: list[str]) -> Scenario:
    """A scenario; half of them leave out the bad-input faults (hostile keys, oversized and unstable
    values) and in-doubt commits."""
    store = rng.choice(stores)
    impl = rng.choice(impls)
    crash = rng.random() < 0.2
    mode = "rows" if store != "redis" and not crash and rng.random() < 0.3 else "kv"
    journal = rng.random() < (0.5 if crash else 0.2)
    faults = ALL_FAULTS if rng.random() < 0.5 else DEFAULT_FAULTS
    return Scenario(
        store, impl, mode, faults, journal=journal, crash=crash, ops=rng.choice([200, 400, 800])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=None, help="run fresh seeds for this long")
    parser.add_argument(
        "--seed", type=int, default=None, help="replay one run (with the options below)"
    )
    parser.add_argument("--store", choices=STORES, default="sqlite")
    parser.add_argument("--mode", choices=("kv", "rows"), default="kv")
    parser.add_argument("--impl", choices=("python", "cython"), default="python")
    parser.add_argument("--faults", default=",".join(ALL_FAULTS))
    parser.add_argument("--journal", action="store_true")
    parser.add_argument("--crash", action="store_true")
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--heal-timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    # SQLAlchemy logs every connection the nemesis broke ("Exception during reset"): not ours to check.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)

    totals: collections.Counter = collections.Counter()
    failures: list[Outcome] = []
    runs = 0

    def record(outcome: Outcome) -> None:
        nonlocal runs
        runs += 1
        totals.update(outcome.counts)
        totals["violations"] += len(outcome.violations)
        for violation in outcome.violations:
            totals[f"violations:{violation.kind}"] += 1
        if not outcome.ok:
            failures.append(outcome)
            print(f"FAIL {outcome.summary()}", flush=True)
            print(f"  resembles fixed defects: {resemblance(outcome)}")
            print(f"  replay: {replay_command(outcome.scenario, outcome.seed)}", flush=True)
        else:
            print(
                f"ok   {outcome.scenario.name} seed={outcome.seed} ({outcome.duration:.1f}s)",
                flush=True,
            )

    if args.seed is not None:
        faults = tuple(kind for kind in args.faults.split(",") if kind)
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown:
            parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(ALL_FAULTS)}")
        scenario = Scenario(
            args.store,
            args.impl,
            args.mode,
            faults,
            args.journal,
            args.crash,
            args.ops,
            args.heal_timeout,
        )
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmpdir:
            record(run_scenario(scenario, args.seed, tmpdir))
    else:
        minutes = 1.0 if args.minutes is None else args.minutes
        impls = ["python"]
        try:
            implementation_class("cython")
            impls.append("cython")
        except ValueError:
            print("the compiled core is not available: pure Python only")
        stores = []
        for kind in STORES:
            reason = wait_reachable(kind, timeout=1.0)
            if reason:
                print(f"skipping {kind}: {reason}")
            else:
                stores.append(kind)
        pick = random.SystemRandom()
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            scenario = random_scenario(random.Random(pick.randrange(2**63)), impls, stores)
            seed = pick.randrange(2**31)
            with tempfile.TemporaryDirectory(prefix="chaos-") as tmpdir:
                record(run_scenario(scenario, seed, tmpdir))

    operations = sum(n for what, n in totals.items() if what.startswith("ops:"))
    faults = {what[7:]: n for what, n in sorted(totals.items()) if what.startswith("faults:")}
    violations = {
        what[11:]: n for what, n in sorted(totals.items()) if what.startswith("violations:")
    }
    print()
    print(f"runs: {runs}, failed: {len(failures)}")
    print(f"operations: {operations}")
    print(f"faults injected: {sum(faults.values())} {faults}")
    print(f"invariant checks: {totals['checks']}")
    print(f"violations: {totals['violations']} {violations}")
    for outcome in failures:
        first = outcome.violations[0]
        print(f"  {outcome.scenario.name} seed={outcome.seed}: {first!s:.200}")
        print(
            f"    resembles fixed defects: {resemblance(outcome)}; "
            f"replay: {replay_command(outcome.scenario, outcome.seed)}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
