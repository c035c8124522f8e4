"""What an identity key signs to prove possession during registration and login.

Both sides build the same bytes here. The transcript is domain-separated (a fixed context naming the purpose
and version), binds the normalized username and the identity key, and covers the OPAQUE message of that step,
so a signature cannot be replayed for another user, key, purpose or login.
"""

from __future__ import annotations

import hashlib
import struct

REGISTER_CONTEXT = b"quicnprotochat identity proof v1: opaqueRegisterFinish"
LOGIN_CONTEXT = b"quicnprotochat identity proof v1: opaqueLoginFinish"


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def identity_proof_transcript(context: bytes, username: str, identity_key: bytes, opaque_message: bytes) -> bytes:
    return b"".join(
        (
            _field(context),
            _field(username.encode("utf-8")),
            _field(identity_key),
            _field(hashlib.sha256(opaque_message).digest()),
        )
    )


def register_transcript(username: str, identity_key: bytes, upload: bytes) -> bytes:
    return identity_proof_transcript(REGISTER_CONTEXT, username, identity_key, upload)


def login_transcript(username: str, identity_key: bytes, finalization: bytes) -> bytes:
    return identity_proof_transcript(LOGIN_CONTEXT, username, identity_key, finalization)
