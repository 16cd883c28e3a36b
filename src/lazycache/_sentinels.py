"""Sentinels shared by both cores and the Python layer (one object each, whichever core is active)."""

from __future__ import annotations

from typing import Final


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


MISSING: Final = _Sentinel("MISSING")
"""No value: the key is not in the cache (or is deleted)."""

ABSENT: Final = _Sentinel("ABSENT")
"""The key has no entry in memory at all (neither a value nor a pending delete)."""
