"""The TLS-over-TCP side of the node, for Cap'n Proto implementations without a QUIC stack."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from quicnprotochat.common.capnp_bridge import capnp_protocol_factory
from quicnprotochat.common.schema import ALPN
from quicnprotochat.server.identity import NodeIdentity
from quicnprotochat.server.peer import peer_from_address
from quicnprotochat.server.rpc_session import RpcSessions


def tls_server_context(identity: NodeIdentity) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    context.set_alpn_protocols([ALPN])
    return context


class TcpListener:
    def __init__(self, sessions: RpcSessions, context: ssl.SSLContext) -> None:
        self._sessions = sessions
        self._context = context
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: capnp_protocol_factory(self._on_stream), host, port, ssl=self._context
        )
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def _on_stream(self, stream: Any, protocol: Any) -> None:
        transport: asyncio.BaseTransport = protocol.transport
        self._transports.add(transport)
        peer = peer_from_address("tcp", transport.get_extra_info("peername"))

        def ended() -> None:
            self._transports.discard(transport)
            transport.close()

        self._sessions.start(stream, peer, ended)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.close()
        if self._server is not None:
            await self._server.wait_closed()
