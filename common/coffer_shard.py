"""A coffer shard on the wire: one bot's secrets as a CBOR map of names to typed values (no I/O).

Values keep their TOML type: text, integers, floats and booleans as CBOR's own types; an offset date-time as tag 0
(RFC 8949, an RFC 3339 string); a date as tag 1004 (RFC 8943, an RFC 3339 full-date). TOML's local date-time and
local time have no registered CBOR tag, so they carry this project's own tags over their ISO 8601 text.

The node seals the encoded shard to the bot's hybrid key with HPKE `info` = `COFFER_INFO_LABEL | identity key`, so
that a shard can never be taken for a message envelope (whose label differs) or for another bot's shard.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import cbor2

CofferValue = str | int | float | bool | dt.datetime | dt.date | dt.time
"""What a secret can be: TOML's scalar types (a `datetime` without tzinfo is TOML's local date-time)."""

COFFER_INFO_LABEL = b"quicnprotochat coffer v1"
LOCAL_DATETIME_TAG = 0x71700001
"""Our tag for a TOML local date-time: ISO 8601 text without an offset, e.g. "2024-05-01T07:30:00"."""
LOCAL_TIME_TAG = 0x71700002
"""Our tag for a TOML local time: ISO 8601 text, e.g. "07:30:00"."""


class CofferShardError(ValueError):
    """Bytes that are not a coffer shard; the message says what is wrong, never a value."""


def coffer_info(identity_key: bytes) -> bytes:
    """The HPKE `info` a shard for `identity_key` is sealed with."""
    return COFFER_INFO_LABEL + bytes(identity_key)


def is_coffer_value(value: object) -> bool:
    return isinstance(value, str | int | float | bool | dt.datetime | dt.date | dt.time)


def _wire_value(value: CofferValue) -> Any:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else cbor2.CBORTag(LOCAL_DATETIME_TAG, value.isoformat())
    if isinstance(value, dt.time):
        return cbor2.CBORTag(LOCAL_TIME_TAG, value.isoformat())
    return value


def encode_shard(secrets: Mapping[str, CofferValue]) -> bytes:
    """The shard's CBOR (canonical: keys sorted, floats in their shortest exact form)."""
    return bytes(cbor2.dumps({name: _wire_value(value) for name, value in secrets.items()}, canonical=True))


def _tag_hook(tag: cbor2.CBORTag, _immutable: bool) -> Any:
    try:
        if tag.tag == LOCAL_DATETIME_TAG and isinstance(tag.value, str):
            value = dt.datetime.fromisoformat(tag.value)
            if value.tzinfo is None:
                return value
        elif tag.tag == LOCAL_TIME_TAG and isinstance(tag.value, str):
            moment = dt.time.fromisoformat(tag.value)
            if moment.tzinfo is None:
                return moment
    except ValueError:
        pass
    raise CofferShardError(f"the shard holds a CBOR tag {tag.tag} this client does not know, or a malformed one")


def decode_shard(data: bytes) -> dict[str, CofferValue]:
    """The secrets of an (opened) shard, each with its type; CofferShardError for anything else."""
    try:
        decoded = cbor2.loads(bytes(data), tag_hook=_tag_hook)
    except CofferShardError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        raise CofferShardError("the shard is not well-formed CBOR") from None
    if not isinstance(decoded, dict):
        raise CofferShardError("a shard is a CBOR map of names to values")
    secrets: dict[str, CofferValue] = {}
    for name, value in decoded.items():
        if not isinstance(name, str):
            raise CofferShardError("a shard's names are text")
        if not is_coffer_value(value):
            raise CofferShardError(f"the secret {name!r} has a type a coffer does not hold ({type(value).__name__})")
        secrets[name] = value
    return secrets
