"""How the sections time: the garbage collector off, generated loops, the best of several runs."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any, Callable, ClassVar, TypeVar, cast

T = TypeVar("T")


def without_gc(run: Callable[[], T]) -> T:
    """Runs `run` with the garbage collector off (on again afterwards if it was on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run()
    finally:
        if was_enabled:
            gc.enable()


def timed(run: Callable[[], object]) -> float:
    """Seconds `run` takes, with the garbage collector off."""

    def clocked() -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    return without_gc(clocked)


# ----------------------------------------------------------------------------- generated loops

Loop = Callable[[Any, Sequence[Any]], int]

_LOOP_SOURCE = """\
def loop(c, keys, clock=clock):
    {prologue}
    start = clock()
    for {target} in keys:
{body}
    return clock() - start
"""


def compile_loop(body: str, prologue: str = "pass", target: str = "k") -> Loop:
    """A function `loop(c, keys)` that runs `body` for each `target` in keys and returns the elapsed ns.

    Generated rather than written with a callback so that nothing but `body` and the
    bare `for` sits inside the timed region. `body` may span several lines.
    """
    namespace: dict[str, Any] = {"clock": time.perf_counter_ns}
    indented = "\n".join(" " * 8 + line for line in body.splitlines())
    source = _LOOP_SOURCE.format(prologue=prologue, target=target, body=indented)
    exec(compile(source, f"<lazycache bench: {' '.join(body.split())}>", "exec"), namespace)
    return cast(Loop, namespace["loop"])


GET_ITEM = compile_loop("c[k]")
SET_ITEM = compile_loop("c[k] = 1")


# ----------------------------------------------------------------------------- repeated runs


def best_of(samples: Sequence[float], higher_is_better: bool = False) -> float:
    """The best of the runs: the least (a time) or, if `higher_is_better`, the most (a rate)."""
    return max(samples) if higher_is_better else min(samples)


def spread_of(samples: Sequence[float], higher_is_better: bool = False) -> float:
    """(max - min) / best of the runs, in percent."""
    best = best_of(samples, higher_is_better)
    return (max(samples) - min(samples)) / best * 100 if best else 0.0


class Runs:
    """A figure measured several times: its `samples` (one per run) give the best and the spread."""

    samples: list[float]
    higher_is_better: ClassVar[bool] = False
    """False: the samples are times (the least is best); True: rates (the most is best)."""

    @property
    def best(self) -> float:
        return best_of(self.samples, self.higher_is_better)

    @property
    def spread(self) -> float:
        """(max - min) / best of the runs, in percent."""
        return spread_of(self.samples, self.higher_is_better)


def rotated(names: list[T], turn: int) -> list[T]:
    """Round-robin: each repeat starts with the next contender, so none is always first."""
    if not names:
        return names
    turn %= len(names)
    return names[turn:] + names[:turn]
