"""A cache's life beyond its owner's calls: closed at interpreter exit or by the garbage
collector, and carried across `os.fork()`.

Every open cache is tracked here (weakly: tracking keeps no cache alive). At exit, each one
still open is closed, and so flushed, within its `exit_timeout`: a store that hangs must not
hang the interpreter's exit, nor lose keys unnamed. Their threads are daemons, so the
interpreter does not wait for them before running the hook. Around a fork, every open cache
keeps its core whole (no operation half done in the child); in the child, each lets go of
the parent's connections and locks, then starts threads of its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Protocol

from .writer import FlushError, describe_keys, log_extra

log = logging.getLogger("lazycache")


class Tracked(Protocol):
    """What the hooks here call on an open cache."""

    exit_timeout: float

    def close(self, flush: bool | None = None, timeout: float | None = None) -> object: ...

    def _fork_prepare(self) -> None:
        """Before the fork: takes the core's lock, so that no core operation is half done."""
        ...

    def _fork_release(self) -> None:
        """After the fork (in the parent; in the child, from `_after_fork_in_child`)."""
        ...

    def _after_fork_in_child(self) -> None:
        """In the child, while it has one thread: lets go of everything the parent's threads use."""
        ...

    def _start_threads(self) -> None: ...


# Keyed by id(): a Mapping is unhashable.
_open_caches: weakref.WeakValueDictionary[int, Tracked] = weakref.WeakValueDictionary()


def track(cache: Tracked) -> None:
    """Closes `cache` at exit, and carries it across forks, until `untrack`."""
    _open_caches[id(cache)] = cache


def untrack(cache: Tracked) -> None:
    _open_caches.pop(id(cache), None)


def close_collected(cache: Tracked) -> None:
    """Closes a cache the garbage collector finalises while it is still open (its `__del__`)."""
    _close_unattended(
        cache,
        "a cache was garbage-collected and its last flush failed; lost: %s",
        "closing a garbage-collected cache failed",
    )


def _close_unattended(cache: Tracked, flush_failed: str, close_failed: str) -> None:
    """Closes a cache nobody closed, within its exit_timeout; never raises, logs what was lost."""
    try:
        cache.close(timeout=cache.exit_timeout)
    except FlushError as exc:
        log.error(
            flush_failed,
            describe_keys(list(exc.result.failed_keys)),
            extra=log_extra(list(exc.result.failed_keys)),
        )
    except Exception:
        log.exception(close_failed)


@atexit.register
def _close_open_caches() -> None:
    for cache in list(_open_caches.values()):
        _close_unattended(
            cache, "flush at exit failed; not written: %s", "closing a cache at exit failed"
        )


def _before_fork() -> None:
    for cache in list(_open_caches.values()):
        cache._fork_prepare()  # no core operation may be half done in the child


def _after_fork_in_parent() -> None:
    for cache in list(_open_caches.values()):
        cache._fork_release()


def _after_fork_in_child() -> None:
    # Two passes: every cache lets go of the parent's connections (and of locks a parent
    # thread may have held) while this is the child's only thread; then the threads start.
    # Caches may share a store or a client: none of their threads may run while the next
    # cache resets it.
    restarted: list[Tracked] = []
    for cache in list(_open_caches.values()):
        try:
            cache._after_fork_in_child()
        except Exception:
            log.exception("could not restart a cache in the forked child")
        else:
            restarted.append(cache)
    for cache in restarted:
        try:
            cache._start_threads()
        except Exception:
            log.exception("could not start a cache's threads in the forked child")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
