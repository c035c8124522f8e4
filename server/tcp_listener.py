"""The TLS-over-TCP side of the node, for Cap'n Proto implementations without a QUIC stack.

asyncio's TLS transport drives our own protocol (`TlsStreamProtocol`), which feeds pycapnp through a bridge we
control, as the QUIC side does: pycapnp's own TCP streams crash under uvloop.
"""

from __future__ import annotations

import asyncio
import ssl

from quicnprotochat.common.capnp_bridge import attach_capnp_stream
from quicnprotochat.common.schema import ALPN
from quicnprotochat.common.stream_bridge import TlsStreamProtocol, TlsStreamTransport
from quicnprotochat.server.identity import NodeIdentity
from quicnprotochat.server.peer import peer_from_address
from quicnprotochat.server.rpc_session import RpcSessions

# What one connection may buffer ahead of its RPC reader (reading the socket pauses well before that).
DEFAULT_MAX_BUFFERED = 64 * 1024 * 1024


def tls_server_context(identity: NodeIdentity) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with identity.key_file() as key_file:
        context.load_cert_chain(str(identity.cert_path), key_file)
    context.set_alpn_protocols([ALPN])
    return context


class TcpListener:
    def __init__(
        self, sessions: RpcSessions, context: ssl.SSLContext, max_buffered: int = DEFAULT_MAX_BUFFERED
    ) -> None:
        self._sessions = sessions
        self._context = context
        self._max_buffered = max_buffered
        self._server: asyncio.Server | None = None
        self._bridges: set[TlsStreamTransport] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: TlsStreamProtocol(self._on_connection, max_buffered=self._max_buffered),
            host,
            port,
            ssl=self._context,
        )
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def _on_connection(self, bridge: TlsStreamTransport) -> None:
        self._bridges.add(bridge)
        peer = peer_from_address("tcp", bridge.get_extra_info("peername"))
        stream, _protocol = attach_capnp_stream(bridge)

        def ended() -> None:
            self._bridges.discard(bridge)
            bridge.close()

        self._sessions.start(stream, peer, ended)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for bridge in list(self._bridges):
            bridge.close()
        if self._server is not None:
            await self._server.wait_closed()
