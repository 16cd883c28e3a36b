"""Value serializers shared by the stores that keep bytes or text (SQL key-value tables, Redis).

A serializer is a `Serializer(dumps, loads, binary, name)`; pick one by name
("json", "pickle", "msgpack"), pass a `Serializer`, or pass your own
`(dumps, loads)` pair (binary if `dumps(None)` returns bytes or fails; build a
`Serializer(..., binary=...)` to say it outright).

A value reads back the same whether it is still in memory or was evicted and read
through: the "json" and "msgpack" serializers refuse, with a `RoundTripError` saying
where inside the value, anything they would give back changed. JSON keeps dicts with
str keys, lists, str, int, finite floats, bool and None; msgpack also keeps bytes,
non-finite floats and dict keys of any of its scalar types (int, float, bool, None,
bytes, str), with ints from -2**63 to 2**64 - 1. Both refuse tuples (they read back as
lists), subclasses (an `IntEnum`, an `OrderedDict`: they read back as the base type),
sets and other objects; JSON also refuses non-str dict keys (`{1: "a"}` would read back
as `{"1": "a"}`). "pickle" keeps anything picklable. A `(dumps, loads)` pair of your own
is used as given.

The check runs where values are encoded, in the writer's batch, so `cache[key] = value`
costs nothing more; a refused value takes the error path (`on_write_error`, naming its
key) instead of being stored, and is not refused at the assignment. After the C encoder
has accepted a value, a loop checks the exact type of each node (msgpack's own
`strict_types` refuses tuples and subclasses, so it walks only an encoding holding
bytes): encoding a small record takes about 1.5 times as long as unchecked.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Union

Encoded = Union[str, bytes]


class SerializationError(ValueError):
    """A value could not be encoded (or decoded); `key` names the entry it belongs to."""

    def __init__(self, key: Any, cause: BaseException) -> None:
        self.key = key
        self.cause = cause
        # A RoundTripError already says where and why in words; others are shown as raised.
        why = str(cause) if isinstance(cause, RoundTripError) else repr(cause)
        super().__init__(f"cannot serialize the value of {key!r}: {why}")


class RoundTripError(TypeError, ValueError):
    """A value the serializer would not give back as it is (or cannot encode at all).

    `path` is where inside the value: the dict keys and list indices leading there, `()`
    for the value itself. A TypeError and a ValueError, as the encoders raise either.
    """

    def __init__(self, path: tuple[Any, ...], problem: str) -> None:
        self.path = path
        where = "value" + "".join(f"[{step!r}]" for step in path)
        super().__init__(f"{where} {problem}")


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
compact_json: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""`json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`, with one
encoder for every call: the JSON serializer's, the journal's keys' and coherence messages'."""


@dataclass(frozen=True)
class _Types:
    """The types a format gives back exactly as they were written, and how to explain the others."""

    name: str
    scalars: frozenset[type]
    keys: frozenset[type]
    """The exact types of dict keys it gives back."""
    becomes: tuple[tuple[tuple[type, ...], str], ...]
    """(types, what they read back as) for the values it encodes as something else."""
    key_advice: str
    scalar_problem: Callable[[Any], str | None]
    """Why a value of one of the scalar types is not given back (a NaN in JSON), or None."""
    key_read_back: Callable[[Any], Any]
    """What a dict key of another type reads back as; raises if it does not."""

    def faithful(self, value: Any) -> bool:
        """Whether `value` is made only of these exact types (the encoder having taken it).

        The encoder has already refused cycles, non-finite floats (JSON) and out-of-range
        ints (msgpack), so what is left is exact types: the keys of a dict in C, values in
        one loop, containers on a stack (no recursion: any depth the encoder took).
        """
        scalars = self.scalars
        if type(value) in scalars:
            return True
        keys_cover = self.keys.issuperset
        stack = [value]
        pop, push = stack.pop, stack.append
        while stack:
            node = pop()
            if type(node) is dict:
                if not keys_cover(map(type, node)):
                    return False
                node = node.values()
            elif type(node) is not list:
                return False
            for item in node:
                kind = type(item)
                if kind in scalars:
                    continue
                if kind is not dict and kind is not list:
                    return False
                push(item)
        return True

    def trouble(self, value: Any, path: tuple[Any, ...] = ()) -> RoundTripError | None:
        """The first node of `value` not given back as it is (depth first), or None."""
        try:
            return self._trouble(value, path, set())
        except RecursionError:  # nested too deep to explain: the encoder's error stands
            return None

    def _trouble(self, value: Any, path: tuple[Any, ...], open_: set[int]) -> RoundTripError | None:
        kind = type(value)
        if kind is dict or kind is list:
            if id(value) in open_:
                return RoundTripError(path, "contains itself")
            open_.add(id(value))
            if kind is dict:
                for key in value:
                    problem = self._key_problem(key)
                    if problem:
                        return RoundTripError(path, problem)
                steps: Iterable[tuple[Any, Any]] = value.items()
            else:
                steps = enumerate(value)
            for step, item in steps:
                found = self._trouble(item, (*path, step), open_)
                if found is not None:
                    return found
            open_.discard(id(value))
            return None
        problem = self.scalar_problem(value) if kind in self.scalars else self._type_problem(value)
        return None if problem is None else RoundTripError(path, problem)

    def _type_problem(self, value: Any) -> str:
        name = type(value).__name__
        kind = f"{'an' if name[0] in 'AEIOUaeiou' else 'a'} {name}"
        for types, becomes in self.becomes:
            if isinstance(value, types):
                return (
                    f"is {kind}, which {self.name} reads back as {becomes}; "
                    f"use {becomes}, or the pickle serializer"
                )
        return f"is {kind}, which {self.name} cannot represent; use the pickle serializer"

    def _key_problem(self, key: Any) -> str | None:
        if type(key) in self.keys and self.scalar_problem(key) is None:
            return None
        try:
            read = self.key_read_back(key)
            became = f"the {type(read).__name__} {read!r}"
        except Exception:  # not encodable, or not read back at all
            became = None
        what = f"has the key {key!r} ({type(key).__name__}), which {self.name}"
        what += f" reads back as {became}" if became else " does not give back"
        return f"{what}; use {self.key_advice} keys, or the pickle serializer"


def _json_key_read_back(key: Any) -> Any:
    """What the lenient encoder makes of a dict key: '1' for 1, 'null' for None."""
    return next(iter(json.loads(json.dumps({key: 0}))))


def _msgpack_key_read_back(key: Any) -> Any:
    """What plain msgpack makes of a dict key: 1 for an IntEnum; a tuple's list raises."""
    import msgpack

    return next(iter(msgpack.unpackb(msgpack.packb({key: 0}), raw=False, strict_map_key=False)))


def _json_scalar_problem(value: Any) -> str | None:
    if type(value) is float and not math.isfinite(value):
        return f"is {value!r}, which JSON cannot represent; use None, or the msgpack or pickle serializer"
    return None


_MSGPACK_INTS = (-(2**63), 2**64)


def _msgpack_scalar_problem(value: Any) -> str | None:
    if type(value) is int and not _MSGPACK_INTS[0] <= value < _MSGPACK_INTS[1]:
        return "is an int out of msgpack's range (-2**63 to 2**64 - 1); use the pickle serializer"
    return None


_NONE = type(None)
_AS_LIST = ((list, tuple), "a list")
_AS_DICT = ((dict,), "a dict")

_JSON_TYPES = _Types(
    "JSON",
    scalars=frozenset({str, int, float, bool, _NONE}),
    keys=frozenset({str}),
    becomes=(_AS_LIST, _AS_DICT, ((str,), "a str"), ((int,), "an int"), ((float,), "a float")),
    key_advice="str",
    scalar_problem=_json_scalar_problem,
    key_read_back=_json_key_read_back,
)


def _checked(
    types: _Types,
    encode: Callable[[Any], Encoded],
    may_differ: Callable[[Any], object] | None = None,
) -> Callable[[Any], Encoded]:
    """`encode`, refusing with a RoundTripError the values `types` says would not read back the same.

    The encoder runs first, and refuses what it cannot encode; then the value's types are
    checked (unless `may_differ(data)` says the encoding cannot hide a change). Only a
    refused value is walked again, slowly, to say where the trouble is.
    """
    faithful = types.faithful

    def dumps(value: Any) -> Encoded:
        try:
            data = encode(value)
        except Exception as exc:
            found = types.trouble(value)
            if found is None:
                raise
            raise found from exc
        if (may_differ is None or may_differ(data)) and not faithful(value):
            raise types.trouble(value) or RoundTripError(
                (), f"is not made of {types.name} types only; use the pickle serializer"
            )
        return data

    return dumps


_json_dumps: Callable[[Any], str] = _checked(_JSON_TYPES, compact_json)  # type: ignore[assignment]


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


JSON = Serializer(_json_dumps, json.loads, binary=False, name="json")
PICKLE = Serializer(_pickle_dumps, pickle.loads, binary=True, name="pickle")


_MSGPACK_TYPES = _Types(
    "msgpack",
    scalars=frozenset({str, bytes, int, float, bool, _NONE}),
    keys=frozenset({str, bytes, int, float, bool, _NONE}),
    becomes=(
        _AS_LIST,
        _AS_DICT,
        ((str,), "a str"),
        ((bytes, bytearray, memoryview), "bytes"),
        ((int,), "an int"),
        ((float,), "a float"),
    ),
    key_advice="str, bytes, int, float, bool or None",
    scalar_problem=_msgpack_scalar_problem,
    key_read_back=_msgpack_key_read_back,
)


# A bin (bytes) object's encoding starts with one of these bytes: an encoding without any
# holds no bytearray or memoryview (which msgpack writes as bytes even with strict_types).
_MSGPACK_BIN = re.compile(b"[\xc4-\xc6]").search


def _msgpack() -> Serializer:
    try:
        import msgpack
    except ImportError:
        raise ImportError(
            "the msgpack serializer needs msgpack: pip install 'lazywritercache[msgpack]'"
        ) from None

    # strict_types: tuples and subclasses go to `default` (there is none: TypeError), in C.
    # One Packer per thread: msgpack.packb makes a new one, and its buffer, every call.
    packers = threading.local()

    def packb(value: Any) -> bytes:
        try:
            pack = packers.pack
        except AttributeError:
            pack = packers.pack = msgpack.Packer(strict_types=True).pack
        packed: bytes = pack(value)  # msgpack has no type information
        return packed

    def loads(data: bytes) -> Any:
        # strict_map_key=False: the int, float, bool and None keys it wrote read back
        # (by default msgpack refuses them, a guard against hash flooding by foreign data).
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    return Serializer(
        _checked(_MSGPACK_TYPES, packb, _MSGPACK_BIN), loads, binary=True, name="msgpack"
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
