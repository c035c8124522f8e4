"""The owner's side of bot key login: every logged-in client of an account long-polls the node's approval
requests (`botApprovalWait`) and reports each new one (`BotApprovalRequested`) and each one decided, wherever
that happened (`BotApprovalDecided`: withdraw its prompt). The first answer from any client wins at the node."""

from __future__ import annotations

import asyncio

from quicnprotochat.client.bot_records import ApprovalState, BotApprovalRequest, BotKeyRecord
from quicnprotochat.common.errors import RpcError, Unimplemented

from .connection import ConnectionWatch, is_unreachable
from .context import ChatContext
from .events import BotApprovalDecided, BotApprovalRequested, ErrorEvent

REFUSED_RETRY_SECONDS = 5.0
"""A wait the node refuses (a rate limit, too many parked calls) is tried again after this long."""


class BotApprovals:
    def __init__(self, context: ChatContext, watch: ConnectionWatch) -> None:
        self._context = context
        self._watch = watch
        self._asked: dict[bytes, BotApprovalRequest] = {}
        self._task: asyncio.Future[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = self._context.bus.spawn(self._loop())

    async def _loop(self) -> None:
        context = self._context
        digest = b""
        while True:
            try:
                view = await context.node.bot_approval_wait(digest, context.config.wait_ms)
            except asyncio.CancelledError:
                raise
            except Unimplemented:
                return  # an older node: it has no key login to approve
            except (RpcError, OSError, TimeoutError) as error:
                if is_unreachable(error):
                    self._watch.lost(error)
                    await self._watch.wait_up()
                else:
                    context.emit(ErrorEvent(f"bot approvals: {getattr(error, 'reason', error)}", error))
                    await asyncio.sleep(REFUSED_RETRY_SECONDS)
                continue
            digest = view.digest
            self._show(view.requests)

    def _show(self, requests: list[BotApprovalRequest]) -> None:
        seen = set()
        for request in requests:
            seen.add(request.request_id)
            if request.state == "pending":
                if request.request_id not in self._asked:
                    self._asked[request.request_id] = request
                    self._context.emit(
                        BotApprovalRequested(request.request_id, request.identity_key, request.name, request.expires_at)
                    )
            elif request.request_id in self._asked:
                self._decided(request.request_id, request.state)
        for request_id in [request_id for request_id in self._asked if request_id not in seen]:
            self._decided(request_id, "expired")  # gone from the node's view: long decided

    def _decided(self, request_id: bytes, state: ApprovalState) -> None:
        request = self._asked.pop(request_id)
        self._context.emit(BotApprovalDecided(request_id, request.identity_key, request.name, state))

    async def answer(self, request_id: bytes, approve: bool) -> ApprovalState:
        """Answer a request; returns how it ended (another client's answer, if that came first)."""
        return await self._context.guard(self._context.node.bot_approval_answer(request_id, approve))

    async def bots(self) -> list[BotKeyRecord]:
        return await self._context.guard(self._context.node.list_bots())

    async def revoke(self, identity_key: bytes) -> None:
        await self._context.guard(self._context.node.revoke_bot(identity_key))
