"""The keys every contender is measured on: one ``Workload`` per size, built once and shared."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field

ZIPF_S = 1.1
"""Exponent of the mixed workload's Zipf distribution: key of rank r drawn with probability ∝ 1/r^s."""

MIXED_SET_FRACTION = 0.1
"""Share of sets in the mixed workload; the rest are gets."""


def zipf_ranks(n: int, population: int, s: float, rng: random.Random) -> list[int]:
    """n ranks in [0, population), rank r drawn with probability proportional to 1 / (r + 1) ** s."""
    cumulative = list(itertools.accumulate((r + 1) ** -s for r in range(population)))
    total = cumulative[-1]
    draw, pick = rng.random, bisect.bisect_left
    last = population - 1
    return [min(pick(cumulative, draw() * total), last) for _ in range(n)]


@dataclass
class Workload:
    """The keys of one size: built once, shared by every contender."""

    size: int
    keys: list[str]
    """The keys inserted when a structure is filled, in insertion order."""
    shuffled: list[str]
    """The same keys in random order: the loops over present keys walk this."""
    absent: list[str]
    """`size` keys never inserted, in random order."""
    seed: int = 0
    _mixed: list[tuple[str, bool]] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, size: int, seed: int = 0) -> Workload:
        rng = random.Random(seed)
        keys = [f"key:{i}" for i in range(size)]
        absent = [f"key:{i}" for i in range(size, 2 * size)]
        shuffled = keys[:]
        rng.shuffle(shuffled)
        rng.shuffle(absent)
        for key in keys + absent:
            hash(key)  # str caches its hash: no contender pays for computing it
        return cls(size, keys, shuffled, absent, seed)

    @property
    def mixed(self) -> list[tuple[str, bool]]:
        """`size` operations (key, is_set): 90% gets, 10% sets, keys Zipf-distributed; built on first use.

        Rank r is the key `shuffled[r]`, so the hot keys are spread over the structure.
        """
        if self._mixed is None:
            rng = random.Random(self.seed + 1)
            ranks = zipf_ranks(self.size, self.size, ZIPF_S, rng)
            draw = rng.random
            self._mixed = [(self.shuffled[r], draw() < MIXED_SET_FRACTION) for r in ranks]
        return self._mixed
