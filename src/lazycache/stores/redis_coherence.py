"""Moved to `lazycache.coherence.redis` (the channel), `lazycache.coherence.channel` and
`lazycache.coherence.message`; this old import path still works."""

from ..coherence.channel import ChannelCoherence
from ..coherence.message import (
    KEY_FORMATS,
    all_message,
    decode_message,
    encode_keys,
    encode_message,
    envelope,
)
from ..coherence.redis import RedisCoherence

__all__ = [
    "KEY_FORMATS",
    "ChannelCoherence",
    "RedisCoherence",
    "all_message",
    "decode_message",
    "encode_keys",
    "encode_message",
    "envelope",
]
