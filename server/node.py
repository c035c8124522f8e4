"""A running node: its identity and state, its listeners, and their start and orderly stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
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
from quicnprotochat.server.tcp_listener import TcpListener, tls_server_context

log = logging.getLogger("quicnprotochat.server")


@dataclass
class NodeState:
    """What every connection's handlers share."""

    config: NodeConfig
    identity: NodeIdentity

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
            },
        }


@dataclass
class Node:
    config: NodeConfig
    state: NodeState | None = None
    quic_address: tuple[str, int] | None = None
    tcp_address: tuple[str, int] | None = None
    identity_created: bool = False
    _sessions: RpcSessions | None = None
    _quic: QuicListener | None = None
    _tcp: TcpListener | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _kj_acquired: bool = False

    @property
    def fingerprint(self) -> str:
        assert self.state is not None
        return self.state.identity.fingerprint

    async def start(self) -> None:
        """Creates or loads the node's identity and binds its listeners."""
        install_error_sanitizer()
        await kj_loop.acquire()
        self._kj_acquired = True
        identity, self.identity_created = load_or_create_identity(self.config.data_dir)
        state = NodeState(self.config, identity)
        self.state = state

        def bootstrap(peer: Peer) -> NodeServiceImpl:
            return NodeServiceImpl(state, peer)

        self._sessions = RpcSessions(bootstrap, self.config.max_message_bytes)
        # Bound what a QUIC stream may buffer ahead of the RPC reader: a few maximal messages.
        max_buffered = 4 * self.config.max_message_bytes
        try:
            if self.config.quic_listen:
                self._quic = QuicListener(
                    self._sessions,
                    quic_server_configuration(identity, self.config.quic_idle_timeout_s),
                    max_buffered,
                )
                self.quic_address = await self._quic.start(*parse_listen(self.config.quic_listen))
            if self.config.tcp_listen:
                self._tcp = TcpListener(self._sessions, tls_server_context(identity))
                self.tcp_address = await self._tcp.start(*parse_listen(self.config.tcp_listen))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._quic is not None:
            await self._quic.close()
        if self._tcp is not None:
            await self._tcp.close()
        if self._sessions is not None:
            await self._sessions.close()
        if self._kj_acquired:
            self._kj_acquired = False
            await kj_loop.release()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(config: NodeConfig, ready: asyncio.Future[Node] | None = None) -> None:
    """Runs a node until SIGINT or SIGTERM, then stops it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    node = Node(config)
    await node.start()
    try:
        announce(node)
        if ready is not None:
            ready.set_result(node)
        await stop.wait()
        log.info("shutting down")
    finally:
        await node.stop()
    log.info("stopped")


def announce(node: Node) -> None:
    assert node.state is not None
    if node.identity_created:
        log.warning("created a new node identity in %s", node.config.data_dir)
    log.warning("node fingerprint (SHA-256 of its public key): %s", node.fingerprint)
    if node.quic_address:
        log.warning("listening for QUIC on %s:%d (udp)", *node.quic_address)
    if node.tcp_address:
        log.warning("listening for TLS over TCP on %s:%d", *node.tcp_address)
