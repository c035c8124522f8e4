"""What every connection's handlers share: the node's configuration, identity and services (`NodeState`), and
how the configuration becomes store and rate limits."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicnprotochat.common.schema import PROTOCOL_VERSION
from quicnprotochat.native import OpaqueServer, RootKey
from quicnprotochat.server import __version__
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.connection_budget import ConnectionLimits
from quicnprotochat.server.disk_space import DiskSpace, store_disk_path
from quicnprotochat.server.health import HealthMonitor
from quicnprotochat.server.identity import NodeIdentity
from quicnprotochat.server.log_throttle import LogThrottle
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.quic_retry import RetryStats
from quicnprotochat.server.services.accounts import AccountService
from quicnprotochat.server.services.blobs import BlobLimits, BlobService
from quicnprotochat.server.services.bot_login import BotLoginLimits, BotLoginService
from quicnprotochat.server.services.coffer import CofferService
from quicnprotochat.server.services.directory import DirectoryService
from quicnprotochat.server.services.endpoints import EndpointService
from quicnprotochat.server.services.groups import GroupService, SubmitLimits
from quicnprotochat.server.services.inboxes import InboxService
from quicnprotochat.server.services.rate_limits import RateLimit, RateLimiter, RateLimits
from quicnprotochat.server.services.sessions import SessionService
from quicnprotochat.server.store import Clock, Store, StoreLimits
from quicnprotochat.server.store.groups import GroupLimits

log = logging.getLogger("quicnprotochat.server")


def store_limits(config: NodeConfig) -> StoreLimits:
    return StoreLimits(
        max_payload_bytes=config.max_payload_bytes,
        max_inbox_depth=config.max_inbox_depth,
        max_inbox_bytes=config.max_inbox_bytes,
        max_fetch=config.max_fetch_limit,
        max_fetch_bytes=config.max_fetch_bytes,
        max_key_packages_per_identity=config.max_key_packages_per_identity,
        max_inbox_share_per_sender=config.max_inbox_share_per_sender,
        max_idempotency_keys_per_sender=config.max_idempotency_keys_per_sender,
        disk_reserve_bytes=config.disk_reserve_bytes,
    )


def submit_limits(config: NodeConfig) -> SubmitLimits:
    return SubmitLimits(
        max_deliveries=config.max_commit_deliveries,
        max_bytes=config.max_commit_bytes,
        max_members=config.max_group_members,
        max_payload_bytes=config.max_payload_bytes,
        message_ttl_seconds=config.message_ttl_seconds,
        store=GroupLimits(
            max_groups_per_creator=config.max_groups_per_identity,
            log_epochs=config.group_log_epochs,
            max_proposals_per_epoch=config.max_group_proposals_per_epoch,
        ),
    )


def rate_limits(config: NodeConfig) -> RateLimits:
    return RateLimits(
        per_identity=RateLimit(config.rate_per_identity, config.burst_per_identity),
        per_address=RateLimit(config.rate_per_address, config.burst_per_address),
        login_failures_per_username=RateLimit(config.login_rate_per_username, config.login_burst_per_username),
        login_per_address=RateLimit(config.login_rate_per_address, config.login_burst_per_address),
        sealed_per_connection=RateLimit(config.sealed_rate_per_connection, config.sealed_burst_per_connection),
        register_per_address=RateLimit(config.register_rate_per_address, config.register_burst_per_address),
        register_total=RateLimit(config.register_rate_total, config.register_burst_total),
        key_package_per_pair=RateLimit(config.key_package_rate_per_pair, config.key_package_burst_per_pair),
        resolve_per_identity=RateLimit(config.resolve_rate_per_identity, config.resolve_burst_per_identity),
        resolve_per_address=RateLimit(config.resolve_rate_per_address, config.resolve_burst_per_address),
        resolve_endpoint_per_identity=RateLimit(
            config.resolve_endpoint_rate_per_identity, config.resolve_endpoint_burst_per_identity
        ),
        resolve_endpoint_per_address=RateLimit(
            config.resolve_endpoint_rate_per_address, config.resolve_endpoint_burst_per_address
        ),
    )


def bot_login_limits(config: NodeConfig) -> BotLoginLimits:
    return BotLoginLimits(
        approval_timeout_s=config.bot_approval_timeout_s,
        max_pending_per_owner=config.max_pending_bot_approvals_per_owner,
        max_challenges_per_key=config.max_bot_challenges_per_key,
        challenge_seconds=config.login_state_seconds,
        max_wait_ms=config.max_wait_ms,
    )


def connection_limits(config: NodeConfig) -> ConnectionLimits:
    return ConnectionLimits(
        max_unsent_bytes=config.max_unsent_bytes_per_connection,
        max_calls=config.max_calls_per_connection,
        max_parked=config.max_parked_per_connection,
        max_connections=config.max_connections,
        max_connections_per_address=config.max_connections_per_address,
        max_unauthenticated=config.max_unauthenticated_connections,
        max_incoming_bytes_in_progress=config.max_incoming_bytes_in_progress,
        max_bootstraps=config.max_bootstraps_per_connection,
    )


@dataclass
class NodeState:
    """What every connection's handlers share: configuration, identity and the services."""

    config: NodeConfig
    identity: NodeIdentity
    store: Store
    sessions: SessionService
    accounts: AccountService
    directory: DirectoryService
    inboxes: InboxService
    limiter: RateLimiter
    groups: GroupService
    disk: DiskSpace
    health: HealthMonitor
    counters: NodeCounters
    fault_log: LogThrottle
    """Clients' repeated faults (malformed calls): one log line per kind and period."""
    blobs: BlobService
    endpoints: EndpointService
    coffer: CofferService
    bots: BotLoginService
    connections: Callable[[], int] = lambda: 0
    """Open RPC connections; set by the node once its sessions exist."""
    quic_connections: Callable[[], int] = lambda: 0
    """QUIC connections the listener holds, with or without an RPC stream yet; set by the node."""
    quic_connection_ids: Callable[[], int] = lambda: 0
    """Connection ids the QUIC listener routes datagrams by (those of live connections only); set by the node."""
    connection_rate_addresses: Callable[[], int] = lambda: 0
    """Source addresses whose new-connection bucket the node holds now (server/connection_rate.py)."""
    retry: RetryStats | None = None
    """QUIC retry counters, when retry is on."""

    @classmethod
    async def open(
        cls,
        config: NodeConfig,
        identity: NodeIdentity,
        clock: Clock,
        store: Store,
        opaque: OpaqueServer,
        root: RootKey | None = None,
    ) -> NodeState:
        counters = NodeCounters()
        sessions = SessionService(store, config.session_ttl_seconds, clock)
        disk_path, store_on_disk = store_disk_path(config.store_location, config.data_dir)
        disk = DiskSpace(
            disk_path, config.min_free_disk_bytes, guards_writes=store_on_disk, reusable=store.reusable_bytes
        )
        inboxes = InboxService(
            store,
            store,
            message_ttl_seconds=config.message_ttl_seconds,
            max_fetch=config.max_fetch_limit,
            max_wait_ms=config.max_wait_ms,
            max_payload_bytes=config.max_payload_bytes,
            allow_sealed_sender=config.allow_sealed_sender,
            clock=clock,
            disk=disk,
            idempotent=store,
            idempotency_window_s=config.idempotency_window_s,
            bot_keys=store,
        )
        return cls(
            config=config,
            identity=identity,
            store=store,
            sessions=sessions,
            accounts=AccountService(
                store, opaque, sessions, login_state_seconds=config.login_state_seconds, clock=clock, bot_keys=store
            ),
            directory=DirectoryService(store, clock=clock),
            endpoints=EndpointService(store, max_endpoint_bytes=config.max_endpoint_bytes, clock=clock),
            inboxes=inboxes,
            limiter=RateLimiter(rate_limits(config), on_refuse=counters.refuse),
            groups=GroupService(store, inboxes, submit_limits(config), clock=clock),
            counters=counters,
            fault_log=LogThrottle(logging.getLogger("quicnprotochat.server.rpc")),
            disk=disk,
            health=HealthMonitor(store, disk),
            blobs=BlobService(
                store,
                BlobLimits(config.max_blob_bytes, config.max_blob_bytes_per_identity, config.blob_ttl_seconds),
                clock,
            ),
            coffer=CofferService(store, store, root),
            bots=BotLoginService(
                store, store, sessions, store.wakeups, identity.fingerprint, bot_login_limits(config), clock
            ),
        )

    def server_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "nodeVersion": __version__,
            "protocolVersion": PROTOCOL_VERSION,
            "certFingerprint": self.identity.fingerprint,
            "allowSealedSender": config.allow_sealed_sender,
            "limits": {
                "maxPayloadBytes": config.max_payload_bytes,
                "maxInboxDepth": config.max_inbox_depth,
                "maxInboxBytes": config.max_inbox_bytes,
                "messageTtlSeconds": config.message_ttl_seconds,
                "maxFetchLimit": config.max_fetch_limit,
                "maxWaitMs": config.max_wait_ms,
                "maxKeyPackagesPerIdentity": config.max_key_packages_per_identity,
                "maxEndpointBytes": config.max_endpoint_bytes,
                "maxFetchBytes": config.max_fetch_bytes,
                "maxCommitDeliveries": config.max_commit_deliveries,
                "maxCommitBytes": config.max_commit_bytes,
                "maxGroupMembers": config.max_group_members,
                "maxCallsPerConnection": config.max_calls_per_connection,
                "maxParkedPerConnection": config.max_parked_per_connection,
                "maxParkedPerIdentity": config.max_parked_per_identity,
                "maxBatchBytes": config.max_batch_bytes,
                "maxInboxSharePerSender": config.max_inbox_share_per_sender,
                "maxBlobBytes": config.max_blob_bytes,
                "blobTtlSeconds": config.blob_ttl_seconds,
                "botApprovalTimeoutSeconds": config.bot_approval_timeout_s,
                "maxPendingBotApprovalsPerOwner": config.max_pending_bot_approvals_per_owner,
                "maxBotChallengesPerKey": config.max_bot_challenges_per_key,
                **_connection_limits(config),
            },
        }

    async def status(self) -> dict[str, Any]:
        """What nodeStatus returns (schema NodeStatus)."""
        report = await self.health.check()
        store = report.store
        return {
            "status": report.status,
            "storeReachable": store.reachable,
            "storeWriterAlive": store.writer_alive,
            "freeDiskBytes": report.free_disk_bytes,
            "minFreeDiskBytes": report.min_free_disk_bytes,
            "connections": self.connections(),
            "parkedWaiters": self.store.wakeups.waiter_count(),
            "writeQueueDepth": store.queue_depth,
            "storeFailedBatches": store.failed_batches,
            "storeWriterRestarts": store.writer_restarts,
            "quicConnections": self.quic_connections(),
            "quicRetry": self.retry is not None,
            "retriesSent": self.retry.retries_sent if self.retry else 0,
            "retryTokensAccepted": self.retry.tokens_accepted if self.retry else 0,
            "retryTokensRefused": self.retry.tokens_refused if self.retry else 0,
            "processId": os.getpid(),
        }

    async def sweep(self) -> None:
        """Drops what has expired: queued messages past their TTL, sessions, unfinished logins, idempotency keys,
        endpoint records."""
        swept = await self.store.sweep_expired()
        await self.store.purge_expired_sessions()
        await self.store.purge_expired_login_states()
        await self.store.purge_expired_idempotency_keys()
        await self.endpoints.purge_expired()
        await self.bots.sweep()
        if swept:
            log.info("dropped %d expired messages", swept)


def _rate(per_second: float, burst: int) -> dict[str, float | int]:
    return {"perSecond": per_second, "burst": burst}


def _connection_limits(config: NodeConfig) -> dict[str, Any]:
    """serverInfo's connection caps, timeouts and token buckets (schema Limits @22 on)."""
    return {
        "maxUnsentBytesPerConnection": config.max_unsent_bytes_per_connection,
        "maxMessageBytes": config.max_message_bytes,
        "maxIncomingBytesInProgress": config.max_incoming_bytes_in_progress,
        "maxBootstrapsPerConnection": config.max_bootstraps_per_connection,
        "maxConnections": config.max_connections,
        "maxConnectionsPerAddress": config.max_connections_per_address,
        "maxUnauthenticatedConnections": config.max_unauthenticated_connections,
        "handshakeTimeoutSeconds": config.handshake_timeout_s,
        "tcpIdleTimeoutSeconds": config.tcp_idle_timeout_s,
        "quicIdleTimeoutSeconds": config.quic_idle_timeout_s,
        "callsPerIdentity": _rate(config.rate_per_identity, config.burst_per_identity),
        "callsPerAddress": _rate(config.rate_per_address, config.burst_per_address),
        "failedLoginsPerUsername": _rate(config.login_rate_per_username, config.login_burst_per_username),
        "loginsPerAddress": _rate(config.login_rate_per_address, config.login_burst_per_address),
        "sealedEnqueuesPerConnection": _rate(config.sealed_rate_per_connection, config.sealed_burst_per_connection),
        "registrationsPerAddress": _rate(config.register_rate_per_address, config.register_burst_per_address),
        "registrationsTotal": _rate(config.register_rate_total, config.register_burst_total),
        "keyPackageFetchesPerPair": _rate(config.key_package_rate_per_pair, config.key_package_burst_per_pair),
        "resolvesPerIdentity": _rate(config.resolve_rate_per_identity, config.resolve_burst_per_identity),
        "resolvesPerAddress": _rate(config.resolve_rate_per_address, config.resolve_burst_per_address),
        "resolveEndpointsPerIdentity": _rate(
            config.resolve_endpoint_rate_per_identity, config.resolve_endpoint_burst_per_identity
        ),
        "resolveEndpointsPerAddress": _rate(
            config.resolve_endpoint_rate_per_address, config.resolve_endpoint_burst_per_address
        ),
        "newConnectionsPerAddress": _rate(config.connection_rate_per_address, config.connection_burst_per_address),
    }
