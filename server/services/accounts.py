"""Accounts over OPAQUE (RFC 9807): registration, login, and the identity key's proof of possession."""

from __future__ import annotations

import hashlib
import hmac
import logging

from quicnprotochat.common.errors import AlreadyExists, InvalidArgument, Unauthenticated
from quicnprotochat.common.transcripts import login_transcript, register_transcript
from quicnprotochat.common.usernames import normalize_username
from quicnprotochat.native import NativeError, OpaqueServer, verify_ed25519
from quicnprotochat.server import store
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.sessions import SessionService
from quicnprotochat.server.store import AccountStore, BotKeyStore, Clock

log = logging.getLogger("quicnprotochat.server.accounts")

SIGNATURE_BYTES = 64
MAX_OPAQUE_MESSAGE_BYTES = 4096


def _opaque_message(name: str, data: bytes) -> bytes:
    if not data or len(data) > MAX_OPAQUE_MESSAGE_BYTES:
        raise InvalidArgument(f"{name} must be a non-empty OPAQUE message of at most {MAX_OPAQUE_MESSAGE_BYTES} bytes")
    return data


def _proves_possession(identity_key: bytes, transcript: bytes, signature: bytes) -> bool:
    return len(signature) == SIGNATURE_BYTES and verify_ed25519(identity_key, transcript, signature)


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        opaque: OpaqueServer,
        sessions: SessionService,
        *,
        login_state_seconds: float,
        clock: Clock,
        bot_keys: BotKeyStore | None = None,
    ) -> None:
        self._store = store
        self._bot_keys = bot_keys
        self._opaque = opaque
        self._sessions = sessions
        self._login_state_seconds = login_state_seconds
        self._clock = clock

    # -- registration ------------------------------------------------------------------------------------------

    async def register_start(self, raw_username: str, request: bytes) -> bytes:
        username = normalize_username(raw_username)
        try:
            return self._opaque.registration_start(username.encode(), _opaque_message("request", request))
        except NativeError:
            raise InvalidArgument("request is not an OPAQUE registration request") from None

    async def register_finish(self, raw_username: str, upload: bytes, identity_key: bytes, signature: bytes) -> None:
        username = normalize_username(raw_username)
        identity_key = validation.identity_key(identity_key)
        upload = _opaque_message("upload", upload)
        if not _proves_possession(identity_key, register_transcript(username, identity_key, upload), signature):
            raise Unauthenticated("identitySig does not prove possession of identityKey")
        try:
            password_file = OpaqueServer.registration_finish(upload)
        except NativeError:
            raise InvalidArgument("upload is not an OPAQUE registration upload") from None
        if self._bot_keys is not None and await self._bot_keys.get_bot_key(identity_key) is not None:
            # One kind of login per key: a bot's key never gets a password (nor a username in the directory).
            raise AlreadyExists("this identity key is a bot's key: it logs in by key, not with a password")
        try:
            await self._store.create_account(username, password_file, identity_key)
        except store.AlreadyExists as error:
            if error.field == "identity_key":
                raise AlreadyExists("this identity key already belongs to an account") from None
            raise AlreadyExists(f"the username {username!r} is taken") from None
        log.info("registered account %s", username)

    # -- login -------------------------------------------------------------------------------------------------

    def _state_id(self, connection_id: bytes, username: str) -> bytes:
        # Login state is per connection: someone else starting a login for the same name cannot clobber ours.
        return hashlib.sha256(connection_id + b"\x00" + username.encode()).digest()

    async def login_start(self, connection_id: bytes, raw_username: str, request: bytes) -> bytes:
        username = normalize_username(raw_username)
        request = _opaque_message("request", request)
        account = await self._store.get_account(username)
        try:
            # For an unknown username OPAQUE answers from a fake record: the reply looks like a real one.
            response, state = self._opaque.login_start(
                username.encode(), request, account.password_file if account else None
            )
        except NativeError:
            raise InvalidArgument("request is not an OPAQUE credential request") from None
        state_id = self._state_id(connection_id, username)
        await self._store.take_login_state(state_id)  # a new start replaces an unfinished one
        await self._store.put_login_state(state_id, username, state, self._clock() + self._login_state_seconds)
        return response

    async def login_finish(
        self,
        connection_id: bytes,
        raw_username: str,
        finalization: bytes,
        identity_key: bytes,
        signature: bytes,
        device_id: bytes,
    ) -> bytes:
        username = normalize_username(raw_username)
        identity_key = validation.identity_key(identity_key)
        finalization = _opaque_message("finalization", finalization)
        state = await self._store.take_login_state(self._state_id(connection_id, username))
        if state is None:
            raise Unauthenticated("no login in progress for this username on this connection, or it expired")
        try:
            OpaqueServer.login_finish(state.state, finalization)
        except NativeError:
            raise Unauthenticated("login failed: wrong username or password") from None
        account = await self._store.get_account(username)
        if account is None or not hmac.compare_digest(account.identity_key, identity_key):
            raise Unauthenticated("identityKey is not this account's identity key")
        if not _proves_possession(identity_key, login_transcript(username, identity_key, finalization), signature):
            raise Unauthenticated("identitySig does not prove possession of identityKey")
        return await self._sessions.issue(identity_key, device_id)

    async def resolve_user(self, raw_username: str) -> bytes | None:
        try:
            username = normalize_username(raw_username)
        except InvalidArgument:
            return None  # no account can have a malformed name
        return await self._store.resolve_username(username)

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        return await self._store.resolve_identity(validation.identity_key(identity_key))
