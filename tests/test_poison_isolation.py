"""Poison isolation at scale, keys that turn hostile, and entries the store chokes on.

Issue 12: many bad values in one batch (isolation recursed, hit RecursionError and left
entries in flight for ever while later flushes reported success); a key whose hash, eq or
repr raises at flush time (it escaped flush() instead of being reported); a value that
makes the store drop the connection (recoverable: the whole batch was retried for ever, or
every good key of it poisoned after max_retries). Every test runs on both cores.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import FailingStore, wait_until
from proxy import CuttableProxy
from services import MARIADB_URL, mariadb_url

from lazycache import FlushError, MemoryStore, SerializationError
from lazycache.serializers import JSON
from lazycache.stores.sqlalchemy import SQLAlchemyStore, make_engine

FAST_RETRY = {"retry_initial": 0.01, "retry_max": 0.05}


def recorder():
    """An on_write_error that records (key, value, exception) calls."""
    calls = []

    def on_write_error(key, value, exc):
        calls.append((key, value, exc))

    on_write_error.calls = calls  # type: ignore[attr-defined]
    return on_write_error


class CountingSQLStore(SQLAlchemyStore):
    """A real SQLAlchemyStore that records the size of every write call, failed or not."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def write(self, upserts: Any, deletes: Any) -> Any:
        self.calls.append(len(upserts) + len(deletes))
        return super().write(upserts, deletes)


def rows(engine: Any, table: str) -> dict[str, Any]:
    with engine.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote(table)
        return {
            key: json.loads(value)
            for key, value in conn.exec_driver_sql(f"SELECT {quoted}.key, value FROM {quoted}")
        }


@pytest.fixture
def sqlite_store(tmp_path: Any) -> Iterator[CountingSQLStore]:
    store = CountingSQLStore(f"sqlite:///{tmp_path / 'poison.db'}", "lc")
    yield store
    store.close()


# ----------------------------------------------------------------- many bad values in a batch
def test_a_batch_of_a_thousand_unencodable_values_is_reported_whole_and_nothing_stays_pending(
    make_cache, sqlite_store
) -> None:
    errors = recorder()
    cache = make_cache(sqlite_store, quiet=True, on_write_error=errors)
    when = datetime.datetime(2026, 1, 1)
    with cache._batch_writer.lock:  # the writer thread, woken by a full batch, waits for us
        for i in range(1000):
            cache[f"k{i}"] = {"n": i, "at": when}  # JSON cannot encode a datetime
        with pytest.raises(FlushError) as info:
            cache.flush()
    result = info.value.result
    assert len(result.poisoned_keys) == 1000 and result.failed_keys == ()
    assert sorted(k for k, _, _ in errors.calls) == sorted(f"k{i}" for i in range(1000))
    assert all(isinstance(exc, SerializationError) for _, _, exc in errors.calls)
    assert cache.pending == 0 and len(cache.write_errors) == 1000
    assert len(sqlite_store.calls) <= 2  # the failing batch; nothing good is left to write
    assert cache["k7"] == {"n": 7, "at": when}  # still readable
    cache["k7"] = {"n": 7, "at": when.isoformat()}
    assert cache.flush().ok  # (a full batch wakes the writer thread: it may have written it)
    assert cache.pending == 0
    assert rows(sqlite_store.engine, "lc") == {"k7": {"n": 7, "at": "2026-01-01T00:00:00"}}
    assert "k7" not in cache.write_errors


def test_half_of_ten_thousand_values_unencodable_writes_the_other_half_two_calls_a_batch(
    make_cache, sqlite_store
) -> None:
    errors = recorder()
    cache = make_cache(sqlite_store, quiet=True, on_write_error=errors)
    good = {}
    with cache._batch_writer.lock:  # the writer thread, woken by a full batch, waits for us
        for i in range(10_000):
            if i % 2:
                cache[f"k{i}"] = datetime.date(2026, 1, 1 + i % 28)
            else:
                cache[f"k{i}"] = good[f"k{i}"] = i
        with pytest.raises(FlushError) as info:
            cache.flush()
    result = info.value.result
    assert (result.written, len(result.poisoned_keys), result.failed_keys) == (5000, 5000, ())
    assert len(errors.calls) == 5000 and cache.pending == 0
    assert rows(sqlite_store.engine, "lc") == good
    # Ten batches of 1,000: each fails once, then its 500 good values go in one call.
    assert len(sqlite_store.calls) == 20
    assert cache.close() is not None


class JsonMemoryStore(FailingStore):
    """Encodes every value with JSON before committing the batch (all or nothing), like a
    store of your own: a SerializationError names the first bad value, nothing more."""

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        self.write_calls.append((list(upserts), list(deletes)))
        encoded = [(key, JSON.encode(key, value)) for key, value in upserts]
        return MemoryStore.write(self, encoded, deletes)


class SerializerMemoryStore(JsonMemoryStore):
    """The same, telling which serializer it encodes with (as SQLAlchemyStore and RedisStore do)."""

    serializer = JSON


@pytest.mark.parametrize(
    "store_cls", [JsonMemoryStore, SerializerMemoryStore], ids=["no-serializer", "serializer"]
)
def test_six_hundred_bad_values_in_a_memory_store_batch_are_isolated_without_recursion(
    make_cache, store_cls
) -> None:
    errors = recorder()
    store = store_cls()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    bad = {f"k{i}" for i in range(1000) if i % 5 != 0}  # 800 of 1,000
    with cache._batch_writer.lock:  # the writer thread, woken by a full batch, waits for us
        for i in range(1000):
            cache[f"k{i}"] = {i} if f"k{i}" in bad else i  # a set is not JSON
        with pytest.raises(FlushError) as info:
            cache.flush()
    result = info.value.result
    assert set(result.poisoned_keys) == bad and len(result.poisoned_keys) == 800
    assert result.written == 200 and result.failed_keys == () and cache.pending == 0
    assert store.data == {f"k{i}": str(i) for i in range(0, 1000, 5)}
    assert {k for k, _, _ in errors.calls} == bad
    # A SerializationError names one key: one call per bad value, unless the store's
    # serializer lets the writer find every bad value of the batch at once.
    expected_calls = 2 if store_cls is SerializerMemoryStore else 801
    assert len(store.write_calls) == expected_calls


class InterruptedStore(FailingStore):
    """Raises KeyboardInterrupt (not an Exception) from its next write."""

    interrupt = True

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return super().write(upserts, deletes)


def test_an_interrupted_flush_puts_its_batch_back_and_a_later_flush_writes_it(make_cache) -> None:
    store = InterruptedStore()
    cache = make_cache(store, quiet=True)
    for i in range(10):
        cache[f"k{i}"] = i
    with pytest.raises(KeyboardInterrupt):
        cache.flush()
    assert cache.pending == 10
    result = cache.flush()
    assert result.ok and result.written == 10
    assert store.data == {f"k{i}": i for i in range(10)}


class BrokenClassifierStore(FailingStore):
    """A store of your own whose is_recoverable has a bug."""

    def is_recoverable(self, exc: BaseException) -> bool:
        raise AttributeError("is_recoverable is broken")


def test_a_store_whose_is_recoverable_raises_keeps_the_batch_pending(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")
    store = BrokenClassifierStore()
    store.fail = True
    cache = make_cache(store, quiet=True)
    for i in range(5):
        cache[f"k{i}"] = i
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert sorted(info.value.result.failed_keys) == [f"k{i}" for i in range(5)]
    assert info.value.result.poisoned_keys == () and cache.pending == 5
    assert any("is_recoverable raised" in r.getMessage() for r in caplog.records)
    store.fail = False
    assert cache.flush().written == 5
    assert store.data == {f"k{i}": i for i in range(5)}


# ----------------------------------------------------------------- keys that turn hostile
class HostileKey:
    """A key whose hash and eq work when it is inserted, and raise once `broken` is set
    (only its eq, if `only_eq`)."""

    def __init__(self, n: int, bad_repr: bool = False, only_eq: bool = False) -> None:
        self.n = n
        self.broken = False
        self.bad_repr = bad_repr
        self.only_eq = only_eq

    def __hash__(self) -> int:
        if self.broken and not self.only_eq:
            raise RuntimeError(f"the hash of key {self.n} is broken")
        return hash(("hostile", self.n))

    def __eq__(self, other: object) -> bool:
        if self.broken:
            raise RuntimeError(f"the eq of key {self.n} is broken")
        return isinstance(other, HostileKey) and other.n == self.n

    def __repr__(self) -> str:
        if self.bad_repr:
            raise RuntimeError("no repr either")
        return f"HostileKey({self.n})"


def test_a_key_whose_hash_raises_at_flush_is_reported_and_every_other_key_written(
    make_cache, caplog
) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")
    store = FailingStore()  # a dict: it hashes every key it is given
    cache = make_cache(store, quiet=True)
    hostile = HostileKey(7)
    for i in range(20):
        cache[f"k{i}"] = i
    cache[hostile] = "value"
    for i in range(20, 40):
        cache[f"k{i}"] = i
    hostile.broken = True
    with pytest.raises(FlushError) as info:
        cache.flush()
    result = info.value.result
    assert len(result.poisoned_keys) == 1 and result.poisoned_keys[0] is hostile
    assert result.failed_keys == () and result.written == 40
    assert "HostileKey(7)" in str(info.value)
    assert store.data == {f"k{i}": i for i in range(40)}
    assert cache.pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("rejected the write of HostileKey(7)" in m for m in messages), messages
    assert any("HostileKey(7)" in m and "write_errors" in m for m in messages), messages
    assert cache.close() is not None


def test_a_hostile_key_reaches_on_write_error_even_when_its_repr_raises(make_cache) -> None:
    errors = recorder()
    store = FailingStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    hostile = HostileKey(3, bad_repr=True)
    cache[hostile] = "value"
    cache["good"] = 1
    hostile.broken = True
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert [(k, v) for k, v, _ in errors.calls] == [(hostile, "value")]
    assert isinstance(errors.calls[0][2], RuntimeError)
    assert "HostileKey object at" in str(info.value)  # the report names it as best it can
    assert store.data == {"good": 1} and cache.pending == 0


def test_the_default_error_log_names_a_key_whose_repr_raises(make_cache, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lazycache")
    store = FailingStore()
    cache = make_cache(store, quiet=True)
    hostile = HostileKey(4, bad_repr=True)
    cache[hostile] = "value"
    hostile.broken = True
    with pytest.raises(FlushError):
        cache.flush()
    assert any(
        "rejected the write of <HostileKey object at" in r.getMessage() for r in caplog.records
    )


class HostileStr(str):
    """A str key (SQL stores take it as it is) whose hash raises once `broken` is set."""

    broken = False

    def __hash__(self) -> int:
        if self.broken:
            raise RuntimeError("the hash of this str is broken")
        return super().__hash__()

    def __eq__(self, other: object) -> bool:
        if self.broken:
            raise RuntimeError("the eq of this str is broken")
        return super().__eq__(other)


def test_a_key_whose_hash_raises_after_the_store_took_it_does_not_break_the_flush(
    make_cache, sqlite_store
) -> None:
    errors = recorder()
    cache = make_cache(sqlite_store, quiet=True, on_write_error=errors)
    cache["bad"] = {1, 2}  # a set is not JSON: "bad" goes to write_errors
    with pytest.raises(FlushError):
        cache.flush()
    assert list(cache.write_errors) == ["bad"]
    hostile = HostileStr("hostile")
    cache[hostile] = "value"
    cache["other"] = 2
    HostileStr.broken = True
    try:
        result = cache.flush()  # the writer forgets the errors of the keys it wrote
    finally:
        HostileStr.broken = False
    assert result.ok and result.written == 2
    assert rows(sqlite_store.engine, "lc") == {"hostile": "value", "other": 2}


def test_a_key_whose_eq_raises_does_not_break_isolating_a_bad_value(make_cache) -> None:
    errors = recorder()
    store = JsonMemoryStore()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    hostile = HostileKey(1, only_eq=True)
    cache[hostile] = "fine"
    cache["bad"] = {1}  # the SerializationError names "bad"; the writer looks for it
    cache["good"] = 2
    hostile.broken = True
    store_data = store.data
    try:
        with pytest.raises(FlushError) as info:
            cache.flush()
    finally:
        hostile.broken = False
    assert info.value.result.poisoned_keys == ("bad",)
    assert [k for k, _, _ in errors.calls] == ["bad"]
    assert store_data == {hostile: '"fine"', "good": "2"}
    assert cache.pending == 0


# ----------------------------------------------------------------- an entry the store chokes on
class ChokingStore(FailingStore):
    """Drops the connection (ConnectionError: recoverable) on any batch holding a value longer
    than `limit`, all or nothing, like MariaDB on a packet over max_allowed_packet."""

    limit = 100

    def write(self, upserts: Sequence[tuple[Any, Any]], deletes: Sequence[Any]) -> Any:
        if any(len(str(value)) > self.limit for _, value in upserts):
            self.write_calls.append((list(upserts), list(deletes)))
            raise ConnectionError("lost connection to the server during the query")
        return super().write(upserts, deletes)


@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
def test_an_entry_the_store_chokes_on_is_isolated_and_alone_takes_the_error_path(
    make_cache, max_retries
) -> None:
    errors = recorder()
    store = ChokingStore()
    cache = make_cache(store, quiet=True, max_retries=max_retries, on_write_error=errors)
    good = {f"k{i}": i for i in range(50)}
    for i in range(50):
        cache[f"k{i}"] = i
        if i == 17:
            cache["big"] = "x" * 1000
    poisoned = []
    for _ in range(max_retries + 1):  # each flush is one attempt
        try:
            cache.flush()
        except FlushError as exc:
            poisoned += exc.result.poisoned_keys
    assert poisoned == ["big"]
    assert [k for k, _, _ in errors.calls] == ["big"]
    assert isinstance(errors.calls[0][2], ConnectionError)
    assert store.data == good
    assert list(cache.write_errors) == ["big"] and cache.pending == 0


def test_with_unlimited_retries_a_choking_entry_stays_pending_while_the_rest_is_written(
    make_cache,
) -> None:
    errors = recorder()
    store = ChokingStore()
    cache = make_cache(store, on_write_error=errors, **FAST_RETRY)
    for i in range(50):
        cache[f"k{i}"] = i
        if i == 17:
            cache["big"] = "x" * 1000
    good = {f"k{i}": i for i in range(50)}
    wait_until(lambda: store.data == good, message="the good entries were held back")
    assert cache.pending == 1 and cache.write_errors == {} and errors.calls == []
    cache["later"] = 1
    wait_until(lambda: "later" in store.data, message="writes after it were held back")
    # Tried alone, in the background, with its own backoff.
    wait_until(lambda: sum(call[0] == [("big", "x" * 1000)] for call in store.write_calls) >= 3)
    with pytest.raises(FlushError) as info:
        cache.flush()
    assert info.value.result.failed_keys == ("big",) and info.value.result.poisoned_keys == ()
    store.limit = 10_000  # the database's limit is raised
    wait_until(lambda: "big" in store.data, message="the entry was not retried")
    assert cache.pending == 0 and errors.calls == []


def test_an_outage_is_not_bisected_and_poisons_nothing(make_cache) -> None:
    errors = recorder()
    store = FailingStore()
    store.fail = True
    cache = make_cache(store, quiet=True, max_retries=20, on_write_error=errors)
    for i in range(64):
        cache[f"k{i}"] = i
    for attempt in range(1, 11):
        with pytest.raises(FlushError) as info:
            cache.flush()
        assert len(info.value.result.failed_keys) == 64
        assert len(store.write_calls) == attempt  # one call a round, halves or whole
    assert errors.calls == [] and cache.write_errors == {} and cache.pending == 64
    store.fail = False
    result = cache.flush()
    assert result.ok and result.written == 64
    assert store.data == {f"k{i}": i for i in range(64)}


# ----------------------------------------------------------------- real MariaDB
@pytest.fixture
def mariadb() -> Iterator[tuple[Any, list[str]]]:
    """(direct engine, table names to drop at teardown)."""
    engine = make_engine(mariadb_url())
    tables: list[str] = []
    yield engine, tables
    with engine.begin() as conn:
        for name in tables:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}`")
    engine.dispose()


def test_a_value_over_max_allowed_packet_alone_takes_the_error_path_on_mariadb(
    make_cache, mariadb
) -> None:
    engine, tables = mariadb
    with engine.connect() as conn:
        packet = conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one()
    name = f"poison_{uuid.uuid4().hex[:12]}"
    tables.append(name)
    store = CountingSQLStore(MARIADB_URL, name)
    # The store refuses a row over the limit it learned when it connected (ValueTooLargeError).
    # Here the DBA lowered the limit since: the server drops the connection (2006/2013,
    # recoverable), and only the writer can tell that one entry is to blame.
    store._layout.packets.max_packet = packet * 4
    errors = recorder()
    cache = make_cache(store, quiet=True, max_retries=2, on_write_error=errors)
    try:
        good = {f"k{i}": i for i in range(8)}
        for i in range(8):
            cache[f"k{i}"] = i
            if i == 2:
                cache["big"] = "x" * (packet + 1024)
        poisoned = []
        for _ in range(3):  # max_retries + 1 attempts
            try:
                cache.flush()
            except FlushError as exc:
                poisoned += exc.result.poisoned_keys
        assert poisoned == ["big"]
        assert [k for k, _, _ in errors.calls] == ["big"]
        error = errors.calls[0][2]
        assert isinstance(error, sa.exc.OperationalError) and store.is_recoverable(error)
        assert rows(engine, name) == good
        assert list(cache.write_errors) == ["big"] and cache.pending == 0
    finally:
        cache.close()
        store.close()


def test_a_mariadb_outage_poisons_nothing_and_everything_is_written_after_restore(
    make_cache, mariadb
) -> None:
    engine, tables = mariadb
    proxy = CuttableProxy(3306)
    name = f"outage_{uuid.uuid4().hex[:12]}"
    tables.append(name)
    store = CountingSQLStore(
        f"mysql+pymysql://root@127.0.0.1:{proxy.port}/test?charset=utf8mb4",
        name,
        engine_options={"connect_args": {"connect_timeout": 2}},
    )
    errors = recorder()
    cache = make_cache(store, quiet=True, on_write_error=errors)
    try:
        cache["before"] = 0
        cache.flush()
        store.calls.clear()
        expected = {"before": 0}
        for i in range(40):
            cache[f"k{i}"] = i
            expected[f"k{i}"] = i
        proxy.cut()
        for attempt in range(1, 9):  # past the rounds after which a batch is probed by halves
            with pytest.raises(FlushError) as info:
                cache.flush()
            assert len(info.value.result.failed_keys) == 40
            assert info.value.result.poisoned_keys == ()
            assert len(store.calls) == attempt  # no bisection storm
        assert errors.calls == [] and cache.write_errors == {} and cache.pending == 40
        proxy.restore()
        result = cache.flush()
        assert result.ok and result.written == 40
        assert rows(engine, name) == expected
    finally:
        cache.close()
        store.close()
        proxy.close()
