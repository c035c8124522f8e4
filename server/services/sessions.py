"""Session tokens: issued at login, checked on every authenticated call, revoked at logout.

A token is 32 random bytes; the store keeps only its SHA-256 with the identity, device, issue and expiry time.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from quicnprotochat.common.errors import InvalidArgument, Unauthenticated
from quicnprotochat.common.schema import AUTH_VERSION
from quicnprotochat.server.store import Clock, SessionStore

TOKEN_BYTES = 32
MAX_DEVICE_ID_BYTES = 64
# Every authenticated call needs its token's session. Looking it up in the store on each call was the largest
# cost of an enqueue under load (a read on the store's reader thread per call), so a session found in the store
# is trusted for this long (real seconds) before it is read again. A logout on this node takes effect at once;
# one on another node sharing the database (PostgreSQL), within this many seconds. Expiry is always checked.
SESSION_CACHE_SECONDS = 2.0
SESSION_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Caller:
    """Who an authenticated call acts for."""

    identity_key: bytes
    device_id: bytes
    token_hash: bytes = b""


def auth_absent(auth: Any) -> bool:
    """True when the caller sent no Auth at all (Cap'n Proto then reads the all-zero default struct)."""
    return auth is None or (int(auth.version) == 0 and not bytes(auth.accessToken))


def token_hash(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class SessionService:
    def __init__(self, store: SessionStore, lifetime_seconds: float, clock: Clock) -> None:
        self._store = store
        self._lifetime = lifetime_seconds
        self._clock = clock
        # token hash -> (caller, session expiry by the store's clock, trusted until by time.monotonic)
        self._cache: OrderedDict[bytes, tuple[Caller, float, float]] = OrderedDict()

    async def issue(self, identity_key: bytes, device_id: bytes) -> bytes:
        token = secrets.token_bytes(TOKEN_BYTES)
        await self._store.create_session(token_hash(token), identity_key, device_id, self._clock() + self._lifetime)
        return token

    async def authenticate(self, auth: Any) -> Caller:
        """The caller an `Auth` struct stands for; `unauthenticated:` unless it carries a live token."""
        if auth_absent(auth):
            raise Unauthenticated("this method needs auth with an access token")
        if int(auth.version) != AUTH_VERSION:
            raise InvalidArgument(f"auth.version must be {AUTH_VERSION}, got {int(auth.version)}")
        token = bytes(auth.accessToken)
        if not token:
            raise Unauthenticated("missing access token")
        if len(token) != TOKEN_BYTES:
            raise Unauthenticated("malformed access token")
        device_id = bytes(auth.deviceId)
        if len(device_id) > MAX_DEVICE_ID_BYTES:
            raise InvalidArgument(f"auth.deviceId is longer than {MAX_DEVICE_ID_BYTES} bytes")
        digest = token_hash(token)
        cached = self._cache.get(digest)
        if cached is not None:
            caller, expires_at, trusted_until = cached
            if expires_at > self._clock() and time.monotonic() < trusted_until:
                return caller
            del self._cache[digest]
        session = await self._store.get_session(digest)
        if session is None:
            raise Unauthenticated("unknown, expired or revoked access token; log in again")
        caller = Caller(session.identity_key, session.device_id, digest)
        self._cache[digest] = (caller, session.expires_at, time.monotonic() + SESSION_CACHE_SECONDS)
        if len(self._cache) > SESSION_CACHE_SIZE:
            self._cache.popitem(last=False)
        return caller

    async def revoke_identity(self, identity_key: bytes) -> None:
        """Ends every session of an identity at once (on this node; on others sharing the database within
        SESSION_CACHE_SECONDS)."""
        await self._store.revoke_sessions(identity_key)
        for digest in [digest for digest, entry in self._cache.items() if entry[0].identity_key == identity_key]:
            del self._cache[digest]

    async def revoke(self, caller: Caller) -> None:
        self._cache.pop(caller.token_hash, None)
        await self._store.revoke_session(caller.token_hash)
