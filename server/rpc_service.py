"""The NodeService capability: one instance per connection, thin handlers over the node's services.

Each handler parses its parameters, applies the rate limits, authenticates the caller where the method needs it,
calls a service and shapes the result. RpcErrors raised anywhere travel back to the caller as `code: reason`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from quicnprotochat.common.schema import node_schema
from quicnprotochat.server.node_state import NodeState
from quicnprotochat.server.services.sessions import Caller, auth_absent
from quicnprotochat.server.store.groups import GroupDelivery

if TYPE_CHECKING:
    from quicnprotochat.server.peer import Peer
    from quicnprotochat.server.store import InboxMessage

_NodeServiceServer: Any = node_schema().NodeService.Server


def _envelopes(messages: list[InboxMessage]) -> list[dict[str, Any]]:
    return [{"seq": message.seq, "data": message.payload} for message in messages]


def _deliveries(items: Any) -> list[GroupDelivery]:
    return [GroupDelivery(bytes(item.recipientKey), bytes(item.channelId), bytes(item.payload)) for item in items]


class NodeServiceImpl(_NodeServiceServer):  # type: ignore[misc]
    def __init__(self, node: NodeState, peer: Peer) -> None:
        self._node = node
        self._peer = peer
        # Identifies this connection to services that keep per-connection state (OPAQUE login in progress).
        self._connection_id = os.urandom(16)

    # -- guards ------------------------------------------------------------------------------------------------

    def _limit_address(self) -> None:
        self._node.limiter.address.check(self._peer.host, "this address")

    async def _caller(self, auth: Any) -> Caller:
        self._limit_address()
        caller = await self._node.sessions.authenticate(auth)
        self._node.limiter.identity.check(caller.identity_key, "this identity")
        return caller

    def _limit_login(self, username: str) -> None:
        self._node.limiter.login_address.check(self._peer.host, "login attempts from this address")
        self._node.limiter.login_username.check(username.casefold(), "login attempts for this username")

    # -- public ------------------------------------------------------------------------------------------------

    async def health(self, _context: Any, **_params: Any) -> str:
        self._limit_address()
        return (await self._node.health.check()).status

    async def serverInfo(self, _context: Any, **_params: Any) -> dict[str, Any]:
        self._limit_address()
        return self._node.server_info()

    # -- accounts ----------------------------------------------------------------------------------------------

    async def opaqueRegisterStart(self, username: str, request: bytes, _context: Any, **_: Any) -> bytes:
        self._limit_address()
        self._limit_login(username)
        return await self._node.accounts.register_start(username, request)

    async def opaqueRegisterFinish(
        self, username: str, upload: bytes, identityKey: bytes, identitySig: bytes, _context: Any, **_: Any
    ) -> bool:
        self._limit_address()
        await self._node.accounts.register_finish(username, upload, identityKey, identitySig)
        return True

    async def opaqueLoginStart(self, username: str, request: bytes, _context: Any, **_: Any) -> bytes:
        self._limit_address()
        self._limit_login(username)
        return await self._node.accounts.login_start(self._connection_id, username, request)

    async def opaqueLoginFinish(
        self, username: str, finalization: bytes, identityKey: bytes, identitySig: bytes, _context: Any, **_: Any
    ) -> bytes:
        self._limit_address()
        return await self._node.accounts.login_finish(
            self._connection_id, username, finalization, identityKey, identitySig, b""
        )

    async def logout(self, auth: Any, _context: Any, **_: Any) -> None:
        caller = await self._caller(auth)
        await self._node.sessions.revoke(caller)

    async def resolveUser(self, username: str, auth: Any, _context: Any, **_: Any) -> bytes:
        await self._caller(auth)
        return await self._node.accounts.resolve_user(username) or b""

    async def resolveIdentity(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> str:
        await self._caller(auth)
        return await self._node.accounts.resolve_identity(identityKey) or ""

    # -- directories -------------------------------------------------------------------------------------------

    async def uploadKeyPackage(self, identityKey: bytes, package: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        return await self._node.directory.upload_key_package(caller, identityKey, package)

    async def fetchKeyPackage(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        await self._caller(auth)
        return await self._node.directory.fetch_key_package(identityKey)

    async def uploadHybridKey(
        self, identityKey: bytes, hybridPublicKey: bytes, auth: Any, _context: Any, **_: Any
    ) -> None:
        caller = await self._caller(auth)
        await self._node.directory.upload_hybrid_key(caller, identityKey, hybridPublicKey)

    async def fetchHybridKey(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        await self._caller(auth)
        return await self._node.directory.fetch_hybrid_key(identityKey)

    async def fetchHybridKeys(self, identityKeys: Any, auth: Any, _context: Any, **_: Any) -> list[bytes]:
        await self._caller(auth)
        return await self._node.directory.fetch_hybrid_keys([bytes(key) for key in identityKeys])

    async def publishEndpoint(self, identityKey: bytes, nodeAddr: bytes, auth: Any, _context: Any, **_: Any) -> None:
        caller = await self._caller(auth)
        await self._node.directory.publish_endpoint(caller, identityKey, nodeAddr)

    async def resolveEndpoint(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        await self._caller(auth)
        return await self._node.directory.resolve_endpoint(identityKey)

    # -- inboxes -----------------------------------------------------------------------------------------------

    async def enqueue(
        self,
        recipientKey: bytes,
        payload: bytes,
        channelId: bytes,
        version: int,
        auth: Any,
        _context: Any,
        idempotencyKey: bytes = b"",
        **_: Any,
    ) -> int:
        key = bytes(idempotencyKey)
        if self._node.config.allow_sealed_sender and not channelId and auth_absent(auth):
            # Sealed sender: the node does not learn who sends; the connection's own bucket bounds the rate.
            self._limit_address()
            self._node.limiter.sealed_connection.check(self._connection_id, "sealed-sender delivery")
            inboxes = self._node.inboxes
            return await inboxes.enqueue(None, recipientKey, payload, channelId, version, key, self._connection_id)
        caller = await self._caller(auth)
        return await self._node.inboxes.enqueue(caller, recipientKey, payload, channelId, version, key)

    async def batchEnqueue(
        self,
        recipientKeys: Any,
        payload: bytes,
        channelId: bytes,
        version: int,
        auth: Any,
        _context: Any,
        idempotencyKey: bytes = b"",
        **_: Any,
    ) -> list[int]:
        caller = await self._caller(auth)
        recipients = [bytes(key) for key in recipientKeys]
        inboxes = self._node.inboxes
        return await inboxes.batch_enqueue(caller, recipients, payload, channelId, version, bytes(idempotencyKey))

    async def fetch(
        self, recipientKey: bytes, channelId: bytes, version: int, auth: Any, limit: int, _context: Any, **_: Any
    ) -> list[dict[str, Any]]:
        caller = await self._caller(auth)
        return _envelopes(await self._node.inboxes.fetch(caller, recipientKey, channelId, version, limit))

    async def fetchWait(
        self,
        recipientKey: bytes,
        channelId: bytes,
        version: int,
        timeoutMs: int,
        auth: Any,
        limit: int,
        _context: Any,
        **_: Any,
    ) -> list[dict[str, Any]]:
        return await self._wait(recipientKey, channelId, version, timeoutMs, auth, limit, remove=True)

    async def peekWait(
        self,
        recipientKey: bytes,
        channelId: bytes,
        version: int,
        timeoutMs: int,
        auth: Any,
        limit: int,
        _context: Any,
        **_: Any,
    ) -> list[dict[str, Any]]:
        return await self._wait(recipientKey, channelId, version, timeoutMs, auth, limit, remove=False)

    async def _wait(
        self, recipient: bytes, channel: bytes, version: int, timeout_ms: int, auth: Any, limit: int, *, remove: bool
    ) -> list[dict[str, Any]]:
        caller = await self._caller(auth)
        inboxes = self._node.inboxes
        return _envelopes(
            await inboxes.fetch_wait(caller, recipient, channel, version, timeout_ms, limit, remove=remove)
        )

    async def peek(
        self, recipientKey: bytes, channelId: bytes, version: int, auth: Any, limit: int, _context: Any, **_: Any
    ) -> list[dict[str, Any]]:
        caller = await self._caller(auth)
        return _envelopes(await self._node.inboxes.peek(caller, recipientKey, channelId, version, limit))

    async def ack(
        self, recipientKey: bytes, channelId: bytes, version: int, seqUpTo: int, auth: Any, _context: Any, **_: Any
    ) -> None:
        caller = await self._caller(auth)
        await self._node.inboxes.ack(caller, recipientKey, channelId, version, seqUpTo)

    async def createChannel(self, peerKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        return await self._node.inboxes.create_channel(caller, peerKey)

    # -- health and counters -----------------------------------------------------------------------------------

    async def nodeStatus(self, _context: Any, **_params: Any) -> dict[str, Any]:
        self._limit_address()
        return await self._node.status()

    # -- groups ------------------------------------------------------------------------------------------------

    async def submitCommit(
        self,
        groupId: bytes,
        epoch: int,
        message: bytes,
        deliveries: Any,
        welcomes: Any,
        members: Any,
        auth: Any,
        _context: Any,
        **_: Any,
    ) -> dict[str, Any]:
        caller = await self._caller(auth)
        result = await self._node.groups.submit(
            caller,
            groupId,
            epoch,
            message,
            _deliveries(deliveries),
            _deliveries(welcomes),
            [bytes(key) for key in members],
        )
        return {"outcome": result.outcome, "epoch": result.epoch, "seqs": list(result.seqs)}
