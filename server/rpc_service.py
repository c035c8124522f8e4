"""The NodeService capability: one instance per connection, thin handlers over the node's services.

Every call enters through `rpc_dispatch` (the connection's budget, parameters read eagerly and checked). Each
handler applies the rate limits, authenticates the caller where the method needs it, calls a service and shapes
the result. RpcErrors raised anywhere travel back to the caller as `code: reason`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from quicnprotochat.common.errors import ResourceExhausted, Unauthenticated
from quicnprotochat.common.schema import node_schema
from quicnprotochat.common.usernames import normalize_username
from quicnprotochat.server.connection_budget import ConnectionBudget
from quicnprotochat.server.node_counters import decrement
from quicnprotochat.server.node_state import NodeState
from quicnprotochat.server.rpc_dispatch import serve_methods
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


def _answer_bytes(messages: list[InboxMessage]) -> int:
    return sum(len(message.payload) for message in messages)


@serve_methods(node_schema().NodeService)
class NodeServiceImpl(_NodeServiceServer):  # type: ignore[misc]
    def __init__(self, node: NodeState, peer: Peer, budget: ConnectionBudget) -> None:
        self._node = node
        self._peer = peer
        self._budget = budget
        # Identifies this connection to services that keep per-connection state (OPAQUE login in progress).
        self._connection_id = os.urandom(16)

    # -- entry (rpc_dispatch) ----------------------------------------------------------------------------------

    @property
    def budget(self) -> ConnectionBudget:
        return self._budget

    async def authenticate_first(self, auth: Any) -> None:
        await self._caller(auth)

    def client_fault(self, method: str, reason: str) -> None:
        # Malformed calls are the client's fault and can come by the thousand: one line per kind and minute.
        self._node.fault_log.info(
            ("malformed call", self._peer.source, method), "malformed %s call from %s: %s", method, self._peer, reason
        )

    # -- guards ------------------------------------------------------------------------------------------------

    def _limit_address(self) -> None:
        self._node.limiter.address.check(self._peer.source, "this address")

    async def _caller(self, auth: Any) -> Caller:
        self._limit_address()
        caller = await self._node.sessions.authenticate(auth)
        self._budget.mark_authenticated()
        self._node.limiter.identity.check(caller.identity_key, "this identity")
        return caller

    def _limit_login(self, raw_username: str) -> str:
        """The normalized username, checked before any bucket is touched (a malformed or huge name costs no
        bucket and never becomes a key); then the address's login bucket."""
        username = normalize_username(raw_username)
        self._node.limiter.login_address.check(self._peer.source, "login attempts from this address")
        return username

    def _limit_registration(self, raw_username: str) -> str:
        username = normalize_username(raw_username)
        limiter = self._node.limiter
        limiter.register_address.check(self._peer.source, "registrations from this address")
        limiter.register_total.check(None, "registrations on this node")
        return username

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
        name = self._limit_registration(username)
        return await self._node.accounts.register_start(name, request)

    async def opaqueRegisterFinish(
        self, username: str, upload: bytes, identityKey: bytes, identitySig: bytes, _context: Any, **_: Any
    ) -> bool:
        self._limit_address()
        name = self._limit_registration(username)
        await self._node.accounts.register_finish(name, upload, identityKey, identitySig)
        return True

    async def opaqueLoginStart(self, username: str, request: bytes, _context: Any, **_: Any) -> bytes:
        self._limit_address()
        name = self._limit_login(username)
        return await self._node.accounts.login_start(self._connection_id, name, request)

    async def opaqueLoginFinish(
        self, username: str, finalization: bytes, identityKey: bytes, identitySig: bytes, _context: Any, **_: Any
    ) -> bytes:
        self._limit_address()
        name = self._limit_login(username)
        # Only failed finishes count against the username, and only from this address: a stranger elsewhere
        # cannot use up the account owner's attempts.
        failures = self._node.limiter.login_failures
        key = (name, self._peer.source)
        failures.check_available(key, "failed logins for this username from this address")
        try:
            token = await self._node.accounts.login_finish(
                self._connection_id, name, finalization, identityKey, identitySig, b""
            )
        except Unauthenticated:
            failures.take(key)
            raise
        self._budget.mark_authenticated()
        return token

    async def logout(self, auth: Any, _context: Any, **_: Any) -> None:
        caller = await self._caller(auth)
        await self._node.sessions.revoke(caller)

    async def resolveUser(self, username: str, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        # Against scraping: a few hundred look-ups an hour per account (Signal: 100 per 15 minutes), and per address
        # so that many accounts on one host do not multiply it.
        limiter = self._node.limiter
        limiter.resolve_identity.check(caller.identity_key, "name look-ups for this identity")
        limiter.resolve_address.check(self._peer.source, "name look-ups from this address")
        return await self._node.accounts.resolve_user(username) or b""

    async def resolveIdentity(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> str:
        await self._caller(auth)
        return await self._node.accounts.resolve_identity(identityKey) or ""

    # -- directories -------------------------------------------------------------------------------------------

    async def uploadKeyPackage(self, identityKey: bytes, package: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        return await self._node.directory.upload_key_package(caller, identityKey, package)

    async def fetchKeyPackage(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        self._node.limiter.key_package_pair.check(
            (caller.identity_key, identityKey), "KeyPackage fetches of this identity by you"
        )
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
        await self._node.endpoints.publish(caller, identityKey, nodeAddr)

    async def resolveEndpoint(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        # A record reveals its owner's network addresses: resolving is bounded per account and per address.
        limiter = self._node.limiter
        limiter.resolve_endpoint_identity.check(caller.identity_key, "endpoint look-ups for this identity")
        limiter.resolve_endpoint_address.check(self._peer.source, "endpoint look-ups from this address")
        return await self._node.endpoints.resolve(identityKey)

    # -- blobs (attachments) -----------------------------------------------------------------------------------

    async def putBlob(self, data: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        return await self._node.blobs.put(caller, bytes(data))

    async def getBlob(self, blobId: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        await self._caller(auth)
        return await self._node.blobs.get(bytes(blobId))

    # -- coffer (operator-provisioned secrets) ----------------------------------------------------------------

    async def fetchCoffer(self, auth: Any, _context: Any, **_: Any) -> bytes:
        caller = await self._caller(auth)
        return await self._node.coffer.fetch(caller)

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
        total = len(recipients) * len(payload)
        limit = self._node.config.max_batch_bytes
        if total > limit:
            self._node.counters.refuse("max_batch_bytes")
            raise ResourceExhausted(
                f"batchEnqueue of {len(recipients)} recipients x {len(payload)} bytes = {total} bytes;"
                f" at most {limit} per call"
            )
        inboxes = self._node.inboxes
        return await inboxes.batch_enqueue(caller, recipients, payload, channelId, version, bytes(idempotencyKey))

    async def fetch(
        self, recipientKey: bytes, channelId: bytes, version: int, auth: Any, limit: int, _context: Any, **_: Any
    ) -> list[dict[str, Any]]:
        caller = await self._caller(auth)
        async with self._budget.answer_slot() as reserve:
            messages = await self._node.inboxes.fetch(caller, recipientKey, channelId, version, limit)
            reserve(_answer_bytes(messages))
        return _envelopes(messages)

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
        self._park(caller.identity_key)
        try:
            messages = await self._node.inboxes.fetch_wait(
                caller,
                recipient,
                channel,
                version,
                timeout_ms,
                limit,
                remove=remove,
                answer_slots=self._budget,
            )
        finally:
            self._unpark(caller.identity_key)
        return _envelopes(messages)

    def _park(self, identity: bytes) -> None:
        """Counts one parked long-poll, within the per-connection and per-identity caps; `_unpark` however it ends.
        (Not a context manager: a parked call's objects are what the collector walks while thousands wait.)"""
        counters = self._node.counters
        config = self._node.config
        if self._budget.parked >= config.max_parked_per_connection:
            counters.refuse("max_parked_per_connection")
            limit = config.max_parked_per_connection
            raise ResourceExhausted(f"too many fetchWait/peekWait calls parked on this connection (at most {limit})")
        if counters.parked_by_identity[identity] >= config.max_parked_per_identity:
            counters.refuse("max_parked_per_identity")
            limit = config.max_parked_per_identity
            raise ResourceExhausted(f"too many fetchWait/peekWait calls parked for this identity (at most {limit})")
        self._budget.parked += 1
        counters.parked_waits += 1
        counters.parked_by_identity[identity] += 1

    def _unpark(self, identity: bytes) -> None:
        counters = self._node.counters
        self._budget.parked -= 1
        counters.parked_waits -= 1
        decrement(counters.parked_by_identity, identity)

    async def peek(
        self, recipientKey: bytes, channelId: bytes, version: int, auth: Any, limit: int, _context: Any, **_: Any
    ) -> list[dict[str, Any]]:
        caller = await self._caller(auth)
        async with self._budget.answer_slot() as reserve:
            messages = await self._node.inboxes.peek(caller, recipientKey, channelId, version, limit)
            reserve(_answer_bytes(messages))
        return _envelopes(messages)

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

    # -- bots: key login and the owner's approvals ---------------------------------------------------------------

    async def authChallenge(self, identityKey: bytes, owner: str, botName: str, _context: Any, **_: Any) -> int:
        self._limit_address()
        # The same per-address bucket as OPAQUE login; the call may then wait for the owner's answer.
        self._node.limiter.login_address.check(self._peer.source, "login attempts from this address")
        return await self._node.bots.challenge(bytes(identityKey), owner, botName)

    async def authRespond(self, identityKey: bytes, nonce: int, signature: bytes, _context: Any, **_: Any) -> bytes:
        self._limit_address()
        self._node.limiter.login_address.check(self._peer.source, "login attempts from this address")
        # As for OPAQUE: only failures count against the key, and only from this address.
        failures = self._node.limiter.key_login_failures
        key = (bytes(identityKey), self._peer.source)
        failures.check_available(key, "failed logins for this key from this address")
        try:
            token = await self._node.bots.respond(bytes(identityKey), nonce, bytes(signature))
        except Unauthenticated:
            failures.take(key)
            raise
        self._budget.mark_authenticated()
        return token

    async def botApprovalWait(
        self, sinceDigest: bytes, timeoutMs: int, auth: Any, _context: Any, **_: Any
    ) -> tuple[bytes, list[dict[str, Any]]]:
        caller = await self._caller(auth)
        self._park(caller.identity_key)
        try:
            digest, view = await self._node.bots.wait_approvals(caller, bytes(sinceDigest), timeoutMs)
        finally:
            self._unpark(caller.identity_key)
        requests = [
            {
                "requestId": request.request_id,
                "identityKey": request.identity_key,
                "name": request.name,
                "state": state.value,
                "expiresAt": request.expires_at,
            }
            for request, state in view
        ]
        return digest, requests

    async def botApprovalAnswer(self, requestId: bytes, approve: bool, auth: Any, _context: Any, **_: Any) -> str:
        caller = await self._caller(auth)
        return (await self._node.bots.answer(caller, bytes(requestId), bool(approve))).value

    async def listBots(self, auth: Any, _context: Any, **_: Any) -> list[dict[str, Any]]:
        caller = await self._caller(auth)
        return [
            {"identityKey": bot.identity_key, "name": bot.name, "approvedAt": bot.approved_at, "revoked": bot.revoked}
            for bot in await self._node.bots.list_bots(caller)
        ]

    async def revokeBot(self, identityKey: bytes, auth: Any, _context: Any, **_: Any) -> None:
        caller = await self._caller(auth)
        await self._node.bots.revoke(caller, bytes(identityKey))
