"""pytest-benchmark suite of the hot paths: get-hit, set-existing and set-new, dict vs both lazycache cores.

    pip install pytest-benchmark
    PYTHONPATH=src pytest benchmarks/ --benchmark-only

One benchmarked call is one pass over SIZE keys (recorded as `ops_per_call` in
extra_info), so divide the reported times by SIZE for a time per operation.
`lazycache bench` measures more operations and caches and prints ns/op directly.
This directory is not part of `make test`, which runs tests/ only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

pytest.importorskip("pytest_benchmark")

from lazycache.bench.kit.contenders import CONTENDERS, Contender, Unavailable
from lazycache.bench.kit.workload import Workload

SIZE = 20_000
SET_NEW_ROUNDS = 20

CONTENDER_IDS = {
    "dict": "dict",
    "lazycache (cython)": "lazycache-cython",
    "lazycache (python)": "lazycache-python",
}


def get_all(cache: Any, keys: Sequence[str]) -> None:
    for k in keys:
        cache[k]


def set_all(cache: Any, keys: Sequence[str]) -> None:
    for k in keys:
        cache[k] = 1


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload.build(SIZE)


@pytest.fixture(params=list(CONTENDER_IDS), ids=list(CONTENDER_IDS.values()))
def contender(request: pytest.FixtureRequest) -> Contender:
    try:
        return CONTENDERS[request.param]()
    except Unavailable as exc:
        pytest.skip(f"{request.param}: {exc}")


@pytest.fixture
def structures(contender: Contender) -> Iterator[list[Any]]:
    """Structures a test builds; each is closed when the test ends."""
    built: list[Any] = []
    yield built
    for structure in built:
        contender.close(structure)


def _filled(contender: Contender, structures: list[Any], keys: Sequence[str], **kwargs: Any) -> Any:
    structure = contender.filled(keys, **kwargs)
    structures.append(structure)
    return structure


def test_get_hit(
    benchmark: Any, contender: Contender, structures: list[Any], workload: Workload
) -> None:
    benchmark.group = "get-hit"
    benchmark.extra_info["ops_per_call"] = SIZE
    cache = _filled(contender, structures, workload.keys)
    benchmark(get_all, cache, workload.shuffled)


def test_set_existing(
    benchmark: Any, contender: Contender, structures: list[Any], workload: Workload
) -> None:
    benchmark.group = "set-existing"
    benchmark.extra_info["ops_per_call"] = SIZE
    cache = _filled(contender, structures, workload.keys)
    benchmark(set_all, cache, workload.shuffled)


def test_set_new(
    benchmark: Any, contender: Contender, structures: list[Any], workload: Workload
) -> None:
    """Inserts SIZE new keys into a full, clean cache of maxsize=SIZE: a fresh one every round."""
    benchmark.group = "set-new"
    benchmark.extra_info["ops_per_call"] = SIZE

    def fresh() -> tuple[tuple[Any, Sequence[str]], dict]:
        # The last round's cache: closing it waits for its pruner, so none runs meanwhile.
        while structures:
            contender.close(structures.pop())
        cache = _filled(contender, structures, workload.keys, maxsize=SIZE, clean=True)
        return (cache, workload.absent), {}

    benchmark.pedantic(set_all, setup=fresh, rounds=SET_NEW_ROUNDS)
