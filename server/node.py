"""A running node: its identity, store and services, its listeners, and their start and orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

from quicnprotochat.common import kj_loop
from quicnprotochat.common.schema import PROTOCOL_VERSION
from quicnprotochat.server import __version__
from quicnprotochat.server.config import NodeConfig, parse_listen
from quicnprotochat.server.identity import NodeIdentity, load_or_create_identity
from quicnprotochat.server.peer import Peer
from quicnprotochat.server.quic_listener import QuicListener, quic_server_configuration
from quicnprotochat.server.rpc_errors import install_error_sanitizer
from quicnprotochat.server.rpc_service import NodeServiceImpl
from quicnprotochat.server.rpc_session import RpcSessions
from quicnprotochat.server.services.accounts import AccountService, load_or_create_opaque_setup
from quicnprotochat.server.services.directory import DirectoryService
from quicnprotochat.server.services.inboxes import InboxService
from quicnprotochat.server.services.rate_limits import RateLimit, RateLimiter, RateLimits
from quicnprotochat.server.services.sessions import SessionService
from quicnprotochat.server.store import Clock, Store, StoreLimits, open_store
from quicnprotochat.server.tcp_listener import TcpListener, tls_server_context

log = logging.getLogger("quicnprotochat.server")


def store_limits(config: NodeConfig) -> StoreLimits:
    return StoreLimits(
        max_payload_bytes=config.max_payload_bytes,
        max_inbox_depth=config.max_inbox_depth,
        max_inbox_bytes=config.max_inbox_bytes,
        max_fetch=config.max_fetch_limit,
        max_fetch_bytes=config.max_fetch_bytes,
        max_key_packages_per_identity=config.max_key_packages_per_identity,
    )


def rate_limits(config: NodeConfig) -> RateLimits:
    return RateLimits(
        per_identity=RateLimit(config.rate_per_identity, config.burst_per_identity),
        per_address=RateLimit(config.rate_per_address, config.burst_per_address),
        login_per_username=RateLimit(config.login_rate_per_username, config.login_burst_per_username),
        login_per_address=RateLimit(config.login_rate_per_address, config.login_burst_per_address),
        sealed_per_connection=RateLimit(config.sealed_rate_per_connection, config.sealed_burst_per_connection),
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

    @classmethod
    async def open(cls, config: NodeConfig, identity: NodeIdentity, clock: Clock) -> NodeState:
        store = await open_store(config.store_location, store_limits(config), clock=clock)
        opaque = await load_or_create_opaque_setup(store)
        sessions = SessionService(store, config.session_ttl_seconds, clock)
        return cls(
            config=config,
            identity=identity,
            store=store,
            sessions=sessions,
            accounts=AccountService(
                store, opaque, sessions, login_state_seconds=config.login_state_seconds, clock=clock
            ),
            directory=DirectoryService(store, max_endpoint_bytes=config.max_endpoint_bytes, clock=clock),
            inboxes=InboxService(
                store,
                message_ttl_seconds=config.message_ttl_seconds,
                max_fetch=config.max_fetch_limit,
                max_wait_ms=config.max_wait_ms,
                max_payload_bytes=config.max_payload_bytes,
                allow_sealed_sender=config.allow_sealed_sender,
                clock=clock,
            ),
            limiter=RateLimiter(rate_limits(config)),
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
            },
        }

    async def sweep(self) -> None:
        """Drops what has expired: queued messages past their TTL, sessions, unfinished logins."""
        swept = await self.store.sweep_expired()
        await self.store.purge_expired_sessions()
        await self.store.purge_expired_login_states()
        if swept:
            log.info("dropped %d expired messages", swept)


class Node:
    def __init__(self, config: NodeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or time.time
        self.state: NodeState | None = None
        self.quic_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.identity_created = False
        self._sessions: RpcSessions | None = None
        self._quic: QuicListener | None = None
        self._tcp: TcpListener | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._kj_acquired = False

    @property
    def fingerprint(self) -> str:
        assert self.state is not None
        return self.state.identity.fingerprint

    async def start(self) -> None:
        """Loads or creates the identity, opens the store and binds the listeners."""
        install_error_sanitizer()
        await kj_loop.acquire()
        self._kj_acquired = True
        try:
            identity, self.identity_created = load_or_create_identity(self.config.data_dir)
            state = await NodeState.open(self.config, identity, self._clock)
            self.state = state

            def bootstrap(peer: Peer) -> NodeServiceImpl:
                return NodeServiceImpl(state, peer)

            self._sessions = RpcSessions(bootstrap, self.config.max_message_bytes)
            # Bound what a QUIC stream or TLS connection may buffer ahead of the RPC reader: a few maximal messages.
            max_buffered = 4 * self.config.max_message_bytes
            if self.config.quic_listen:
                self._quic = QuicListener(
                    self._sessions,
                    quic_server_configuration(identity, self.config.quic_idle_timeout_s),
                    max_buffered,
                )
                self.quic_address = await self._quic.start(*parse_listen(self.config.quic_listen))
            if self.config.tcp_listen:
                self._tcp = TcpListener(self._sessions, tls_server_context(identity), max_buffered)
                self.tcp_address = await self._tcp.start(*parse_listen(self.config.tcp_listen))
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        except BaseException:
            await self.stop()
            raise

    async def _sweep_forever(self) -> None:
        assert self.state is not None
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await self.state.sweep()
            except Exception:  # a failed sweep is retried next round; the node keeps serving
                log.exception("sweeping expired data failed")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._quic is not None:
            await self._quic.close()
            self._quic = None
        if self._tcp is not None:
            await self._tcp.close()
            self._tcp = None
        if self._sessions is not None:
            await self._sessions.close()
            self._sessions = None
        if self.state is not None:
            await self.state.store.close()
        if self._kj_acquired:
            self._kj_acquired = False
            await kj_loop.release()


async def serve(config: NodeConfig) -> None:
    """Runs a node until SIGINT or SIGTERM, then stops it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    node = Node(config)
    await node.start()
    try:
        announce(node)
        await stop.wait()
        log.info("shutting down")
    finally:
        await node.stop()
    log.info("stopped")


# What `announce` logs and `parse_announcement` reads back: scripts (tests, qpc-bench) start a node on port 0 and
# learn its fingerprint and ports from these lines, so both live here.
_FINGERPRINT_LINE = re.compile(r"node fingerprint \(SHA-256 of its public key\): (?P<value>[0-9a-f]{64})")
_LISTENING_LINE = re.compile(r"listening for (?P<what>QUIC|TLS over TCP) on (?P<host>\S+):(?P<port>\d+)")


def parse_announcement(line: str) -> tuple[str, str] | None:
    """("fingerprint", hex), ("quic", port) or ("tcp", port) for a line `announce` logged; None for others."""
    if match := _FINGERPRINT_LINE.search(line):
        return "fingerprint", match["value"]
    if match := _LISTENING_LINE.search(line):
        return ("quic" if match["what"] == "QUIC" else "tcp"), match["port"]
    return None


def announce(node: Node) -> None:
    if node.identity_created:
        log.warning("created a new node identity in %s", node.config.data_dir)
    log.warning("node fingerprint (SHA-256 of its public key): %s", node.fingerprint)
    log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    if node.quic_address:
        log.warning("listening for QUIC on %s:%d (udp)", *node.quic_address)
    if node.tcp_address:
        log.warning("listening for TLS over TCP on %s:%d", *node.tcp_address)
