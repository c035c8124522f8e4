"""Checks of call parameters that several services share."""

from __future__ import annotations

from quicnprotochat.common.errors import Forbidden, InvalidArgument
from quicnprotochat.common.schema import PROTOCOL_VERSION
from quicnprotochat.server.services.sessions import Caller

IDENTITY_KEY_BYTES = 32
CHANNEL_ID_BYTES = 16


def identity_key(data: bytes, name: str = "identityKey") -> bytes:
    if len(data) != IDENTITY_KEY_BYTES:
        raise InvalidArgument(f"{name} must be a {IDENTITY_KEY_BYTES}-byte Ed25519 public key, got {len(data)} bytes")
    return data


def own_identity_key(caller: Caller, data: bytes, what: str, name: str = "identityKey") -> bytes:
    if identity_key(data, name) != caller.identity_key:
        raise Forbidden(f"{what} only under your own identity key")
    return data


def channel_id(data: bytes) -> bytes:
    if data and len(data) != CHANNEL_ID_BYTES:
        raise InvalidArgument(f"channelId must be empty (default inbox) or {CHANNEL_ID_BYTES} bytes")
    return data


def wire_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise InvalidArgument(f"version must be {PROTOCOL_VERSION}, got {version}")
