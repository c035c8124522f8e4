"""Registering and logging in over OPAQUE, with the identity key proving possession at each finish; and bots'
login by key alone (`key_login_token`).

`Signer` is what holds the identity key: the native `Vault` (whose private key never leaves Rust) fits it.
The password-hardening step (Argon2id) runs on a worker thread so the event loop keeps serving other calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from quicnprotochat.client.node_client import NodeClient
from quicnprotochat.common.errors import Unauthenticated
from quicnprotochat.common.transcripts import key_login_transcript, login_transcript, register_transcript
from quicnprotochat.common.usernames import normalize_username
from quicnprotochat.native import OpaqueClientLogin, OpaqueClientRegistration, OpaqueError


class Signer(Protocol):
    @property
    def identity_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


async def register(node: NodeClient, signer: Signer, username: str, password: str) -> None:
    """Creates the account `username` bound to the signer's identity key."""
    username = normalize_username(username)
    registration, request = OpaqueClientRegistration.start(password.encode())
    response = await node.opaque_register_start(username, request)
    upload, _export_key = await asyncio.to_thread(registration.finish, response)
    signature = signer.sign(register_transcript(username, signer.identity_key, upload))
    await node.opaque_register_finish(username, upload, signer.identity_key, signature)


async def login_token(node: NodeClient, signer: Signer, username: str, password: str) -> bytes:
    """One OPAQUE login; returns the session token. A wrong password or unknown user: Unauthenticated."""
    username = normalize_username(username)
    login, request = OpaqueClientLogin.start(password.encode())
    response = await node.opaque_login_start(username, request)
    try:
        finalization, _session_key = await asyncio.to_thread(login.finish, response)
    except OpaqueError:
        raise Unauthenticated("login failed: wrong username or password") from None
    signature = signer.sign(login_transcript(username, signer.identity_key, finalization))
    return await node.opaque_login_finish(username, finalization, signer.identity_key, signature)


@dataclass
class Session:
    """A logged-in account on one NodeClient. When the node rejects the token (expired or revoked), the next
    authenticated call logs in again with the same credentials and is retried once."""

    node: NodeClient
    signer: Signer
    username: str
    _password: str

    @property
    def identity_key(self) -> bytes:
        return self.signer.identity_key

    async def refresh(self) -> None:
        self.node.access_token = await login_token(self.node, self.signer, self.username, self._password)

    async def logout(self) -> None:
        self.node.relogin = None
        await self.node.logout()
        self.node.access_token = None


async def login(node: NodeClient, signer: Signer, username: str, password: str) -> Session:
    session = Session(node, signer, normalize_username(username), password)
    await session.refresh()
    node.relogin = session.refresh
    return session


async def key_login_token(node: NodeClient, signer: Signer, owner: str, name: str) -> bytes:
    """A session token for a bot by its key alone: the node's nonce, signed with the node's fingerprint (so the
    signature is good for this node only). The first time, this waits until `owner` approves the key from one
    of their clients; `Forbidden` if they refuse or do not answer in time."""
    nonce = await node.auth_challenge(signer.identity_key, owner, name)
    if node.fingerprint is None:  # the connection dropped after the challenge: its nonce is still good
        await node.connect()
    fingerprint = node.fingerprint
    assert fingerprint is not None  # connected: the node's pinned certificate fingerprint
    signature = signer.sign(key_login_transcript(fingerprint, signer.identity_key, nonce))
    return await node.auth_respond(signer.identity_key, nonce, signature)
