"""Memoizing a function through a cache: `@cached(cache)`, in the shape of cachetools' decorator.

    >>> @lazycache.cached(cache)
    ... def price(sku: str) -> Decimal:
    ...     return pricing_service.lookup(sku)

A call looks its key (`key(*args, **kwargs)`, `hashkey` by default) up in the cache's
memory; on a miss, the function runs and its result is cached clean, through
`LazyWriterCache.get_or_load`: concurrent calls with one key, from any thread, share one
call of the function, and its exception reaches each of them with nothing cached. The
results live in the cache's memory only (never written to its store), under its
`maxsize` and its expiry options (`expire_after_write=`, `expire_after_access=`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

__all__ = ["cached", "hashkey", "typedkey"]

F = TypeVar("F", bound=Callable[..., Any])


class _KeywordMark:
    """Separates the positional arguments from the keyword ones in a key (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<keywords>"


_KEYWORDS = _KeywordMark()


def hashkey(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """The cache key of a call: its arguments as a tuple (keywords in name order after a mark).

    `f(1, 2)` and `f(1, b=2)` are two keys, as in cachetools; every argument must be hashable.
    """
    if not kwargs:
        return args
    return (*args, _KEYWORDS, *sorted(kwargs.items()))


def typedkey(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """`hashkey` plus the arguments' types, so that `f(1)` and `f(1.0)` are cached apart."""
    return (
        *hashkey(*args, **kwargs),
        *(type(arg) for arg in args),
        *(type(value) for _, value in sorted(kwargs.items())),
    )


def cached(cache: Any, key: Callable[..., Any] = hashkey) -> Callable[[F], F]:
    """Decorator: memoizes a function through `cache` (a `LazyWriterCache`).

    The wrapper has `cache` and `cache_key` attributes (the cache and the key function)
    and `__wrapped__`, as cachetools' has. There is no lock to pass: the cache is
    thread-safe, and concurrent misses of one key share one call. Coroutine functions
    are refused (their result, a coroutine, cannot be shared).
    """
    get_or_load = getattr(cache, "get_or_load", None)
    if not callable(get_or_load):
        raise TypeError(f"cache must be a lazycache.LazyWriterCache, not {type(cache).__name__}")
    if not callable(key):
        raise TypeError(f"key must be callable, not {type(key).__name__}")

    def decorator(func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError(
                f"{func.__qualname__} is a coroutine function: lazycache.cached memoizes "
                "plain functions (a coroutine can be awaited only once)"
            )

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return get_or_load(key(*args, **kwargs), lambda _key: func(*args, **kwargs))

        wrapper.cache = cache  # type: ignore[attr-defined]
        wrapper.cache_key = key  # type: ignore[attr-defined]
        return functools.update_wrapper(wrapper, func)  # type: ignore[return-value]

    return decorator
