"""Each part logs on its own child of the `lazycache` logger, with keys and counts in `extra`."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from helpers import FailingStore, LocalCoherence

from lazycache import FlushError


@pytest.fixture
def logs(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG for every lazycache logger; no message of theirs starts with "lazycache"."""
    caplog.set_level(logging.DEBUG, logger="lazycache")
    yield caplog
    for record in caplog.get_records("call"):
        assert not record.getMessage().startswith("lazycache"), record.getMessage()


def test_a_failed_write_is_logged_by_lazycache_writer_with_its_keys(make_cache, logs) -> None:
    store = FailingStore()
    cache = make_cache(store, quiet=True, close_may_fail=True)
    store.fail = True
    cache.update({"k1": 1, "k2": 2})
    with pytest.raises(FlushError):
        cache.flush()
    [record] = [r for r in logs.records if r.levelno == logging.WARNING]
    assert record.name == "lazycache.writer"
    assert record.lazycache_keys == ["k1", "k2"] and record.lazycache_count == 2
    assert "'k1', 'k2'" in record.getMessage()
    store.fail = False


def test_coherence_and_journal_log_on_their_own_loggers(make_cache, logs, tmp_path) -> None:
    channel = LocalCoherence()
    make_cache(quiet=True, coherence=channel)
    channel.on_lost()
    channel.on_restored()
    coherence = [r for r in logs.records if r.name == "lazycache.coherence"]
    assert [r.levelno for r in coherence] == [logging.WARNING, logging.WARNING]
    assert "down" in coherence[0].getMessage() and "back" in coherence[1].getMessage()

    store = FailingStore()
    journal = str(tmp_path / "journal")
    first = make_cache(store, journal=journal, write_interval=3600)
    first.update({"j1": 1, "j2": 2})
    first.close(flush=False)  # unwritten: left in the journal for the next process
    make_cache(store, journal=journal, write_interval=3600)
    [replayed] = [r for r in logs.records if r.name == "lazycache.journal"]
    assert "replayed 2 journaled writes" in replayed.getMessage()
    assert replayed.lazycache_count == 2


def test_the_writers_logger_can_be_silenced_alone(make_cache, logs) -> None:
    store = FailingStore()
    channel = LocalCoherence()
    cache = make_cache(store, quiet=True, close_may_fail=True, coherence=channel)
    writer = logging.getLogger("lazycache.writer")
    writer.setLevel(logging.CRITICAL)
    try:
        store.fail = True
        cache["k"] = 1
        with pytest.raises(FlushError):
            cache.flush()
        channel.on_lost()
    finally:
        writer.setLevel(logging.NOTSET)
        store.fail = False
    assert [r.name for r in logs.records] == ["lazycache.coherence"]
