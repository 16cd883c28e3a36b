"""``lazycache bench --store URL``: flush throughput of the SQLAlchemy store, in rows/s.

Each trial writes one batch (one transaction) into a key-value table pre-filled with
`rows` rows: half of the batch updates existing keys (picked at random), half inserts new
ones. Every contender starts from the same Python objects and serialises them with the
same JSON serializer inside the timed region, then commits. The contenders:

* lazycache — ``cache.flush()`` of a `LazyWriterCache` holding the batch (the whole
  write-behind path: taking the batch, `SQLAlchemyStore.write`, committing the entries),
  and ``SQLAlchemyStore.write`` alone;
* the origin's approach — inside one transaction, per row: SELECT by key, then INSERT or
  UPDATE, with SQLAlchemy Core statements (the Python counterpart of the origin's GORM
  reader-writer), and the same with the raw driver for reference;
* the obvious SQLAlchemy path — Core ``insert().on_conflict_do_update()`` (or ON DUPLICATE
  KEY UPDATE) executed with a list of parameter sets;
* the raw driver, the fastest ways found: psycopg ``executemany`` (pipeline mode), COPY
  into a temporary table then ``INSERT ... SELECT ... ON CONFLICT``, and ``unnest()`` of
  binary arrays in chunks sent in pipeline mode; sqlite3 ``executemany``; PyMySQL
  ``executemany`` (which it turns into multi-row INSERTs), and multi-row INSERTs built in
  one thread while another sends the previous one.

The new keys of a trial are deleted after it, outside the timed region, so every trial
sees a table of the same size. Contenders take turns within each repeat (round-robin);
the best run is reported, with ratios to the best raw-driver method and to the origin's
approach in the same batch size.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import lazycache

from .. import LazyWriterCache
from ..serializers import _json_dumps
from .kit.contenders import idle_cache
from .kit.output import fit_width, format_table, rate
from .kit.progress import status_line
from .kit.timing import Runs, rotated, timed

Batch = list[tuple[str, Any]]

DEFAULT_BATCHES = [1_000, 10_000]
QUICK_BATCHES = [1_000]
DEFAULT_ROWS = 100_000
QUICK_ROWS = 10_000
DEFAULT_REPEAT = 3
QUICK_REPEAT = 1
EMBEDDED = "sqlite"
"""`--store` without a URL, or with this word: a SQLite file in a temporary directory."""

LAZYCACHE, ORIGIN, RAW, OTHER = "lazycache", "origin", "raw driver", "other"


ORIGIN_DESCRIPTION = (
    "origin: the Go library pilotso11/lazywritercache, which lazycache grows from; it saves a batch "
    "row by row in one transaction (GORM: SELECT by key, then INSERT or UPDATE). Its rows here do the "
    "same in Python, with SQLAlchemy Core statements, and with the raw driver for reference."
)


class StoreSetupError(Exception):
    """The database at --store cannot be used (bad URL, driver not installed, no server): one line."""


def _setup_error(exc: BaseException) -> StoreSetupError:
    """What stopped the set-up, in one line: the driver's own message, not SQLAlchemy's wrapping."""
    import sqlalchemy as sa

    if isinstance(exc, ImportError):
        return StoreSetupError(
            f"its driver is not installed ({exc}); name one that is in the URL, e.g. "
            "postgresql+psycopg://, mysql+pymysql:// (pip install 'lazywritercache[postgresql]' "
            "or 'lazywritercache[mysql]')"
        )
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        detail = str(exc.orig).strip() or type(exc.orig).__name__
        return StoreSetupError(f"cannot use the database: {detail.splitlines()[0]}")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreSetupError(f"not a usable SQLAlchemy URL: {first}")


@dataclass
class Method:
    """One way to write a batch: a contender of this section."""

    name: str
    group: str
    """LAZYCACHE, ORIGIN (the baseline of the "vs origin" ratio), RAW (the best of them is "raw best") or OTHER."""
    write: Callable[[Any, Batch], None]
    """write(state, batch): the timed part."""
    prepare: Callable[[Batch], Any] = lambda batch: None
    """Untimed set-up of one trial; its result is passed to write."""
    finish: Callable[[Any], None] = lambda state: None
    """Untimed clean-up of one trial."""


@dataclass
class BatchCell(Runs):
    """The runs of one method at one batch size."""

    method: str
    group: str
    batch: int
    samples: list[float] = field(default_factory=list)
    """rows/s of each run."""
    higher_is_better = True


@dataclass
class StoreReport:
    url: str
    database: str
    driver: str
    rows: int
    batches: list[int]
    repeat: int
    value_bytes: int
    cells: list[BatchCell] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def best_of(self, group: str, batch: int) -> float:
        rates = [c.best for c in self.cells if c.group == group and c.batch == batch and c.samples]
        return max(rates) if rates else float("nan")


# ----------------------------------------------------------------------------- the workload


def make_value(i: int, generation: int) -> dict[str, Any]:
    """A typical small record (about 150 bytes of JSON)."""
    return {
        "id": i,
        "name": f"user {i}",
        "email": f"user{i}@example.com",
        "score": i * 0.25 + generation,
        "active": i % 3 != 0,
        "tags": ["alpha", "beta"] if i % 2 else ["gamma"],
        "generation": generation,
    }


class Batches:
    """Hands out batches: half random existing keys, half keys never used before."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        self.rows = rows
        self.rng = random.Random(seed)
        self.generation = 0
        self.next_new = rows

    def batch(self, size: int) -> tuple[Batch, list[str]]:
        self.generation += 1
        updates = self.rng.sample(range(self.rows), size // 2)
        new = list(range(self.next_new, self.next_new + size - len(updates)))
        self.next_new += len(new)
        ids = updates + new
        self.rng.shuffle(ids)
        batch = [(f"key:{i}", make_value(i, self.generation)) for i in ids]
        return batch, [f"key:{i}" for i in new]


# ----------------------------------------------------------------------------- the methods


def _methods(store: Any, engine: Any) -> tuple[list[Method], dict[str, str]]:
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    dumps = _json_dumps  # the JSON serializer's dumps, typed as returning str, not str | bytes
    table = store.table
    dialect = engine.dialect
    quote = dialect.identifier_preparer.quote
    name = dialect.identifier_preparer.format_table(table)
    key, value = quote("key"), quote("value")
    methods: list[Method] = []
    skipped: dict[str, str] = {}

    # lazycache
    def make_cache(batch: Batch) -> Any:
        # batch_size above the batch: a full batch would wake the writer thread; one flush() writes it all.
        cache: LazyWriterCache[Any, Any] = idle_cache(LazyWriterCache, store)
        cache.update(batch)
        return cache

    def flush(cache: Any, batch: Batch) -> None:
        result = cache.flush()
        assert result.written == len(batch), result

    methods.append(
        Method(
            "lazycache: cache.flush()", LAZYCACHE, flush, make_cache, lambda c: c.close(flush=False)
        )
    )
    methods.append(
        Method(
            "lazycache: SQLAlchemyStore.write()", LAZYCACHE, lambda _, batch: store.write(batch, [])
        )
    )

    # the origin's approach, and the obvious SQLAlchemy path
    def per_row_core(_: Any, batch: Batch) -> None:
        with engine.begin() as conn:
            for k, v in batch:
                if conn.execute(sa.select(table.c.key).where(table.c.key == k)).first() is not None:
                    conn.execute(sa.update(table).where(table.c.key == k).values(value=dumps(v)))
                else:
                    conn.execute(sa.insert(table).values(key=k, value=dumps(v)))

    methods.append(
        Method(
            "origin: per row SELECT, then INSERT or UPDATE (SQLAlchemy Core)", ORIGIN, per_row_core
        )
    )

    if dialect.name in ("postgresql", "sqlite"):
        module = postgresql if dialect.name == "postgresql" else sqlite
        insert = module.insert(table)
        core_upsert = insert.on_conflict_do_update(
            index_elements=[table.c.key], set_={"value": insert.excluded.value}
        )
    elif dialect.name in ("mysql", "mariadb"):
        insert = mysql.insert(table)
        core_upsert = insert.on_duplicate_key_update(value=insert.inserted.value)
    else:
        core_upsert = None

    if core_upsert is not None:

        def core_executemany(_: Any, batch: Batch) -> None:
            with engine.begin() as conn:
                conn.execute(core_upsert, [{"key": k, "value": dumps(v)} for k, v in batch])

        methods.append(Method("SQLAlchemy Core upsert, executemany", OTHER, core_executemany))

    # the raw driver
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    select_sql = f"SELECT {key} FROM {name} WHERE {key} = {mark}"
    update_sql = f"UPDATE {name} SET {value} = {mark} WHERE {key} = {mark}"
    insert_sql = f"INSERT INTO {name} ({key}, {value}) VALUES ({mark}, {mark})"

    def raw(batch: Batch) -> Any:
        return engine.raw_connection()

    def release(connection: Any) -> None:
        connection.close()  # back to the pool

    def per_row_raw(connection: Any, batch: Batch) -> None:
        driver = connection.driver_connection
        cursor = driver.cursor()
        for k, v in batch:
            cursor.execute(select_sql, (k,))
            if cursor.fetchone() is not None:
                cursor.execute(update_sql, (dumps(v), k))
            else:
                cursor.execute(insert_sql, (k, dumps(v)))
        cursor.close()
        driver.commit()

    methods.append(
        Method(
            "origin's approach with the raw driver, for reference", OTHER, per_row_raw, raw, release
        )
    )

    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        upsert_sql = f"{insert_sql} ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
        stage = quote(f"lazycache_stage_{table.name}"[:63])

        def psycopg_executemany(connection: Any, batch: Batch) -> None:
            driver = connection.driver_connection
            with driver.cursor() as cursor:
                cursor.executemany(upsert_sql, [(k, dumps(v)) for k, v in batch])  # pipeline mode
            driver.commit()

        def psycopg_copy(connection: Any, batch: Batch) -> None:
            driver = connection.driver_connection
            with driver.cursor() as cursor:
                cursor.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {name}) ON COMMIT DELETE ROWS"
                )
                with cursor.copy(f"COPY {stage} ({key}, {value}) FROM STDIN") as copy:
                    for k, v in batch:
                        copy.write_row((k, dumps(v)))
                cursor.execute(
                    f"INSERT INTO {name} ({key}, {value}) SELECT {key}, {value} FROM {stage} "
                    f"ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
                )
            driver.commit()

        unnest_sql = (
            f"INSERT INTO {name} ({key}, {value}) SELECT * FROM unnest(%b::TEXT[], %b::TEXT[]) "
            f"ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
        )

        def psycopg_unnest(connection: Any, batch: Batch) -> None:
            driver = connection.driver_connection
            chunk = max(32, min(256, len(batch) // 8))
            with driver.pipeline(), driver.cursor(binary=True) as cursor:
                for start in range(0, len(batch), chunk):
                    part = batch[start : start + chunk]
                    cursor.execute(unnest_sql, ([k for k, _ in part], [dumps(v) for _, v in part]))
            driver.commit()

        methods.append(
            Method("psycopg executemany (pipeline mode)", RAW, psycopg_executemany, raw, release)
        )
        methods.append(
            Method(
                "psycopg COPY to a temp table + INSERT..SELECT..ON CONFLICT",
                RAW,
                psycopg_copy,
                raw,
                release,
            )
        )
        methods.append(
            Method(
                "psycopg unnest(binary arrays), chunks pipelined", RAW, psycopg_unnest, raw, release
            )
        )
    elif dialect.name == "sqlite" and dialect.driver == "pysqlite":
        upsert_sql = f"{insert_sql} ON CONFLICT ({key}) DO UPDATE SET {value} = excluded.{value}"

        def sqlite_executemany(connection: Any, batch: Batch) -> None:
            driver = connection.driver_connection
            driver.executemany(upsert_sql, [(k, dumps(v)) for k, v in batch])
            driver.commit()

        methods.append(Method("sqlite3 executemany", RAW, sqlite_executemany, raw, release))

        # What SQLite alone costs: no Python work is timed at all, so no method can beat it.
        def encoded(batch: Batch) -> tuple[Any, list[tuple[str, str]]]:
            return engine.raw_connection(), [(k, dumps(v)) for k, v in batch]

        def sqlite_ceiling(state: tuple[Any, list[tuple[str, str]]], _: Batch) -> None:
            driver = state[0].driver_connection
            driver.executemany(upsert_sql, state[1])
            driver.commit()

        methods.append(
            Method(
                "ceiling: sqlite3 executemany of values serialised beforehand (untimed)",
                OTHER,
                sqlite_ceiling,
                encoded,
                lambda state: release(state[0]),
            )
        )
    elif dialect.name in ("mysql", "mariadb") and dialect.driver in ("pymysql", "mysqldb"):
        upsert_sql = f"{insert_sql} ON DUPLICATE KEY UPDATE {value} = VALUES({value})"

        def mysql_executemany(connection: Any, batch: Batch) -> None:
            driver = connection.driver_connection
            cursor = driver.cursor()
            cursor.executemany(
                upsert_sql, [(k, dumps(v)) for k, v in batch]
            )  # one multi-row INSERT per ~1 MB
            cursor.close()
            driver.commit()

        methods.append(
            Method(
                f"{dialect.driver} executemany (multi-row INSERT)",
                RAW,
                mysql_executemany,
                raw,
                release,
            )
        )

        if dialect.driver == "pymysql":
            head = f"INSERT INTO {name} ({key}, {value}) VALUES "
            tail = f" ON DUPLICATE KEY UPDATE {value} = VALUES({value})"

            def mysql_pipelined(connection: Any, batch: Batch) -> None:
                driver = connection.driver_connection
                escape = driver.escape
                statements: queue.Queue[str | None] = queue.Queue(maxsize=2)
                cursor = driver.cursor()

                def send() -> None:
                    while True:
                        statement = statements.get()
                        if statement is None:
                            return
                        cursor.execute(statement)

                sender = threading.Thread(target=send)
                sender.start()
                for start in range(0, len(batch), 250):
                    part = batch[start : start + 250]
                    statements.put(
                        head + ",".join(f"({escape(k)},{escape(dumps(v))})" for k, v in part) + tail
                    )
                statements.put(None)
                sender.join()
                cursor.close()
                driver.commit()

            methods.append(
                Method(
                    "pymysql multi-row INSERTs of 250 rows, sent by a thread",
                    RAW,
                    mysql_pipelined,
                    raw,
                    release,
                )
            )
    else:
        skipped["raw driver"] = f"no raw-driver contender for {dialect.name}+{dialect.driver}"
    return methods, skipped


# ----------------------------------------------------------------------------- measuring


def measure(
    url: str,
    batches: Sequence[int],
    rows: int,
    repeat: int,
    progress: Callable[[str], None] = lambda message: None,
) -> StoreReport:
    """Runs every method on every batch size `repeat` times against a fresh table at `url`."""
    import sqlalchemy as sa

    from ..stores.sqlalchemy import SQLAlchemyStore, make_engine

    try:
        engine = make_engine(url)
    except (ImportError, sa.exc.ArgumentError) as exc:  # NoSuchModuleError: an unknown dialect
        raise _setup_error(exc) from exc
    table = f"lazycache_bench_{os.getpid()}"
    filled = False
    try:
        store = SQLAlchemyStore(engine, table)
    except (ImportError, sa.exc.DBAPIError) as exc:
        engine.dispose()
        raise _setup_error(exc) from exc
    try:
        version = ".".join(str(part) for part in (engine.dialect.server_version_info or ())[:3])
        database = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL"}.get(
            engine.dialect.name, engine.dialect.name
        )
        if getattr(engine.dialect, "is_mariadb", False):
            database = "MariaDB"
        report = StoreReport(
            url=engine.url.render_as_string(hide_password=True),
            database=f"{database} {version}".strip(),
            driver=f"{engine.dialect.driver}, SQLAlchemy {sa.__version__}",
            rows=rows,
            batches=list(batches),
            repeat=repeat,
            value_bytes=len(_json_dumps(make_value(rows // 2, 1)).encode()),
        )
        progress(f"filling a table of {rows} rows")
        try:
            for start in range(0, rows, 10_000):
                store.write(
                    [
                        (f"key:{i}", make_value(i, 0))
                        for i in range(start, min(rows, start + 10_000))
                    ],
                    [],
                )
        except (
            ImportError,
            sa.exc.DBAPIError,
        ) as exc:  # the first connection: no server, no access
            raise _setup_error(exc) from exc
        filled = True
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"ANALYZE {engine.dialect.identifier_preparer.quote(table)}")
        methods, report.skipped = _methods(store, engine)
        work = Batches(rows)

        def trial(method: Method, size: int) -> float:
            batch, new_keys = work.batch(size)
            state = method.prepare(batch)
            try:
                elapsed = timed(lambda: method.write(state, batch))
            finally:
                method.finish(state)
            store.write([], new_keys)  # untimed: the table keeps its size
            return size / elapsed

        active = list(methods)
        for method in methods:  # warm-up: statement caches, the temp table, the pool
            try:
                trial(method, 100)
            except Exception as exc:
                report.failed[method.name] = f"warm-up raised {exc!r}"
                active.remove(method)
        for size in batches:
            cells = {m.name: BatchCell(m.name, m.group, size) for m in active}
            for turn in range(repeat):
                for method in rotated(active, turn):
                    if method.name in report.failed:
                        continue
                    progress(f"{method.name} @ {size} rows (run {turn + 1}/{repeat})")
                    try:
                        cells[method.name].samples.append(trial(method, size))
                    except Exception as exc:
                        report.failed[method.name] = f"batch of {size} raised {exc!r}"
                    gc.collect()
            report.cells.extend(cell for cell in cells.values() if cell.samples)
        return report
    finally:
        try:
            if filled:
                store.table.drop(engine, checkfirst=True)
            else:  # the database may be unreachable: the set-up error is what to report
                try:
                    store.table.drop(engine, checkfirst=True)
                except sa.exc.SQLAlchemyError:
                    pass
        finally:
            engine.dispose()


# ----------------------------------------------------------------------------- output


def _ratio(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.0f}x" if value >= 10 else f"{value:.2f}x"


def render_table(report: StoreReport) -> str:
    lines = [
        f"lazycache bench --store {report.url}",
        f"{report.database} ({report.driver}); Python {sys.version.split()[0]}, lazycache {lazycache.__version__} "
        f"({lazycache.IMPLEMENTATION} core)",
        f"flush throughput, rows/s: one transaction per batch, half new keys and half updates of a table of "
        f"{report.rows:,} rows; JSON values of ~{report.value_bytes} bytes, serialised inside the timed region; "
        f"best of {report.repeat} run{'s' if report.repeat > 1 else ''}",
    ]
    lines.append(ORIGIN_DESCRIPTION)
    lines += [f"skipped {name}: {why}" for name, why in report.skipped.items()]
    lines += [f"FAILED {name}: {why}" for name, why in report.failed.items()]
    header = ["batch", "method", "rows/s", "vs raw best", "vs origin", "spread"]
    body: list[list[str]] = []
    breaks: list[int] = []  # a blank line before each batch size but the first
    for size in report.batches:
        raw_best = report.best_of(RAW, size)
        origin = report.best_of(ORIGIN, size)
        cells = [c for c in report.cells if c.batch == size]
        if body and cells:
            breaks.append(len(body))
        for cell in cells:
            body.append(
                [
                    f"{size:,}",
                    cell.method,
                    rate(cell.best, suffix=""),
                    _ratio(cell.best / raw_best),
                    _ratio(cell.best / origin),
                    f"±{cell.spread:.0f}%",
                ]
            )
    lines += ["", *format_table(header, body, left=2, breaks=breaks)]
    lines += [
        "",
        "vs raw best: rows/s / the best raw-driver method's rows/s for the same batch size; vs origin: / the "
        "origin's per-row approach (SQLAlchemy Core statements, one transaction). spread: (best - worst) / best.",
    ]
    return fit_width("\n".join(lines))


def render_json(report: StoreReport) -> str:
    results = []
    for cell in report.cells:
        raw_best = report.best_of(RAW, cell.batch)
        origin = report.best_of(ORIGIN, cell.batch)
        results.append(
            {
                "batch": cell.batch,
                "method": cell.method,
                "group": cell.group,
                "rows_per_s": cell.best,
                "vs_raw_best": cell.best / raw_best,
                "vs_origin": cell.best / origin,
                "runs_rows_per_s": cell.samples,
            }
        )
    document = {
        "url": report.url,
        "database": report.database,
        "driver": report.driver,
        "python": sys.version.split()[0],
        "lazycache_version": lazycache.__version__,
        "lazycache_implementation": lazycache.IMPLEMENTATION,
        "origin": ORIGIN_DESCRIPTION,
        "table_rows": report.rows,
        "value_bytes": report.value_bytes,
        "repeat": report.repeat,
        "batches": report.batches,
        "skipped": report.skipped,
        "failed": report.failed,
        "results": results,
    }
    return json.dumps(_no_nan(document), indent=2, allow_nan=False)


def _no_nan(item: Any) -> Any:
    """NaN (a ratio with nothing to compare to) as null: JSON has no NaN."""
    if isinstance(item, float) and item != item:
        return None
    if isinstance(item, dict):
        return {key: _no_nan(value) for key, value in item.items()}
    if isinstance(item, list):
        return [_no_nan(value) for value in item]
    return item


# ----------------------------------------------------------------------------- command line


def _shown(url: str) -> str:
    """The URL as printed: its password hidden when it parses."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _new_sqlite_files(url: str) -> list[str]:
    """A SQLite database file that does not exist yet, with its journals: the run will make them."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return []
    database = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or database in ("", ":memory:")
        or database.startswith("file:")
    ):
        return []
    if os.path.exists(database):
        return []  # the user's database: only the benchmark's table is dropped from it
    return [database + suffix for suffix in ("", "-wal", "-shm", "-journal")]


def run(
    url: str,
    *,
    sizes: Sequence[int] | None = None,
    repeat: int | None = None,
    quick: bool = False,
    as_json: bool = False,
) -> int:
    """`lazycache bench --store [URL]`: measures and prints; returns the exit status.

    `url`: an SQLAlchemy URL, or "sqlite" for a file in a temporary directory; `sizes`: the
    batch sizes.
    """
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        print(
            "lazycache bench --store needs SQLAlchemy: pip install 'lazywritercache[sqlalchemy]'",
            file=sys.stderr,
        )
        return 2
    batches = list(sizes) if sizes else (QUICK_BATCHES if quick else DEFAULT_BATCHES)
    runs = repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    rows = QUICK_ROWS if quick else DEFAULT_ROWS
    temporary: str | None = None
    if url == EMBEDDED:
        temporary = tempfile.mkdtemp(prefix="lazycache-bench-")
        url = f"sqlite:///{os.path.join(temporary, 'bench.db')}"
    created = _new_sqlite_files(url)
    try:
        with status_line() as progress:
            report = measure(url, batches, rows, runs, progress)
    except StoreSetupError as exc:
        print(f"lazycache bench: --store {_shown(url)}: {exc}", file=sys.stderr)
        return 2
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        for path in created:  # the run made this database file: it leaves none behind
            if os.path.exists(path):
                os.remove(path)
    print(render_json(report) if as_json else render_table(report))
    return 1 if report.failed else 0
