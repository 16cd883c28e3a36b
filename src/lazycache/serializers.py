"""Value serializers shared by the stores that keep bytes or text (SQL key-value tables, Redis).

A serializer is a `Serializer(dumps, loads, binary, name)`; pick one by name
("json", "pickle", "msgpack"), pass a `Serializer`, or pass your own
`(dumps, loads)` pair (binary if `dumps(None)` returns bytes or fails; build a
`Serializer(..., binary=...)` to say it outright).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Union

Encoded = Union[str, bytes]


class SerializationError(ValueError):
    """A value could not be encoded (or decoded); `key` names the entry it belongs to."""

    def __init__(self, key: Any, cause: BaseException) -> None:
        self.key = key
        self.cause = cause
        super().__init__(f"cannot serialize the value of {key!r}: {cause!r}")


@dataclass(frozen=True)
class Serializer:
    dumps: Callable[[Any], Encoded]
    loads: Callable[[Any], Any]
    binary: bool
    """Whether `dumps` returns bytes (stored as a binary column) rather than text."""
    name: str = "custom"

    def encode(self, key: Any, value: Any) -> Encoded:
        """`dumps(value)`, with a failure reported as SerializationError naming key."""
        try:
            return self.dumps(value)
        except Exception as exc:
            raise SerializationError(key, exc) from exc


# One encoder for every call: json.dumps with non-default options builds a new
# JSONEncoder each time, a quarter of the cost of encoding a small record.
_json_dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


JSON = Serializer(_json_dumps, json.loads, binary=False, name="json")
PICKLE = Serializer(_pickle_dumps, pickle.loads, binary=True, name="pickle")


def _msgpack() -> Serializer:
    try:
        import msgpack
    except ImportError:
        raise ImportError(
            "the msgpack serializer needs msgpack: pip install 'lazywritercache[msgpack]'"
        ) from None
    return Serializer(
        msgpack.packb, lambda data: msgpack.unpackb(data, raw=False), binary=True, name="msgpack"
    )


SerializerSpec = Union[str, Serializer, tuple[Callable[[Any], Encoded], Callable[[Any], Any]]]


def get_serializer(spec: SerializerSpec) -> Serializer:
    """A Serializer from a name ("json", "pickle", "msgpack"), a Serializer, or a (dumps, loads) pair."""
    if isinstance(spec, Serializer):
        return spec
    if isinstance(spec, str):
        if spec == "json":
            return JSON
        if spec == "pickle":
            return PICKLE
        if spec == "msgpack":
            return _msgpack()
        raise ValueError(
            f"unknown serializer {spec!r}: use 'json', 'pickle', 'msgpack' or a (dumps, loads) pair"
        )
    if isinstance(spec, tuple) and len(spec) == 2 and all(map(callable, spec)):
        dumps, loads = spec
        try:  # the store must know the column type before the first value arrives
            binary = isinstance(dumps(None), bytes)
        except Exception:
            binary = True
        return Serializer(dumps, loads, binary=binary, name="custom")
    raise TypeError(
        f"serializer must be a name, a Serializer or a (dumps, loads) pair, not {spec!r}"
    )
