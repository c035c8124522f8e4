"""Signing in: registration on first use, OPAQUE login, and the sealed session-token cache."""

from __future__ import annotations

import asyncio
import time

from quicnprotochat.client import accounts
from quicnprotochat.client.state import CachedSession
from quicnprotochat.common.errors import AlreadyExists, Forbidden, NotFound, Unauthenticated

from .context import ChatContext
from .errors import LoginFailed, PasswordRequired

# Assumed session lifetime for the token cache: the node does not say (its default is 24 h). A token the node
# refuses earlier is simply replaced by a new login.
SESSION_CACHE_SECONDS = 12 * 3600

SETTING_USERNAME = "account.username"
_SETTING_REGISTERED = "account.registered"


class Session:
    """Gets the node connection an access token, and a new one when the node refuses the old."""

    def __init__(self, context: ChatContext) -> None:
        self._context = context
        source = context.config.password
        self._password: str | None = source if isinstance(source, str) else None

    async def _get_password(self) -> str:
        if self._password is not None:
            return self._password
        source = self._context.config.password
        if callable(source):
            self._password = await asyncio.to_thread(source)
            return self._password
        raise PasswordRequired(
            f"no valid session for {self._context.username} is cached: an account password is needed"
        )

    async def sign_in(self, first_use: bool) -> None:
        context = self._context
        node, store, username = context.node, context.store, context.username
        cached = await asyncio.to_thread(context.state.tokens.load)
        if (
            not context.config.fresh_login
            and context.config.bot_owner is None  # a key login costs no password and no Argon2: done at every start
            and cached is not None
            and cached.is_valid()
            and cached.username == username
            and cached.node_address == node.address
        ):
            node.access_token = cached.token
        else:
            taken = False
            bot = context.config.bot_owner is not None
            if context.config.register and not bot and await store.get_setting(_SETTING_REGISTERED) is None:
                password = await self._get_password()
                try:
                    await accounts.register(node, context.vault, username, password)
                except AlreadyExists:
                    # Taken, or registered by an earlier run of this state dir that stopped before recording
                    # it: the login below tells which.
                    taken = True
            try:
                await self._login()
            except LoginFailed:
                if taken:
                    raise LoginFailed(f"the username {username!r} is already taken on this node") from None
                raise
        if first_use:
            await store.set_setting(SETTING_USERNAME, username)
        node.relogin = self._relogin

    async def _login(self) -> None:
        context = self._context
        owner = context.config.bot_owner
        if owner is not None:  # a bot: no account, no password, no token cache
            context.node.access_token = await self._key_login(owner)
            return
        password = await self._get_password()
        try:
            token = await accounts.login_token(context.node, context.vault, context.username, password)
        except Unauthenticated:
            raise LoginFailed(
                f"login as {context.username} failed: wrong username or password, or the account belongs to "
                "another identity key (another state directory)"
            ) from None
        context.node.access_token = token
        await context.store.set_setting(_SETTING_REGISTERED, "1")
        session = CachedSession(
            token=token,
            expires_at=time.time() + SESSION_CACHE_SECONDS,
            username=context.username,
            node_address=context.node.address,
        )
        await asyncio.to_thread(context.state.tokens.save, session)

    async def _key_login(self, owner: str) -> bytes:
        context = self._context
        try:
            return await accounts.key_login_token(context.node, context.vault, owner, context.username)
        except (Forbidden, NotFound, Unauthenticated) as error:
            raise LoginFailed(f"key login as bot {context.username} of {owner} failed: {error.reason}") from None

    async def _relogin(self) -> None:
        await asyncio.to_thread(self._context.state.tokens.clear)
        await self._login()
