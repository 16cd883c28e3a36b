"""The coherence message format: what every channel sends and reads, whatever carries it.

One message per published batch (PostgreSQL: several NOTIFYs in one transaction when
the payload would exceed 8000 bytes): a JSON object
`{"v": 1, "from": "<publisher id>", "keys": [...]}`. The publisher's id is random per
channel object, and a subscriber skips the messages carrying its own. With
`keys="json"` (default) keys travel as JSON: str, int, float, bool and None as
themselves, bytes as `{"b": "<base64>"}`, tuples as `{"t": [...]}` (recursively), so
they come back as the same Python objects. A key of another type cannot be named in
JSON: the batch is then published as `{"all": true}` (every other cache drops all
its clean entries) and an ERROR is logged once; pass `keys="pickle"` for such keys
(`{"p": ["<base64 pickle>", ...]}`; only for a channel nobody untrusted can publish
on: unpickling runs code). A subscriber that cannot decode a message (malformed, or
pickled while it expects JSON) treats it as `{"all": true}` and logs a WARNING.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Sequence
from typing import Any, Final

from ..serializers import compact_json

__all__ = [
    "ALL_KEYS",
    "KEY_FORMATS",
    "all_message",
    "decode_message",
    "encode_keys",
    "encode_message",
    "envelope",
]

KEY_FORMATS = ("json", "pickle")
"""How keys may travel: as JSON (default; str, int, float, bool, None, bytes, tuples) or pickled."""

ALL_KEYS: Final = object()
"""What `decode_message` returns for a message that invalidates everything."""


def _key_to_json(key: Any) -> Any:
    if key is None or isinstance(key, (str, bool, int)):
        return key
    if isinstance(key, float):
        if key != key or key in (float("inf"), float("-inf")):
            raise TypeError(f"{key!r} has no JSON form")
        return key
    if isinstance(key, bytes):
        return {"b": base64.b64encode(key).decode("ascii")}
    if type(key) is tuple:
        return {"t": [_key_to_json(item) for item in key]}
    raise TypeError(f"a {type(key).__name__} key has no JSON form")


def _key_from_json(item: Any) -> Any:
    if isinstance(item, dict):
        if "b" in item:
            return base64.b64decode(item["b"])
        if "t" in item:
            return tuple(_key_from_json(part) for part in item["t"])
        raise ValueError(f"unknown key form {item!r}")
    if isinstance(item, list):
        raise ValueError("a list is not a key")
    return item


def encode_keys(keys: Sequence[Any], key_format: str) -> list[str]:
    """Each key as a JSON text (for key_format "json") or a base64 pickle ("pickle"); TypeError if impossible."""
    if key_format == "pickle":
        return [
            json.dumps(
                base64.b64encode(pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)).decode(
                    "ascii"
                )
            )
            for key in keys
        ]
    return [compact_json(_key_to_json(key)) for key in keys]


def encode_message(sender: str, keys: Sequence[Any], key_format: str) -> str:
    """One message naming every key (the same text as envelope(sender, encode_keys(keys)), made faster)."""
    if key_format == "pickle":
        field, items = (
            "p",
            [
                base64.b64encode(pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)).decode(
                    "ascii"
                )
                for key in keys
            ],
        )
    else:
        field, items = "keys", [_key_to_json(key) for key in keys]
    return compact_json({"v": 1, "from": sender, field: items})


def envelope(sender: str, encoded: Sequence[str], key_format: str) -> str:
    """A message naming the encoded keys (from encode_keys)."""
    field = "p" if key_format == "pickle" else "keys"
    return f'{{"v":1,"from":"{sender}","{field}":[{",".join(encoded)}]}}'


def all_message(sender: str) -> str:
    """A message telling every other cache to drop all its clean entries."""
    return f'{{"v":1,"from":"{sender}","all":true}}'


def decode_message(data: Any, key_format: str) -> tuple[str | None, Any]:
    """(sender, keys) of a message, keys being a list or ALL_KEYS; raises ValueError if it cannot be read."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    message = json.loads(data)
    if not isinstance(message, dict) or message.get("v") != 1:
        raise ValueError("not a lazycache coherence message")
    sender = message.get("from")
    if message.get("all"):
        return sender, ALL_KEYS
    if "keys" in message:
        return sender, [_key_from_json(item) for item in message["keys"]]
    if "p" in message:
        if key_format != "pickle":
            raise ValueError(
                "pickled keys, but this channel reads keys='json' (it never unpickles)"
            )
        return sender, [pickle.loads(base64.b64decode(item)) for item in message["p"]]
    raise ValueError("a message with neither keys nor all")
