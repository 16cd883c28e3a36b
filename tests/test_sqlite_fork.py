"""A process that forks while one of its connections to a SQLite file is in a transaction.

SQLite's unix VFS keeps the locks of a file in a per-process table that the process's
connections share. A fork copies it, locks included, into a child that has no thread to
release them: every connection the child opens on that file then finds the database locked,
for good, even once the parent has committed. A forked child's cache could never write
(its close(timeout) reported every key). The store now holds fork() back until no
connection of its engine is in use.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from helpers import TIMEOUT, run_in_forked_child, wait_until

import lazycache
from lazycache import FlushError


def test_a_child_forked_during_a_transaction_can_write_the_database(
    impl: str, tmp_path: Any
) -> None:
    from lazycache.stores.sqlalchemy import _FORK_GUARDS

    path = tmp_path / "fork.db"
    cache = lazycache.open(path, implementation=impl, write_interval=0.02)
    try:
        cache["parent"] = 1
        cache.flush()
        engine = cache.store.engine
        in_transaction = threading.Event()

        def write_slowly() -> None:
            # A write of the parent's, in a transaction when the fork is asked for; it commits
            # once the fork waits for it (or after a while, if nothing waits).
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO lazycache (key, value) VALUES ('slow', '1')")
                in_transaction.set()
                guard = _FORK_GUARDS.get(engine)
                try:
                    wait_until(lambda: guard is not None and guard.forking, timeout=2)
                except AssertionError:
                    pass

        writer = threading.Thread(target=write_slowly, daemon=True)
        writer.start()
        assert in_transaction.wait(TIMEOUT)

        def child() -> Any:
            cache["child"] = os.getpid()
            try:
                cache.close(timeout=8)
            except FlushError as exc:
                return f"close() failed: {exc}"
            return "written"

        assert run_in_forked_child(child, timeout=30) == "written"
        writer.join(TIMEOUT)
        assert cache.store.load_many(["parent", "slow", "child"]).keys() == {
            "parent",
            "slow",
            "child",
        }
    finally:
        cache.close()


def test_children_forked_while_the_parent_keeps_writing_can_all_write(
    impl: str, tmp_path: Any
) -> None:
    cache = lazycache.open(tmp_path / "busy.db", implementation=impl, write_interval=0.001)
    stop = threading.Event()

    def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            cache[f"p{n % 50}"] = n
            n += 1
            if n % 20 == 0:
                cache.flush()

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        for round_ in range(5):

            def child(round_: int = round_) -> Any:
                cache[f"child{round_}"] = round_
                try:
                    cache.close(timeout=8)
                except FlushError as exc:
                    return f"close() failed: {exc}"
                return "written"

            assert run_in_forked_child(child, timeout=30) == "written", f"child {round_}"
    finally:
        stop.set()
        writer.join(TIMEOUT)
        cache.close()
    check = lazycache.open(tmp_path / "busy.db")
    try:
        assert all(check[f"child{round_}"] == round_ for round_ in range(5))
    finally:
        check.close()
