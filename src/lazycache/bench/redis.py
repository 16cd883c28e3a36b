"""``lazycache bench --store redis://...``: lazycache in front of Redis, against redis-py alone.

Two questions, each on a single Redis or a Redis Cluster (found out from the URL):

* **get (hit)**: how long a read takes when the cache holds the key (it never leaves
  the process), against a direct redis-py ``GET`` of the same key (one round trip),
  and against ``GET`` + ``json.loads`` (what the application would do to get the
  same object). Reported in ns/op and as the ratio GET / lazycache.
* **flush**: keys per second a ``cache.flush()`` writes (JSON encoding, one
  ``MULTI/EXEC`` of ``MSET`` per batch of ``batch_size`` keys, one per hash slot on
  a cluster), with and without the coherence channel (one ``PUBLISH`` per batch),
  against a hand-written pipelined ``MSET`` of the same keys and JSON values
  (``json.dumps`` included; chunks of 1000 keys in one non-transactional pipeline; on a
  cluster ``mset_nonatomic``, which pipelines one ``MSET`` per slot).

Each figure is the best of ``repeat`` runs. Keys go under a random prefix
(``lazycache-bench:<hex>:``) and are deleted afterwards.

Run it standalone with ``python -m lazycache.bench.redis redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from .._open import is_redis_url
from .kit.contenders import idle_cache, lazycache_classes
from .kit.output import fit_width
from .kit.progress import status_line
from .kit.timing import timed

DEFAULT_KEYS = 20_000
QUICK_KEYS = 2_000
DEFAULT_REPEAT = 5
QUICK_REPEAT = 2
GET_SAMPLE = 5_000
"""Direct GETs per run (each is a network round trip): at most this many of the keys."""
MSET_CHUNK = 1000


@dataclass
class Row:
    operation: str
    contender: str
    value: float
    unit: str  # "ns/op" or "keys/s"
    runs: list[float] = field(default_factory=list)


@dataclass
class RedisBench:
    url: str
    server: str
    cluster: bool
    keys: int
    repeat: int
    batch_size: int
    rows: list[Row] = field(default_factory=list)

    def best(self, operation: str, contender: str) -> float | None:
        for row in self.rows:
            if row.operation == operation and row.contender == contender:
                return row.value
        return None


def _server_description(store: Any) -> str:
    client = store.client
    try:
        if store.cluster:
            versions = {
                str(info.get("redis_version"))
                for info in client.info("server", target_nodes=client.PRIMARIES).values()
            }
            return f"Redis Cluster ({len(client.get_primaries())} masters, Redis {', '.join(sorted(versions))})"
        return f"single Redis {client.info('server').get('redis_version')}"
    except Exception:
        return "Redis Cluster" if store.cluster else "single Redis"


def measure(
    url: str,
    keys: int = DEFAULT_KEYS,
    repeat: int = DEFAULT_REPEAT,
    batch_size: int = 1000,
    progress: Callable[[str], None] = lambda message: None,
) -> RedisBench:
    """Runs every measurement against the Redis (or cluster) at url; cleans up its keys."""
    from ..coherence.redis import RedisCoherence
    from ..stores.redis import RedisStore

    prefix = f"lazycache-bench:{uuid.uuid4().hex[:12]}:"
    store = RedisStore(url, prefix)
    report = RedisBench(url, _server_description(store), store.cluster, keys, repeat, batch_size)
    names = [f"key:{i}" for i in range(keys)]
    rkeys = [store.redis_key(name) for name in names]
    values = [
        {"id": i, "name": f"user {i}", "tags": ["a", "b"], "score": i * 0.5} for i in range(keys)
    ]
    client = store.client
    classes, _ = lazycache_classes()  # the cores built here, the compiled one first
    try:
        # ------------------------------------------------------------ flush throughput
        def mset() -> None:
            if store.cluster:
                for start in range(0, keys, MSET_CHUNK * 10):
                    chunk = range(start, min(keys, start + MSET_CHUNK * 10))
                    client.mset_nonatomic({rkeys[i]: json.dumps(values[i]) for i in chunk})
            else:
                pipe = client.pipeline(transaction=False)
                for start in range(0, keys, MSET_CHUNK):
                    pipe.mset(
                        {
                            rkeys[i]: json.dumps(values[i])
                            for i in range(start, min(keys, start + MSET_CHUNK))
                        }
                    )
                pipe.execute()

        flush_rows: dict[str, Row] = {}

        def flush_run(cls: type, coherent: bool) -> float:
            channel = RedisCoherence(store, prefix + "invalidate") if coherent else None
            cache = idle_cache(cls, store, coherence=channel)
            cache._batch_writer.batch_size = (
                batch_size  # batches of batch_size; the writer thread never wakes
            )
            try:
                for name, value in zip(names, values):
                    cache[name] = value
                seconds = timed(cache.flush)
            finally:
                cache.close(flush=False)
            return seconds

        for turn in range(repeat):
            progress(f"flush, run {turn + 1}/{repeat}")
            row = flush_rows.setdefault(
                "mset", Row("flush", "redis-py pipelined MSET", 0.0, "keys/s")
            )
            row.runs.append(keys / timed(mset))
            for name, cls in classes.items():
                for coherent in (False, True):
                    label = name + (" + coherence" if coherent else "")
                    row = flush_rows.setdefault(label, Row("flush", label, 0.0, "keys/s"))
                    row.runs.append(keys / flush_run(cls, coherent))
        for row in flush_rows.values():
            row.value = max(row.runs)
            report.rows.append(row)

        # ------------------------------------------------------------ get (hit)
        sample = rkeys[: min(keys, GET_SAMPLE)]
        get = client.get

        def direct_get() -> None:
            for rkey in sample:
                get(rkey)

        def direct_get_decoded() -> None:
            loads = json.loads
            for rkey in sample:
                loads(get(rkey))

        get_rows = {
            "get": Row("get (hit)", "redis-py GET", 0.0, "ns/op"),
            "get+json": Row("get (hit)", "redis-py GET + json.loads", 0.0, "ns/op"),
        }

        def hits_of(getitem: Callable[[str], Any]) -> Callable[[], None]:
            # A closure per cache, as direct_get is one: the same variable lookups in both loops.
            def hits() -> None:
                for name in names:
                    getitem(name)

            return hits

        caches = {}
        for label, cls in classes.items():
            cache = idle_cache(cls, store, read_through=True)
            for name in names:
                cache[name]  # read through: now cached, clean
            caches[label] = cache
            get_rows[label] = Row("get (hit)", label, 0.0, "ns/op")
        try:
            for turn in range(repeat):
                progress(f"get, run {turn + 1}/{repeat}")
                get_rows["get"].runs.append(timed(direct_get) / len(sample) * 1e9)
                get_rows["get+json"].runs.append(timed(direct_get_decoded) / len(sample) * 1e9)
                for label, cache in caches.items():
                    hits = hits_of(cache.__getitem__)
                    hits()  # one untimed pass: the loop runs warm, as a hot read path does
                    get_rows[label].runs.append(timed(hits) / keys * 1e9)
        finally:
            for cache in caches.values():
                cache.close(flush=False)
        for row in get_rows.values():
            row.value = min(row.runs)
            report.rows.append(row)
    finally:
        for start in range(0, keys, 1000):
            store.write([], names[start : start + 1000])
        store.close()
    return report


def _fmt(row: Row) -> str:
    if row.unit == "keys/s":
        return f"{row.value:,.0f} keys/s"
    if row.value >= 10_000:
        return f"{row.value / 1000:,.1f} µs/op"
    return f"{row.value:,.1f} ns/op"


def render_table(report: RedisBench) -> str:
    lines = [
        f"lazycache bench --store {report.url}: {report.server}; {report.keys:,} keys, "
        f"batch_size {report.batch_size}, best of {report.repeat}",
        "",
    ]
    width = max(len(row.contender) for row in report.rows)
    for operation in ("get (hit)", "flush"):
        rows = [row for row in report.rows if row.operation == operation]
        if not rows:
            continue
        lines.append(operation)
        baseline = (
            rows[0]
            if operation == "flush"
            else next(r for r in rows if r.contender == "redis-py GET")
        )
        for row in rows:
            if operation == "flush":
                ratio = f"{row.value / baseline.value:.2f}x the MSET rate"
            else:
                ratio = (
                    f"GET is {baseline.value / row.value:,.0f}x slower"
                    if row.contender.startswith("lazycache")
                    else ""
                )
            lines.append(f"  {row.contender.ljust(width)}  {_fmt(row).rjust(16)}  {ratio}")
        lines.append("")
    lines.append(
        "get (hit): the key is in the cache's memory (timed after one untimed pass over the keys); GET is "
        f"one round trip per key (first {min(report.keys, GET_SAMPLE):,} keys). flush: JSON encoding included "
        "on both sides; lazycache writes batches of batch_size keys, one MULTI/EXEC each (per hash slot on a cluster)."
    )
    return fit_width("\n".join(lines))


def render_json(report: RedisBench) -> str:
    return json.dumps(
        {
            "url": report.url,
            "server": report.server,
            "cluster": report.cluster,
            "keys": report.keys,
            "repeat": report.repeat,
            "batch_size": report.batch_size,
            "results": [
                {
                    "operation": r.operation,
                    "contender": r.contender,
                    "value": r.value,
                    "unit": r.unit,
                    "runs": r.runs,
                }
                for r in report.rows
            ],
        },
        indent=2,
    )


def run(
    url: str,
    *,
    sizes: Sequence[int] | None = None,
    repeat: int | None = None,
    quick: bool = False,
    as_json: bool = False,
) -> int:
    """What `lazycache bench --store URL` runs: measures and prints; returns the exit status."""
    if not is_redis_url(url):
        print(
            f"lazycache bench --store: only Redis URLs (redis://, rediss://, unix://) are supported, not {url!r}",
            file=sys.stderr,
        )
        return 2
    keys_list = list(sizes) if sizes else [QUICK_KEYS if quick else DEFAULT_KEYS]
    runs = repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    try:
        import redis
    except ImportError:
        print(
            "lazycache bench --store: a Redis URL needs redis-py: pip install 'lazywritercache[redis]'",
            file=sys.stderr,
        )
        return 2
    outputs = []
    try:
        with status_line() as progress:
            for keys in keys_list:
                report = measure(url, keys, runs, progress=progress)
                outputs.append(render_json(report) if as_json else render_table(report))
    except (redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError) as exc:
        shown = re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)  # the password hidden
        print(f"lazycache bench: --store {shown}: cannot use Redis: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(outputs))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lazycache.bench.redis", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("url", help="redis://host:port/db, or any node of a cluster")
    parser.add_argument(
        "--keys", type=int, action="append", help=f"key count (default {DEFAULT_KEYS})"
    )
    parser.add_argument("--repeat", type=int, help=f"runs per figure (default {DEFAULT_REPEAT})")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return run(args.url, sizes=args.keys, repeat=args.repeat, quick=args.quick, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
