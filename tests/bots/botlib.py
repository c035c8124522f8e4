"""Helpers for tests of bots that log in by key: waiting for the owner's prompt, approving, logging a bot in."""

from __future__ import annotations

import asyncio

from quicnprotochat.client import NodeClient
from quicnprotochat.client.accounts import Signer, key_login_token


async def wait_for_pending(owner: NodeClient, count: int = 1) -> list[bytes]:
    """The request ids once the owner's view shows `count` pending requests."""
    digest = b""
    for _ in range(50):
        view = await owner.bot_approval_wait(digest, timeout_ms=2000)
        digest = view.digest
        pending = [request.request_id for request in view.requests if request.state == "pending"]
        if len(pending) >= count:
            return pending
    raise AssertionError("no pending approval request showed up")


async def approved_key_login(
    owner: NodeClient, owner_name: str, client: NodeClient, bot: Signer, name: str = "helper"
) -> bytes:
    """A session token for `bot`, after `owner` approves it (the first time) from its client."""
    login = asyncio.ensure_future(key_login_token(client, bot, owner_name, name))
    (request_id,) = await wait_for_pending(owner)
    assert await owner.bot_approval_answer(request_id, True) == "approved"
    return await login
