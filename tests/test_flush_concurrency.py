"""A flush that runs while another one writes: what each may claim.

`FlushResult.ok` promises that everything pending at the call reached the store. A flush
that waits for the writer's lock while the writer thread (or another caller) flushes finds
nothing left to write once it gets the lock: it must still report what that other flush
rejected meanwhile, and never return ok for it.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import TIMEOUT, BlockingStore, RejectingStore, wait_until

from lazycache import FlushError, FlushResult


class HeldRejectingStore(BlockingStore, RejectingStore):
    """A RejectingStore whose next write, after `hold()`, signals `entered` and waits for `release`."""


def flushes_running(cache: Any) -> int:
    """How many flushes are between their call and their return (each watches for rejections)."""
    return len(cache._batch_writer._watchers)


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["no-timeout", "timeout"])
def test_a_flush_reports_a_key_the_writer_thread_rejected_while_it_waited(
    make_cache: Any, timeout: float | None
) -> None:
    store = HeldRejectingStore()
    store.poison = {"bad"}
    rejected: list[Any] = []
    cache = make_cache(store, on_write_error=lambda key, value, exc: rejected.append(key))
    store.hold()
    cache["bad"] = 1  # the writer thread takes it, and its write waits for the release
    assert store.entered.wait(TIMEOUT), "the writer thread never wrote"
    assert cache.pending == 1

    outcome: list[Any] = []

    def flush() -> None:
        try:
            outcome.append(cache.flush(timeout=timeout))
        except FlushError as exc:
            outcome.append(exc)

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    # The explicit flush is called ("bad" is pending then), and waits for the writer's lock.
    wait_until(lambda: flushes_running(cache) >= 2, message="the explicit flush never started")
    store.release.set()
    flusher.join(TIMEOUT)
    assert not flusher.is_alive()
    assert rejected == ["bad"]  # the writer thread's flush rejected it
    (result,) = outcome
    assert isinstance(result, FlushError), f"flush claimed success: {result!r}"
    assert result.result.poisoned_keys == ("bad",)
    assert not result.result.ok
    assert cache.pending == 0


def test_a_flush_that_runs_alone_reports_only_its_own_rejections(make_cache: Any) -> None:
    store = RejectingStore(poison={"bad"})
    cache = make_cache(store, quiet=True, on_write_error=lambda key, value, exc: None)
    cache["bad"] = 1
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.poisoned_keys == ("bad",)
    cache["good"] = 2
    result: FlushResult = cache.flush()  # an earlier rejection is not this flush's
    assert result.ok and result.written == 1


def test_a_key_written_after_its_rejection_leaves_write_errors_before_it_stops_pending(
    cache_cls: type,
) -> None:
    """Whoever sees the key no longer pending (its corrected value written) must not find it
    still listed in write_errors: the list is cleared before the commit, not after."""
    store = RejectingStore()
    store.poison_values = {"bad"}
    seen: list[tuple[bool, bool, Any]] = []

    class Watched(cache_cls):  # type: ignore[misc,valid-type]
        def _commit(self, batch: Any) -> None:
            super()._commit(batch)
            if any(key == "a" for key, _, _, _ in batch):
                seen.append((self._is_pending("a"), "a" in self.write_errors, store.data.get("a")))

    cache: Any = None

    def repair(key: Any, value: Any, exc: BaseException) -> None:
        cache[key] = "repaired"

    cache = Watched(store, on_write_error=repair, write_interval=0.01)
    try:
        cache["a"] = "bad"
        cache["b"] = "ok"
        wait_until(lambda: store.data == {"a": "repaired", "b": "ok"} and cache.pending == 0)
        assert cache.write_errors == {}
    finally:
        cache.close()
    written = [record for record in seen if record[2] == "repaired" and not record[0]]
    assert written, f"the corrected value's commit was not seen: {seen!r}"
    assert not any(listed for _, listed, _ in written), seen
