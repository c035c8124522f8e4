"""`NodeClient`: a typed async API over every NodeService method. This is what bots import.

One NodeClient holds one connection (QUIC by default, or TLS over TCP) to one node, pinned by the node's key
fingerprint. When the connection drops, the call in flight fails with `Disconnected` and the next call
reconnects. Calls are not retried, except an enqueue where a retry cannot store it twice (see `enqueue`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import capnp  # type: ignore[import-untyped]

from quicnprotochat.client.bot_records import (
    APPROVAL_STATES,
    ApprovalState,
    BotApprovalRequest,
    BotApprovals,
    BotKeyRecord,
)
from quicnprotochat.client.known_hosts import KnownHosts
from quicnprotochat.common import kj_loop
from quicnprotochat.common.connect import RpcConnection, open_quic, open_tcp
from quicnprotochat.common.errors import (
    Disconnected,
    Internal,
    RpcError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownOutcome,
    error_from_reason,
)
from quicnprotochat.common.schema import AUTH_VERSION, PROTOCOL_VERSION

DEFAULT_PORT = 7700
Transport = Literal["quic", "tcp"]
TRANSPORTS: tuple[str, ...] = ("quic", "tcp")


@dataclass(frozen=True)
class Envelope:
    seq: int
    data: bytes


@dataclass(frozen=True)
class RateLimit:
    """A token bucket of the node: `burst` calls at once, refilled at `per_second` (zeros: the node does not say)."""

    per_second: float = 0.0
    burst: int = 0


NO_RATE = RateLimit()


@dataclass(frozen=True)
class ServerLimits:
    max_payload_bytes: int
    max_inbox_depth: int
    max_inbox_bytes: int
    message_ttl_seconds: int
    max_fetch_limit: int
    max_wait_ms: int
    max_key_packages_per_identity: int
    max_endpoint_bytes: int
    max_fetch_bytes: int
    max_commit_deliveries: int
    max_commit_bytes: int
    max_group_members: int
    # 0 from a node that does not say.
    max_calls_per_connection: int = 0
    max_parked_per_connection: int = 0
    max_parked_per_identity: int = 0
    max_batch_bytes: int = 0
    max_inbox_share_per_sender: int = 0
    max_blob_bytes: int = 0
    blob_ttl_seconds: int = 0
    bot_approval_timeout_s: float = 0.0
    max_pending_bot_approvals_per_owner: int = 0
    max_bot_challenges_per_key: int = 0
    max_unsent_bytes_per_connection: int = 0
    max_message_bytes: int = 0
    max_incoming_bytes_in_progress: int = 0
    max_bootstraps_per_connection: int = 0
    max_connections: int = 0
    max_connections_per_address: int = 0
    max_unauthenticated_connections: int = 0
    handshake_timeout_s: float = 0.0
    tcp_idle_timeout_s: float = 0.0
    quic_idle_timeout_s: float = 0.0
    calls_per_identity: RateLimit = NO_RATE
    calls_per_address: RateLimit = NO_RATE
    failed_logins_per_username: RateLimit = NO_RATE
    logins_per_address: RateLimit = NO_RATE
    sealed_enqueues_per_connection: RateLimit = NO_RATE
    registrations_per_address: RateLimit = NO_RATE
    registrations_total: RateLimit = NO_RATE
    key_package_fetches_per_pair: RateLimit = NO_RATE
    resolves_per_identity: RateLimit = NO_RATE
    resolves_per_address: RateLimit = NO_RATE
    resolve_endpoints_per_identity: RateLimit = NO_RATE
    resolve_endpoints_per_address: RateLimit = NO_RATE
    new_connections_per_address: RateLimit = NO_RATE


def _rate(bucket: Any) -> RateLimit:
    return RateLimit(per_second=float(bucket.perSecond), burst=int(bucket.burst))


@dataclass(frozen=True)
class Delivery:
    """One recipient of a submitCommit: its inbox (channel b"" is the default inbox) and what lands there."""

    recipient_key: bytes
    payload: bytes
    channel_id: bytes = b""


@dataclass(frozen=True)
class CommitResult:
    """The sequencer's answer. `accepted`/`duplicate`: the commit is the group's for its epoch (apply it) and
    `seqs` has one seq per delivery, then per welcome. `stale`: another commit holds the epoch; `epoch` is the
    group's epoch at the node."""

    outcome: Literal["accepted", "duplicate", "stale"]
    epoch: int
    seqs: list[int]


@dataclass(frozen=True)
class ServerInfo:
    node_version: str
    protocol_version: int
    cert_fingerprint: str
    allow_sealed_sender: bool
    limits: ServerLimits


@dataclass(frozen=True)
class NodeStatus:
    """What nodeStatus reports: `status` is what `health` returns; the rest are the node's probes and counters."""

    status: str
    store_reachable: bool
    store_writer_alive: bool
    free_disk_bytes: int
    min_free_disk_bytes: int
    connections: int
    parked_waiters: int
    write_queue_depth: int
    store_failed_batches: int
    store_writer_restarts: int
    quic_connections: int = 0
    quic_retry: bool = False
    retries_sent: int = 0
    retry_tokens_accepted: int = 0
    retry_tokens_refused: int = 0
    process_id: int = 0  # the node process (one of its workers) that served this connection

    @property
    def healthy(self) -> bool:
        return self.status == "ok"


def may_retry(error: RpcError, *, keyed: bool) -> bool:
    """Whether sending an enqueue again cannot store it twice: it was not stored, or it carries an idempotency key
    (the node answers a repeat with the first seq)."""
    if isinstance(error, Unavailable):
        return True
    return keyed and isinstance(error, Disconnected | UnknownOutcome)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, DEFAULT_PORT
    if not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


def _envelopes(payloads: Any) -> list[Envelope]:
    return sorted((Envelope(int(item.seq), bytes(item.data)) for item in payloads), key=lambda e: e.seq)


def _delivery(delivery: Delivery) -> dict[str, bytes]:
    return {"recipientKey": delivery.recipient_key, "channelId": delivery.channel_id, "payload": delivery.payload}


def _optional_bytes(data: Any) -> bytes | None:
    value = bytes(data)
    return value or None


class NodeClient:
    def __init__(
        self,
        address: str,
        *,
        transport: Transport = "quic",
        known_hosts: KnownHosts | None = None,
        server_fingerprint: str | None = None,
        access_token: bytes | None = None,
        device_id: bytes = b"",
        connect_timeout: float = 10.0,
        retry_delays: Sequence[float] = (0.1, 0.3, 1.0),
    ) -> None:
        if cast(str, transport) not in TRANSPORTS:  # bots pass plain strings; a typo must not mean TCP
            raise ValueError("transport is 'quic' or 'tcp'")
        self.host, self.port = split_address(address)
        self.address = f"{self.host}:{self.port}"
        self.transport: Transport = transport
        self.known_hosts = known_hosts if known_hosts is not None else KnownHosts()
        self.server_fingerprint = server_fingerprint
        self.access_token = access_token
        self.device_id = device_id
        # Called to get a fresh token when an authenticated call is refused as unauthenticated (see
        # quicnprotochat.client.accounts.login); the call is then retried once.
        self.relogin: Callable[[], Awaitable[None]] | None = None
        self.connect_timeout = connect_timeout
        # Waits before each retry of an enqueue that may be sent again (see `enqueue`); empty: never retried.
        self.retry_delays = tuple(retry_delays)
        self._connection: RpcConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._kj_acquired = False
        self._closing: set[asyncio.Future[None]] = set()

    # -- connection --------------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, address: str, **options: Any) -> NodeClient:
        client = cls(address, **options)
        await client.connect()
        return client

    async def __aenter__(self) -> NodeClient:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def fingerprint(self) -> str | None:
        return self._connection.fingerprint if self._connection else None

    async def connect(self) -> None:
        await self._ensure_connection()

    async def _ensure_connection(self) -> RpcConnection:
        if self._connection is not None:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            existing = self._live()  # another caller may have connected while we waited for the lock
            if existing is not None:
                return existing
            if not self._kj_acquired:
                await kj_loop.acquire()
                self._kj_acquired = True
            opener = open_quic if self.transport == "quic" else open_tcp

            def verify(fingerprint: str) -> None:
                self.known_hosts.verify(self.address, fingerprint, self.server_fingerprint)

            connection = await opener(self.host, self.port, verify, connect_timeout=self.connect_timeout)
            self._connection = connection
            connection.disconnected().add_done_callback(lambda done: self._forget(connection, done))
            return connection

    def _live(self) -> RpcConnection | None:
        return self._connection

    def _forget(self, connection: RpcConnection, done: asyncio.Future[None] | None = None) -> None:
        if done is not None and not done.cancelled():
            done.exception()  # how the connection ended does not matter here; the next call reconnects
        if self._connection is connection:
            self._connection = None
            closing = asyncio.ensure_future(connection.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closed)

    def _closed(self, closing: asyncio.Future[None]) -> None:
        self._closing.discard(closing)
        if not closing.cancelled():
            closing.exception()  # closing a connection that already broke may fail; nothing is left to do

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
        if self._kj_acquired:
            self._kj_acquired = False
            await kj_loop.release()

    async def _call(self, method: str, **params: Any) -> Any:
        try:
            return await self._call_once(method, **params)
        except Unauthenticated:
            if "auth" not in params or self.relogin is None or method == "logout":
                raise
        # The node refused the token: nothing was done, so logging in again and retrying is safe.
        await self.relogin()
        params["auth"] = self._auth()
        return await self._call_once(method, **params)

    async def _call_once(self, method: str, **params: Any) -> Any:
        connection = await self._ensure_connection()
        try:
            return await getattr(connection.service, method)(**params)
        except capnp.KjException as error:
            if error.type == "DISCONNECTED":
                self._forget(connection)
                raise Disconnected(f"{method}: the connection to {self.address} was lost") from None
            if error.type == "UNIMPLEMENTED":
                # A method this node does not know. Nodes since issue 13 answer it with an `unimplemented:` reason
                # too; nodes before it, and other Cap'n Proto servers, only with kj's type and text.
                raise Unimplemented(f"{method} is not implemented by this node") from None
            raise error_from_reason(error.description) from None

    def _auth(self) -> dict[str, Any]:
        if self.access_token is None:
            return {}  # no Auth at all: what a sealed-sender enqueue sends
        return {"version": AUTH_VERSION, "accessToken": self.access_token, "deviceId": self.device_id}

    # -- public, unauthenticated -------------------------------------------------------------------------------

    async def health(self) -> str:
        return str((await self._call("health")).status)

    async def server_info(self) -> ServerInfo:
        info = (await self._call("serverInfo")).info
        limits = info.limits
        return ServerInfo(
            node_version=str(info.nodeVersion),
            protocol_version=int(info.protocolVersion),
            cert_fingerprint=str(info.certFingerprint),
            allow_sealed_sender=bool(info.allowSealedSender),
            limits=ServerLimits(
                max_payload_bytes=int(limits.maxPayloadBytes),
                max_inbox_depth=int(limits.maxInboxDepth),
                max_inbox_bytes=int(limits.maxInboxBytes),
                message_ttl_seconds=int(limits.messageTtlSeconds),
                max_fetch_limit=int(limits.maxFetchLimit),
                max_wait_ms=int(limits.maxWaitMs),
                max_key_packages_per_identity=int(limits.maxKeyPackagesPerIdentity),
                max_endpoint_bytes=int(limits.maxEndpointBytes),
                max_fetch_bytes=int(limits.maxFetchBytes),
                max_commit_deliveries=int(limits.maxCommitDeliveries),
                max_commit_bytes=int(limits.maxCommitBytes),
                max_group_members=int(limits.maxGroupMembers),
                max_calls_per_connection=int(limits.maxCallsPerConnection),
                max_parked_per_connection=int(limits.maxParkedPerConnection),
                max_parked_per_identity=int(limits.maxParkedPerIdentity),
                max_batch_bytes=int(limits.maxBatchBytes),
                max_inbox_share_per_sender=int(limits.maxInboxSharePerSender),
                max_blob_bytes=int(limits.maxBlobBytes),
                blob_ttl_seconds=int(limits.blobTtlSeconds),
                bot_approval_timeout_s=float(limits.botApprovalTimeoutSeconds),
                max_pending_bot_approvals_per_owner=int(limits.maxPendingBotApprovalsPerOwner),
                max_bot_challenges_per_key=int(limits.maxBotChallengesPerKey),
                max_unsent_bytes_per_connection=int(limits.maxUnsentBytesPerConnection),
                max_message_bytes=int(limits.maxMessageBytes),
                max_incoming_bytes_in_progress=int(limits.maxIncomingBytesInProgress),
                max_bootstraps_per_connection=int(limits.maxBootstrapsPerConnection),
                max_connections=int(limits.maxConnections),
                max_connections_per_address=int(limits.maxConnectionsPerAddress),
                max_unauthenticated_connections=int(limits.maxUnauthenticatedConnections),
                handshake_timeout_s=float(limits.handshakeTimeoutSeconds),
                tcp_idle_timeout_s=float(limits.tcpIdleTimeoutSeconds),
                quic_idle_timeout_s=float(limits.quicIdleTimeoutSeconds),
                calls_per_identity=_rate(limits.callsPerIdentity),
                calls_per_address=_rate(limits.callsPerAddress),
                failed_logins_per_username=_rate(limits.failedLoginsPerUsername),
                logins_per_address=_rate(limits.loginsPerAddress),
                sealed_enqueues_per_connection=_rate(limits.sealedEnqueuesPerConnection),
                registrations_per_address=_rate(limits.registrationsPerAddress),
                registrations_total=_rate(limits.registrationsTotal),
                key_package_fetches_per_pair=_rate(limits.keyPackageFetchesPerPair),
                resolves_per_identity=_rate(limits.resolvesPerIdentity),
                resolves_per_address=_rate(limits.resolvesPerAddress),
                resolve_endpoints_per_identity=_rate(limits.resolveEndpointsPerIdentity),
                resolve_endpoints_per_address=_rate(limits.resolveEndpointsPerAddress),
                new_connections_per_address=_rate(limits.newConnectionsPerAddress),
            ),
        )

    async def node_status(self) -> NodeStatus:
        status = (await self._call("nodeStatus")).status
        return NodeStatus(
            status=str(status.status),
            store_reachable=bool(status.storeReachable),
            store_writer_alive=bool(status.storeWriterAlive),
            free_disk_bytes=int(status.freeDiskBytes),
            min_free_disk_bytes=int(status.minFreeDiskBytes),
            connections=int(status.connections),
            parked_waiters=int(status.parkedWaiters),
            write_queue_depth=int(status.writeQueueDepth),
            store_failed_batches=int(status.storeFailedBatches),
            store_writer_restarts=int(status.storeWriterRestarts),
            quic_connections=int(status.quicConnections),
            quic_retry=bool(status.quicRetry),
            retries_sent=int(status.retriesSent),
            retry_tokens_accepted=int(status.retryTokensAccepted),
            retry_tokens_refused=int(status.retryTokensRefused),
            process_id=int(status.processId),
        )

    # -- OPAQUE (the raw protocol messages; the account helpers build on these) --------------------------------

    async def opaque_register_start(self, username: str, request: bytes) -> bytes:
        return bytes((await self._call("opaqueRegisterStart", username=username, request=request)).response)

    async def opaque_register_finish(
        self, username: str, upload: bytes, identity_key: bytes, identity_sig: bytes
    ) -> bool:
        result = await self._call(
            "opaqueRegisterFinish", username=username, upload=upload, identityKey=identity_key, identitySig=identity_sig
        )
        return bool(result.success)

    async def opaque_login_start(self, username: str, request: bytes) -> bytes:
        return bytes((await self._call("opaqueLoginStart", username=username, request=request)).response)

    async def opaque_login_finish(
        self, username: str, finalization: bytes, identity_key: bytes, identity_sig: bytes
    ) -> bytes:
        result = await self._call(
            "opaqueLoginFinish",
            username=username,
            finalization=finalization,
            identityKey=identity_key,
            identitySig=identity_sig,
        )
        return bytes(result.sessionToken)

    async def logout(self) -> None:
        """Revokes this client's access token on the node."""
        await self._call("logout", auth=self._auth())

    # -- directories -------------------------------------------------------------------------------------------

    async def upload_key_package(self, identity_key: bytes, package: bytes) -> bytes:
        result = await self._call("uploadKeyPackage", identityKey=identity_key, package=package, auth=self._auth())
        return bytes(result.fingerprint)

    async def fetch_key_package(self, identity_key: bytes) -> bytes | None:
        result = await self._call("fetchKeyPackage", identityKey=identity_key, auth=self._auth())
        return _optional_bytes(result.package)

    async def upload_hybrid_key(self, identity_key: bytes, hybrid_public_key: bytes) -> None:
        await self._call(
            "uploadHybridKey", identityKey=identity_key, hybridPublicKey=hybrid_public_key, auth=self._auth()
        )

    async def fetch_hybrid_key(self, identity_key: bytes) -> bytes | None:
        result = await self._call("fetchHybridKey", identityKey=identity_key, auth=self._auth())
        return _optional_bytes(result.hybridPublicKey)

    async def fetch_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes | None]:
        result = await self._call("fetchHybridKeys", identityKeys=list(identity_keys), auth=self._auth())
        return [_optional_bytes(key) for key in result.keys]

    async def put_blob(self, data: bytes) -> bytes:
        """Store an (encrypted) attachment on the node; returns its id, the SHA-256 of `data`."""
        return bytes((await self._call("putBlob", data=data, auth=self._auth())).blobId)

    async def get_blob(self, blob_id: bytes) -> bytes:
        """The bytes stored under `blob_id` (NotFound once it expired)."""
        return bytes((await self._call("getBlob", blobId=blob_id, auth=self._auth())).data)

    async def fetch_coffer(self) -> bytes:
        """This session's coffer shard, sealed to our hybrid key (`client/chat/coffer.py` opens it)."""
        return bytes((await self._call("fetchCoffer", auth=self._auth())).shard)

    async def publish_endpoint(self, identity_key: bytes, node_addr: bytes) -> None:
        await self._call("publishEndpoint", identityKey=identity_key, nodeAddr=node_addr, auth=self._auth())

    async def resolve_endpoint(self, identity_key: bytes) -> bytes | None:
        result = await self._call("resolveEndpoint", identityKey=identity_key, auth=self._auth())
        return _optional_bytes(result.nodeAddr)

    async def resolve_user(self, username: str) -> bytes | None:
        result = await self._call("resolveUser", username=username, auth=self._auth())
        return _optional_bytes(result.identityKey)

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        result = await self._call("resolveIdentity", identityKey=identity_key, auth=self._auth())
        return str(result.username) or None

    # -- inboxes -----------------------------------------------------------------------------------------------

    async def enqueue(
        self, recipient_key: bytes, payload: bytes, channel_id: bytes = b"", *, idempotency_key: bytes = b""
    ) -> int:
        """Stores `payload` in the inbox and returns its seq.

        Retried by itself (`retry_delays`) where that cannot store it twice: after `Unavailable` (not stored), and,
        when `idempotency_key` is given (random bytes, one key per message), also after `Disconnected` or
        `UnknownOutcome`: the node then answers a repeat with the first call's seq."""
        result = await self._enqueue_call(
            "enqueue",
            idempotency_key,
            recipientKey=recipient_key,
            payload=payload,
            channelId=channel_id,
            version=PROTOCOL_VERSION,
        )
        return int(result.seq)

    async def batch_enqueue(
        self,
        recipient_keys: Sequence[bytes],
        payload: bytes,
        channel_id: bytes = b"",
        *,
        idempotency_key: bytes = b"",
    ) -> list[int]:
        """One seq per recipient, all or nothing; retried as `enqueue` is."""
        result = await self._enqueue_call(
            "batchEnqueue",
            idempotency_key,
            recipientKeys=list(recipient_keys),
            payload=payload,
            channelId=channel_id,
            version=PROTOCOL_VERSION,
        )
        return [int(seq) for seq in result.seqs]

    async def _enqueue_call(self, method: str, idempotency_key: bytes, **params: Any) -> Any:
        delays = iter(self.retry_delays)
        while True:
            try:
                return await self._call(method, **params, auth=self._auth(), idempotencyKey=idempotency_key)
            except RpcError as error:
                delay = next(delays, None)
                if delay is None or not may_retry(error, keyed=bool(idempotency_key)):
                    raise
            await asyncio.sleep(delay)

    async def _read_inbox(
        self, method: str, recipient_key: bytes, channel_id: bytes, limit: int, timeout_ms: int | None = None
    ) -> list[Envelope]:
        params: dict[str, Any] = {
            "recipientKey": recipient_key,
            "channelId": channel_id,
            "version": PROTOCOL_VERSION,
            "auth": self._auth(),
            "limit": limit,
        }
        if timeout_ms is not None:
            params["timeoutMs"] = timeout_ms
        return _envelopes((await self._call(method, **params)).payloads)

    async def fetch(self, recipient_key: bytes, channel_id: bytes = b"", limit: int = 0) -> list[Envelope]:
        """Removes and returns up to `limit` queued envelopes (0: as many as the node sends at once)."""
        return await self._read_inbox("fetch", recipient_key, channel_id, limit)

    async def fetch_wait(
        self, recipient_key: bytes, channel_id: bytes = b"", timeout_ms: int = 10_000, limit: int = 0
    ) -> list[Envelope]:
        """Like fetch, but waits up to `timeout_ms` for something to arrive when the inbox is empty."""
        return await self._read_inbox("fetchWait", recipient_key, channel_id, limit, timeout_ms)

    async def peek_wait(
        self, recipient_key: bytes, channel_id: bytes = b"", timeout_ms: int = 10_000, limit: int = 0
    ) -> list[Envelope]:
        """Like fetch_wait, but removes nothing: ack what you have stored."""
        return await self._read_inbox("peekWait", recipient_key, channel_id, limit, timeout_ms)

    async def peek(self, recipient_key: bytes, channel_id: bytes = b"", limit: int = 0) -> list[Envelope]:
        """Returns queued envelopes without removing them."""
        return await self._read_inbox("peek", recipient_key, channel_id, limit)

    async def ack(self, recipient_key: bytes, seq_up_to: int, channel_id: bytes = b"") -> None:
        await self._call(
            "ack",
            recipientKey=recipient_key,
            channelId=channel_id,
            version=PROTOCOL_VERSION,
            seqUpTo=seq_up_to,
            auth=self._auth(),
        )

    async def create_channel(self, peer_key: bytes) -> bytes:
        return bytes((await self._call("createChannel", peerKey=peer_key, auth=self._auth())).channelId)

    # -- groups ------------------------------------------------------------------------------------------------

    async def submit_commit(
        self,
        group_id: bytes,
        epoch: int,
        message: bytes,
        deliveries: Sequence[Delivery],
        welcomes: Sequence[Delivery] = (),
        members: Sequence[bytes] = (),
    ) -> CommitResult:
        """Submit an MLS commit (or proposal) at `epoch` with its deliveries (to the group's members) and welcomes
        (to the members it adds); `members` is the member set after a commit. Safe to retry with the same bytes."""
        result = (
            await self._call(
                "submitCommit",
                groupId=group_id,
                epoch=epoch,
                message=message,
                deliveries=[_delivery(d) for d in deliveries],
                welcomes=[_delivery(w) for w in welcomes],
                members=list(members),
                auth=self._auth(),
            )
        ).result
        outcome = str(result.outcome)
        if outcome not in ("accepted", "duplicate", "stale"):
            raise Internal(f"submitCommit: the node answered an unknown outcome {outcome!r}")
        return CommitResult(
            cast(Literal["accepted", "duplicate", "stale"], outcome),
            int(result.epoch),
            [int(seq) for seq in result.seqs],
        )

    # -- bots: key login and the owner's approvals -------------------------------------------------------------

    async def auth_challenge(self, identity_key: bytes, owner: str, name: str) -> int:
        """The next nonce for this bot key. For a key the node has not seen, this waits until one of the owner's
        clients approves it (`Forbidden` if refused or unanswered in time)."""
        return int((await self._call("authChallenge", identityKey=identity_key, owner=owner, botName=name)).nonce)

    async def auth_respond(self, identity_key: bytes, nonce: int, signature: bytes) -> bytes:
        """A session token for the signature over `key_login_transcript(node fingerprint, key, nonce)`."""
        result = await self._call("authRespond", identityKey=identity_key, nonce=nonce, signature=signature)
        return bytes(result.sessionToken)

    async def bot_approval_wait(self, since_digest: bytes = b"", timeout_ms: int = 10_000) -> BotApprovals:
        """Your pending and recently decided bot approval requests, once they differ from `since_digest`."""
        result = await self._call("botApprovalWait", sinceDigest=since_digest, timeoutMs=timeout_ms, auth=self._auth())
        return BotApprovals(
            bytes(result.digest),
            [
                BotApprovalRequest(
                    bytes(item.requestId),
                    bytes(item.identityKey),
                    str(item.name),
                    _approval_state(str(item.state)),
                    float(item.expiresAt),
                )
                for item in result.requests
            ],
        )

    async def bot_approval_answer(self, request_id: bytes, approve: bool) -> ApprovalState:
        """Answer a request; returns the state it ended in (another client's answer, if that came first)."""
        result = await self._call("botApprovalAnswer", requestId=request_id, approve=approve, auth=self._auth())
        return _approval_state(str(result.state))

    async def list_bots(self) -> list[BotKeyRecord]:
        result = await self._call("listBots", auth=self._auth())
        return [
            BotKeyRecord(bytes(bot.identityKey), str(bot.name), float(bot.approvedAt), bool(bot.revoked))
            for bot in result.bots
        ]

    async def revoke_bot(self, identity_key: bytes) -> None:
        """Revoke one of your bot keys: its sessions end at once and it cannot log in again."""
        await self._call("revokeBot", identityKey=identity_key, auth=self._auth())


def _approval_state(state: str) -> ApprovalState:
    if state not in APPROVAL_STATES:
        raise Internal(f"the node answered an unknown approval state {state!r}")
    return cast(ApprovalState, state)
