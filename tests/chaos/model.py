"""The model: what the store must hold, key by key, and what may excuse a difference.

Definitions (the checker applies exactly these):

- A write is *acknowledged* when its call returned without raising (`cache[k] = v`,
  `del cache[k]`, `discard`, `update_entry`). The model keeps, per key, the value of the last
  acknowledged write (ABSENT after a delete).
- A call that raised is *indeterminate*: its change may or may not have happened. Its value is
  added to the key's `maybe` list, which the next acknowledged write of the key clears. (This is
  stricter than exempting the key: the exception names the new value, not a licence to lose the
  previous one.)
- A key is *reported* when, after its last acknowledged write, the cache named it: the
  `on_write_error` callback with that very value, a `FlushError`'s `poisoned_keys` or a log line
  at ERROR naming it. The next acknowledged write of
  the key clears it. A reported key is exempt: the store may hold anything for it.
- Otherwise the store must hold the last acknowledged value, or one of the `maybe` values.
- Counters (keys all threads increment with `update_entry(k, v + 1)`): the store holds the
  number of acknowledged increments, plus at most the number of indeterminate ones.
"""

from __future__ import annotations

import copy
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"

    def __reduce__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""The model's value of a key that is not in the store."""


@dataclass
class KeyState:
    original: Any = ABSENT
    """The object the last acknowledged write passed (identity tells on_write_error's value)."""
    value: Any = ABSENT
    """A deep copy of it, as it was when acknowledged (row mode merges fields into the original)."""
    maybe: list[Any] = field(default_factory=list)
    reported: str = ""
    """Why the key is exempt ("" if not)."""
    at: int = 0
    """When the last acknowledged write happened, on the model's clock (see Model.tick)."""


@dataclass
class CounterState:
    acked: int = 0
    maybe: int = 0
    reported: str = ""


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


class Model:
    """Per-key last acknowledged write, indeterminate writes and reports; thread-safe."""

    def __init__(self, same: Callable[[Any, Any], bool]) -> None:
        self.same = same
        """same(observed, expected): whether what the store (or the cache) gave matches the model."""
        self.keys: dict[Any, KeyState] = {}
        self.counters: dict[Any, CounterState] = {}
        self.lock = threading.Lock()
        self._clock = itertools.count(1)

    def tick(self) -> int:
        """The model's clock: orders acknowledgements and reports (a log line after a write names its loss)."""
        return next(self._clock)

    # ----------------------------------------------------------- events
    def acked(self, key: Any, value: Any) -> None:
        with self.lock:
            self.keys[key] = KeyState(value, _copy(value), at=self.tick())

    def raised(self, key: Any, value: Any) -> None:
        with self.lock:
            state = self.keys.setdefault(key, KeyState())
            state.maybe.append(_copy(value))

    def counter_acked(self, key: Any) -> None:
        with self.lock:
            self.counters.setdefault(key, CounterState()).acked += 1

    def counter_raised(self, key: Any) -> None:
        with self.lock:
            self.counters.setdefault(key, CounterState()).maybe += 1

    def reported_value(self, key: Any, value: Any, why: str) -> bool:
        """on_write_error(key, value): exempts key if value is its last acknowledged one."""
        with self.lock:
            state = self.keys.get(key)
            if state is not None:
                if value is state.original or _equal(value, state.value, self.same):
                    state.reported = why
                    return True
                return False
            counter = self.counters.get(key)
            if counter is not None:
                counter.reported = why
                return True
        return False

    def reported_key(self, key: Any, why: str) -> None:
        """A report without a value (an exception, a log line): exempts key until its next write."""
        with self.lock:
            state = self.keys.get(key)
            if state is not None:
                state.reported = why
            counter = self.counters.get(key)
            if counter is not None:
                counter.reported = why

    # ----------------------------------------------------------- checks
    def is_exempt(self, key: Any) -> bool:
        with self.lock:
            state = self.keys.get(key) or self.counters.get(key)
            return bool(state and state.reported)

    def expected(self, key: Any) -> KeyState:
        with self.lock:
            state = self.keys.get(key)
            if state is None:
                return KeyState()
            return KeyState(
                state.original, state.value, list(state.maybe), state.reported, state.at
            )

    def check(self, key: Any, observed: Any) -> str | None:
        """None if `observed` (ABSENT if not there) is allowed for key, else what is wrong."""
        with self.lock:
            counter = self.counters.get(key)
            if counter is not None:
                if counter.reported:
                    return None
                low, high = counter.acked, counter.acked + counter.maybe
                count = 0 if observed is ABSENT else observed
                if not isinstance(count, int) or not low <= count <= high:
                    return f"counter {key!r} is {observed!r}; {low} increments acknowledged, {counter.maybe} indeterminate"
                return None
            state = self.keys.get(key, KeyState())
            if state.reported:
                return None
            if observed is state.original and observed is not ABSENT:
                return None  # the very object acknowledged (what the cache hands back)
            for allowed in [state.value, *state.maybe]:
                if _equal(observed, allowed, self.same):
                    return None
            maybe = f" (or one of {state.maybe!r})" if state.maybe else ""
            return f"{key!r} is {_short(observed)}, the last acknowledged write is {_short(state.value)}{maybe}"


def _equal(observed: Any, expected: Any, same: Callable[[Any, Any], bool]) -> bool:
    if observed is ABSENT or expected is ABSENT:
        return observed is expected
    try:
        return bool(same(observed, expected))
    except Exception:
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + f"... ({len(text)} chars)"
