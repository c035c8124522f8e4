"""The QUIC side of the node: each connection carries one client-opened bidirectional stream of RPC."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicnprotochat.common.capnp_bridge import attach_capnp_stream
from quicnprotochat.common.quic_acks import BundledAcksProtocol
from quicnprotochat.common.quic_stream import QuicStreamTransport, StreamBufferOverflow
from quicnprotochat.common.schema import ALPN
from quicnprotochat.server.connection_budget import ConnectionBudget
from quicnprotochat.server.connection_rate import ConnectionRate
from quicnprotochat.server.identity import NodeIdentity
from quicnprotochat.server.peer import Peer, peer_from_address
from quicnprotochat.server.quic_admission import InitialAdmission
from quicnprotochat.server.quic_connection_ids import IndexedQuicServer
from quicnprotochat.server.quic_resets import StatelessResets
from quicnprotochat.server.quic_retry import RotatingRetryTokens, serve_quic
from quicnprotochat.server.rpc_session import RpcSessions

log = logging.getLogger("quicnprotochat.server.quic")

# Application error code for a peer that broke the one-stream-per-connection rule or flooded a stream.
PROTOCOL_VIOLATION = 0x1
# Application error code for a connection past one of the node's connection caps.
CONNECTION_REFUSED = 0x2


def _is_client_bidi(stream_id: int) -> bool:
    return stream_id % 4 == 0


class NodeQuicConnection(BundledAcksProtocol):
    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        sessions: RpcSessions,
        connections: set[NodeQuicConnection],
        max_buffered: int,
        handshake_timeout: float,
        resets: StatelessResets,
    ) -> None:
        super().__init__(quic, stream_handler)
        self._resets = resets
        resets.issue_tokens(quic)
        self._sessions = sessions
        self._connections = connections
        self._max_buffered = max_buffered
        # A peer that starts a handshake and never finishes it holds a connection until this fires.
        self._handshake_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            handshake_timeout, self._handshake_overdue
        )
        self._stream: QuicStreamTransport | None = None
        self._peer: Peer | None = None
        self._budget: ConnectionBudget | None = None
        connections.add(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self._peer is None:
            self._peer = peer_from_address("quic", addr)
        super().datagram_received(data, addr)
        if self._budget is not None:
            # Acknowledgements shrink the stream's unsent answers: calls and reading held back may go on.
            self._budget.poke()

    def _handshake_overdue(self) -> None:
        self._handshake_timer = None
        self._sessions.counters.refuse("handshake_timeout_s")
        self._violation("the handshake did not finish in time")

    def _stop_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionIdIssued):
            # Handled before the ids go out: NEW_CONNECTION_ID frames are written at the next transmit.
            self._resets.issue_tokens(self._quic)
        elif isinstance(event, events.HandshakeCompleted):
            self._stop_handshake_timer()
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.StreamReset):
            if self._stream is not None and event.stream_id == self._stream.stream_id:
                self._stream.connection_lost(ConnectionResetError("the client reset its RPC stream"))
        elif isinstance(event, events.ConnectionTerminated):
            self._stop_handshake_timer()
            self._connections.discard(self)
            if self._stream is not None:
                self._stream.connection_lost(ConnectionError(event.reason_phrase or "connection closed"))

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        if self._stream is None:
            if not _is_client_bidi(event.stream_id):
                self._violation("the RPC stream must be a client-opened bidirectional stream")
                return
            refused = self._sessions.admit(self._peer or Peer("quic", "unknown", 0))
            if refused is not None:
                self.close(error_code=CONNECTION_REFUSED, reason_phrase=f"{refused} reached")
                return
            self._stream = QuicStreamTransport(
                self._quic,
                event.stream_id,
                self.answer_queued,
                max_buffered=self._max_buffered,
                on_closed=self._rpc_stream_closed,
                extra={"peername": self._peer},
            )
            self._budget = self._sessions.bind(self._stream, self._violation)
            stream, _protocol = attach_capnp_stream(self._stream)
            self._sessions.start(
                stream, self._peer or Peer("quic", "unknown", 0), self._budget, self._rpc_stream_closed
            )
        elif event.stream_id != self._stream.stream_id:
            self._violation("one RPC stream per connection")
            return
        try:
            self._stream.feed(event.data, event.end_stream)
        except StreamBufferOverflow as error:
            self._violation(str(error))

    def _rpc_stream_closed(self) -> None:
        # The RPC session is the connection's only purpose; once it is over the connection goes too.
        self.close()

    def _violation(self, reason: str) -> None:
        log.info("closing QUIC connection from %s: %s", self._peer, reason)
        self.close(error_code=PROTOCOL_VIOLATION, reason_phrase=reason)


def quic_server_configuration(identity: NodeIdentity, idle_timeout: float) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], idle_timeout=idle_timeout, verify_mode=ssl.CERT_NONE
    )
    # The key object, not a path: a sealed key has no file to load from.
    configuration.certificate = identity.certificate
    configuration.private_key = identity.private_key
    return configuration


class QuicListener:
    def __init__(
        self,
        sessions: RpcSessions,
        configuration: QuicConfiguration,
        max_buffered: int,
        retry: RotatingRetryTokens | None = None,
        *,
        handshake_timeout: float = 10.0,
        resets: StatelessResets,
        connection_rate: ConnectionRate | None = None,
    ) -> None:
        self._retry = retry
        self._admission = (
            None
            if connection_rate is None
            else InitialAdmission(connection_rate, configuration, None if retry is None else retry.proves_address)
        )
        self._resets = resets
        self._sessions = sessions
        self._handshake_timeout = handshake_timeout
        self._configuration = configuration
        self._max_buffered = max_buffered
        self._connections: set[NodeQuicConnection] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._server: IndexedQuicServer | None = None

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def connection_ids(self) -> int:
        """Connection ids the node routes QUIC datagrams by: those of live connections only."""
        return 0 if self._server is None else self._server.connection_ids

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> tuple[str, int]:
        """Binds host:port, or serves `sock`, a UDP socket bound already (a worker's share of a port)."""
        loop = asyncio.get_running_loop()
        create_protocol = functools.partial(
            NodeQuicConnection,
            sessions=self._sessions,
            connections=self._connections,
            max_buffered=self._max_buffered,
            handshake_timeout=self._handshake_timeout,
            resets=self._resets,
        )
        transport, server = await loop.create_datagram_endpoint(
            lambda: serve_quic(self._configuration, create_protocol, self._retry, self._resets, self._admission),
            **({"sock": sock} if sock is not None else {"local_addr": (host, port)}),
        )
        self._transport = transport
        self._server = server
        address = transport.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        connections = list(self._connections)
        for connection in connections:
            connection.close(reason_phrase="node shutting down")
        # Closing waits for the peer's acknowledgement (or a few probe timeouts); don't let one slow peer
        # hold up shutdown.
        if connections:
            await asyncio.wait(
                [asyncio.ensure_future(connection.wait_closed()) for connection in connections], timeout=2.0
            )
        if self._transport is not None:
            self._transport.close()
