"""A fixed set of chaos runs (seeds that replay the same schedule of operations and faults).

Each run is a scenario of runner.py: threads writing, reading, flushing, closing, reopening
and forking over a real store while the nemesis cuts, delays and resets its connections;
then the store is checked against the model of acknowledged writes. `make chaos` runs fresh
seeds for as long as you like; a failure there prints the seed and the command to replay it.

The last five runs each replay, with the faults that showed it, a defect that this suite found
on the code before its fix (four of issue 12's, and forked children locked out of SQLite; they
failed there, at least now and then: the interleaving is the OS's; they must pass now).
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import require_implementation
from services import mariadb_url, postgres_url, redis_url

from .__main__ import replay_command
from .runner import DEFAULT_FAULTS, Scenario, run_scenario

REQUIRE = {"postgresql": postgres_url, "mariadb": mariadb_url, "redis": redis_url}


def case(scenario: Scenario, seed: int, *marks: Any) -> Any:
    return pytest.param(scenario, seed, marks=marks, id=f"{scenario.name}-{seed}")


# Every fault on every store: threads, close/reopen, fork, the nemesis and bad input.
SQL = DEFAULT_FAULTS
CASES = [
    # threads, close/reopen, fork and the nemesis, on every store and both cores
    case(Scenario("sqlite", "python", faults=SQL, ops=200), 6),
    case(Scenario("sqlite", "cython", faults=SQL, ops=200), 42),
    case(Scenario("postgresql", "python", faults=SQL, ops=200), 19),
    case(Scenario("postgresql", "cython", faults=SQL, ops=200), 47),
    case(Scenario("mariadb", "python", faults=SQL, ops=200), 42),
    case(Scenario("mariadb", "cython", faults=SQL, ops=200), 6),
    case(Scenario("redis", "python", ops=200), 10),
    case(Scenario("redis", "cython", ops=200), 28),
    # row mode: constraint violations, values that are no row, a server-generated column
    case(Scenario("postgresql", "python", "rows", SQL, ops=200), 6),
    case(Scenario("mariadb", "cython", "rows", SQL, ops=200), 19),
    # kill -9 of a writing process, with and without the journal
    case(Scenario("postgresql", "python", crash=True, journal=True), 1),
    case(Scenario("sqlite", "cython", crash=True), 2),
    case(Scenario("redis", "cython", crash=True, journal=True), 3),
    case(Scenario("mariadb", "python", crash=True), 4),
    # defects of issue 12 this suite found before their fixes, each with the fault that shows it
    case(Scenario("sqlite", "python", faults=(), ops=800), 70),
    case(Scenario("sqlite", "python", faults=("hostile",), ops=200), 5),
    case(
        Scenario("sqlite", "cython", faults=("unstable",), ops=200),
        5,
    ),
    case(
        Scenario("mariadb", "python", faults=("oversize",), ops=20, heal_timeout=3.0),
        5,
    ),
    # forked children over SQLite while the parent writes: one inherited a lock it could never
    # release (a child forked during the parent's transaction), and its close() timed out
    case(Scenario("sqlite", "python", faults=("fork", "slow", "reopen"), ops=800), 13),
]


@pytest.mark.parametrize(("scenario", "seed"), CASES)
def test_chaos_run_keeps_every_acknowledged_write(
    scenario: Scenario, seed: int, tmp_path: Any
) -> None:
    require_implementation(scenario.impl)
    if scenario.store in REQUIRE:
        REQUIRE[scenario.store]()
    outcome = run_scenario(scenario, seed, str(tmp_path))
    assert outcome.ok, f"{outcome.summary()}\nreplay: {replay_command(scenario, seed)}"
