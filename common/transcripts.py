"""What an identity key signs: proofs of possession during registration and login, and endpoint records.

Both sides build the same bytes here. Every transcript is domain-separated (a fixed context naming the purpose
and version). A login transcript binds the normalized username and the identity key, and covers the OPAQUE
message of that step, so a signature cannot be replayed for another user, key, purpose or login.
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


ENDPOINT_RECORD_CONTEXT = b"quicnprotochat endpoint record v1"


def endpoint_record_transcript(
    identity_key: bytes, endpoint_id: bytes, addresses: tuple[str, ...], relay_url: str | None, expires_at: int
) -> bytes:
    """What an identity key signs to publish its iroh endpoint (see `common.endpoint_record`): the iroh key that
    answers for it, where to reach it, and until when. Every field is length-prefixed, so no two records share
    a transcript."""
    return b"".join(
        (
            _field(ENDPOINT_RECORD_CONTEXT),
            _field(identity_key),
            _field(endpoint_id),
            struct.pack(">Q", expires_at),
            _field((relay_url or "").encode("utf-8")),
            struct.pack(">I", len(addresses)),
            *(_field(address.encode("ascii")) for address in addresses),
        )
    )


KEY_LOGIN_CONTEXT = b"quicnprotochat bot key login v1: authRespond"


def key_login_transcript(node_fingerprint: str, identity_key: bytes, nonce: int) -> bytes:
    """What a bot signs to answer `authChallenge`: bound to the node (its certificate fingerprint, so a signature
    made for one node is refused by another), the bot's key, and the nonce the node issued (used once)."""
    return b"".join(
        (
            _field(KEY_LOGIN_CONTEXT),
            _field(node_fingerprint.lower().encode("ascii")),
            _field(identity_key),
            struct.pack(">Q", nonce),
        )
    )
