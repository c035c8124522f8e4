"""A running node: its identity, store and services, its listeners, and their start and orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import re
import signal
import time
from collections.abc import Callable

from quicnprotochat.common import kj_loop
from quicnprotochat.common.schema import node_schema
from quicnprotochat.native import RootKey
from quicnprotochat.server.at_rest import node_root_key, open_secrets
from quicnprotochat.server.config import NodeConfig, parse_listen
from quicnprotochat.server.connection_budget import ConnectionBudget
from quicnprotochat.server.connection_rate import ConnectionRate
from quicnprotochat.server.identity import ensure_data_dir
from quicnprotochat.server.listen_sockets import ListenSockets
from quicnprotochat.server.metrics import NodeMetrics, instrument
from quicnprotochat.server.metrics_http import MetricsEndpoint
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.node_state import NodeState, connection_limits, store_limits
from quicnprotochat.server.peer import Peer
from quicnprotochat.server.quic_listener import QuicListener, quic_server_configuration
from quicnprotochat.server.quic_resets import StatelessResets
from quicnprotochat.server.quic_retry import RotatingRetryTokens
from quicnprotochat.server.rpc_errors import install_error_sanitizer
from quicnprotochat.server.rpc_service import NodeServiceImpl
from quicnprotochat.server.rpc_session import RpcSessions
from quicnprotochat.server.services.errors import faults
from quicnprotochat.server.services.rate_limits import RateLimit
from quicnprotochat.server.startup_heap import freeze_startup_heap
from quicnprotochat.server.store import Clock, StoreError, open_store
from quicnprotochat.server.tcp_listener import TcpListener, tls_server_context

log = logging.getLogger("quicnprotochat.server")


RootKeyLoader = Callable[[], RootKey | None]


class Node:
    def __init__(
        self,
        config: NodeConfig,
        clock: Clock | None = None,
        *,
        sockets: ListenSockets | None = None,
        root_key: RootKeyLoader | None = None,
    ) -> None:
        """`sockets`: listen on these (bound already: a worker's share of the port) instead of binding the
        configured addresses. `root_key`: the root key loaded already (a supervisor asks for a passphrase once)."""
        self.config = config
        self._clock: Clock = clock or time.time
        self._sockets = sockets or ListenSockets()
        self._root_key = root_key or functools.partial(node_root_key, config)
        self.state: NodeState | None = None
        self.quic_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.identity_created = False
        self._sessions: RpcSessions | None = None
        self._quic: QuicListener | None = None
        self._tcp: TcpListener | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics: NodeMetrics | None = None
        self.metrics_address: tuple[str, int] | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._kj_acquired = False

    @property
    def counters(self) -> NodeCounters:
        """Connections, parked long-polls and refusals by limit (see server/node_counters.py)."""
        assert self.state is not None
        return self.state.counters

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
            root = self._root_key()
            ensure_data_dir(self.config.data_dir)
            store = await open_store(self.config.store_location, store_limits(self.config), clock=self._clock)
            try:
                secrets = await open_secrets(self.config, root, store)
            except BaseException:
                await store.close()
                raise
            identity, self.identity_created = secrets.identity, secrets.identity_created
            state = await NodeState.open(self.config, identity, self._clock, store, secrets.opaque, root)
            self.state = state

            self.metrics = NodeMetrics(state)
            service_class = instrument(NodeServiceImpl, self.metrics)

            def bootstrap(peer: Peer, budget: ConnectionBudget) -> NodeServiceImpl:
                return service_class(state, peer, budget)

            self._sessions = RpcSessions(
                bootstrap,
                self.config.max_message_bytes,
                connection_limits(self.config),
                state.counters,
                served=node_schema().NodeService,
            )
            sessions = self._sessions
            state.connections = lambda: sessions.active
            # Bound what a QUIC stream or TLS connection may buffer ahead of the RPC reader: a few maximal messages.
            max_buffered = 4 * self.config.max_message_bytes
            connection_rate = ConnectionRate(
                RateLimit(self.config.connection_rate_per_address, self.config.connection_burst_per_address),
                state.counters,
                self.config.connection_rate_max_addresses,
            )
            state.connection_rate_addresses = lambda: connection_rate.addresses
            if self.config.quic_listen:
                retry = RotatingRetryTokens(self.config.quic_retry_period_s) if self.config.quic_retry else None
                self._quic = QuicListener(
                    self._sessions,
                    quic_server_configuration(identity, self.config.quic_idle_timeout_s),
                    max_buffered,
                    retry,
                    handshake_timeout=self.config.handshake_timeout_s,
                    resets=StatelessResets.of(identity),
                    connection_rate=connection_rate,
                )
                self.quic_address = await self._quic.start(
                    *parse_listen(self.config.quic_listen), sock=self._sockets.quic
                )
                quic = self._quic
                state.quic_connections = lambda: quic.connections
                state.quic_connection_ids = lambda: quic.connection_ids
                state.retry = None if retry is None else retry.stats
            if self.config.tcp_listen:
                self._tcp = TcpListener(
                    self._sessions,
                    tls_server_context(identity),
                    max_buffered,
                    write_buffer_high=self.config.max_unsent_bytes_per_connection,
                    handshake_timeout=self.config.handshake_timeout_s,
                    idle_timeout=self.config.tcp_idle_timeout_s,
                    connection_rate=connection_rate,
                )
                self.tcp_address = await self._tcp.start(*parse_listen(self.config.tcp_listen), sock=self._sockets.tcp)
            if self.config.metrics_listen:
                metrics = self.metrics

                async def probe_first() -> None:
                    metrics.health_seen(await state.health.check())

                self._metrics_endpoint = MetricsEndpoint(metrics, probe_first)
                self.metrics_address = await self._metrics_endpoint.start(*parse_listen(self.config.metrics_listen))
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
            except StoreError as error:  # a known store fault (outage, full disk): retried next round, logged once
                faults.warning("sweep", "sweeping expired data failed: %s; retried next round", error)
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
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.close()
            self._metrics_endpoint = None
        if self._sessions is not None:
            await self._sessions.close()
            self._sessions = None
        if self.state is not None:
            await self.state.store.close()
        if self._kj_acquired:
            self._kj_acquired = False
            await kj_loop.release()


async def serve(config: NodeConfig, node: Node | None = None, ready: Callable[[], None] | None = None) -> None:
    """Runs a node (a new one of `config`, or `node`) until SIGINT or SIGTERM, then stops it cleanly; `ready` is
    called once it listens."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    node = node or Node(config)
    await node.start()
    try:
        freeze_startup_heap()
        announce(node)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("shutting down")
    finally:
        await node.stop()
    log.info("stopped")


# What `announce` logs and `parse_announcement` reads back: scripts (tests, qpc-bench) start a node on port 0 and
# learn its fingerprint and ports from these lines, so both live here.
_FINGERPRINT_LINE = re.compile(r"node fingerprint \(SHA-256 of its public key\): (?P<value>[0-9a-f]{64})")
_LISTENING_LINE = re.compile(r"listening for (?P<what>QUIC|TLS over TCP) on (?P<host>\S+):(?P<port>\d+)")
_METRICS_LINE = re.compile(r"serving Prometheus metrics on http://(?P<host>\S+):(?P<port>\d+)/metrics")


def parse_announcement(line: str) -> tuple[str, str] | None:
    """("fingerprint", hex), ("quic", port), ("tcp", port) or ("metrics", port) for a line `announce` logged; None
    for others."""
    if match := _FINGERPRINT_LINE.search(line):
        return "fingerprint", match["value"]
    if match := _LISTENING_LINE.search(line):
        return ("quic" if match["what"] == "QUIC" else "tcp"), match["port"]
    if match := _METRICS_LINE.search(line):
        return "metrics", match["port"]
    return None


def announce(node: Node) -> None:
    if node.identity_created:
        log.warning("created a new node identity in %s", node.config.data_dir)
    log.warning("node fingerprint (SHA-256 of its public key): %s", node.fingerprint)
    log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    log.debug("settings: %s", settings_text(node.config))
    if node.quic_address:
        log.warning("listening for QUIC on %s:%d (udp)", *node.quic_address)
    if node.tcp_address:
        log.warning("listening for TLS over TCP on %s:%d", *node.tcp_address)
    if node.metrics_address:
        log.warning("serving Prometheus metrics on http://%s:%d/metrics", *node.metrics_address)
    if advice := retry_advice(node.config):
        log.warning("%s", advice)


# Left out of the debug line of settings: a database URL may carry its password.
_UNLOGGED_SETTINGS = ("store",)


def settings_text(config: NodeConfig) -> str:
    return ", ".join(
        f"{field.name}={getattr(config, field.name)}"
        for field in dataclasses.fields(config)
        if field.name not in _UNLOGGED_SETTINGS
    )


def retry_advice(config: NodeConfig) -> str | None:
    """What to say when QUIC listens beyond loopback without retry, where spoofed-source floods can reach it."""
    if not config.quic_listen or config.quic_retry:
        return None
    host, _ = parse_listen(config.quic_listen)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return None
    if host == "localhost":
        return None
    return (
        f"QUIC listens on {host} without retry: --quic-retry (quic_retry = true) keeps a spoofed-source flood "
        "from costing the node a connection per packet"
    )
