"""The TLS-over-TCP side of the node, for Cap'n Proto implementations without a QUIC stack.

asyncio's TLS transport drives our own protocol (`TlsStreamProtocol`), which feeds pycapnp through a bridge we
control, as the QUIC side does: pycapnp's own TCP streams crash under uvloop.

The listener accepts connections itself (`loop.sock_accept`) and hands each to the loop's TLS with
`connect_accepted_socket`: that way the per-address connection rate (server/connection_rate.py) is checked on the
accepted socket, and a refused connection is reset before TLS starts; `create_server(ssl=...)` would run the
handshake before the node learns who connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
import struct
import time
from asyncio import sslproto

from quicnprotochat.common.capnp_bridge import attach_capnp_stream
from quicnprotochat.common.schema import ALPN
from quicnprotochat.common.stream_bridge import TlsStreamProtocol, TlsStreamTransport
from quicnprotochat.server.connection_budget import ConnectionBudget
from quicnprotochat.server.connection_rate import ConnectionRate
from quicnprotochat.server.identity import NodeIdentity
from quicnprotochat.server.listen_sockets import listening_tcp_sockets
from quicnprotochat.server.log_throttle import LogThrottle
from quicnprotochat.server.peer import Peer, peer_from_address
from quicnprotochat.server.rpc_session import RpcSessions

log = logging.getLogger("quicnprotochat.server.tcp")
_accept_faults = LogThrottle(log)

# What one connection may buffer ahead of its RPC reader (reading the socket pauses well before that).
DEFAULT_MAX_BUFFERED = 64 * 1024 * 1024
# asyncio's TLS protocol keeps a read buffer of this class attribute's size for every connection (256 KiB by
# default: most of an idle TLS connection's memory). TLS records are at most 16 KiB, so a few records per read
# lose nothing. It is a class attribute, so this applies to every asyncio TLS connection of the process.
TLS_READ_BUFFER_BYTES = 32 * 1024
# How long accepting pauses after an error that is not one broken connection's (see _ONE_CONNECTION_BROKE).
ACCEPT_RETRY_S = 1.0
# The errors of one connection that broke while it waited in the backlog, which Linux hands to accept (accept(2):
# TCP's pending network errors, and a firewall's EPERM): the next connection may be fine, so accepting goes on at
# once. After any other error (out of descriptors, buffers or memory, as asyncio's own server pauses for, or an
# error of the listening socket itself, which would come back on every call) accepting pauses.
_ONE_CONNECTION_BROKE = frozenset(
    {
        errno.ENETDOWN,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.EPERM,
    }
)
# SO_LINGER on, zero seconds: close() resets the connection and the node keeps no TIME_WAIT state for it.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def tls_server_context(identity: NodeIdentity) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with identity.key_file() as key_file:
        context.load_cert_chain(str(identity.cert_path), key_file)
    context.set_alpn_protocols([ALPN])
    return context


class TcpListener:
    def __init__(
        self,
        sessions: RpcSessions,
        context: ssl.SSLContext,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        *,
        write_buffer_high: int,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        connection_rate: ConnectionRate | None = None,
    ) -> None:
        self._sessions = sessions
        self._connection_rate = connection_rate
        self._listening: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._write_buffer_high = write_buffer_high
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._idle_sweeper: asyncio.Task[None] | None = None
        self._budgets: dict[TlsStreamTransport, ConnectionBudget] = {}
        self._context = context
        self._max_buffered = max_buffered
        self._bridges: set[TlsStreamTransport] = set()

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listens on host:port, or accepts on `sock`: a worker's share of a port, listening and non-blocking
        already (server/listen_sockets.py `bind_shared`)."""
        loop = asyncio.get_running_loop()
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES
        self._listening = [sock] if sock is not None else listening_tcp_sockets(host, port)
        self._acceptors = [loop.create_task(self._accept_forever(listening)) for listening in self._listening]
        self._idle_sweeper = loop.create_task(self._close_idle_forever())
        address = self._listening[0].getsockname()
        return str(address[0]), int(address[1])

    async def _accept_forever(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except (ConnectionAbortedError, InterruptedError):
                continue  # the client gave up while it waited in the backlog
            except OSError as error:
                if error.errno in _ONE_CONNECTION_BROKE:
                    # The turn given to the loop keeps a run of broken connections from holding it.
                    _accept_faults.warning(error.errno, "accepting a TLS connection failed: %s", error)
                    await asyncio.sleep(0)
                else:
                    _accept_faults.warning(
                        error.errno, "accepting TLS connections failed: %s; pausing %g s", error, ACCEPT_RETRY_S
                    )
                    await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            peer = peer_from_address("tcp", address)
            rate = self._connection_rate
            if rate is not None and rate.refusal(peer) is not None:
                with contextlib.suppress(OSError):  # the client may have reset it already
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                sock.close()
                continue
            handshake = loop.create_task(self._start_tls(sock, peer))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, sock: socket.socket, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: TlsStreamProtocol(
                    functools.partial(self._on_connection, peer),
                    max_buffered=self._max_buffered,
                    write_buffer_high=self._write_buffer_high,
                ),
                sock,
                ssl=self._context,
                # Also what a connection that never starts TLS, or stops halfway through the handshake, gets.
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except BaseException as error:
            sock.close()  # the loop closes it too when its transport existed; a second close does nothing
            if not isinstance(error, OSError | TimeoutError):  # not a failed or timed-out handshake (ssl.SSLError
                raise  # is an OSError): shutdown's cancellation, or a fault worth its traceback

    def _on_connection(self, peer: Peer, bridge: TlsStreamTransport) -> None:
        if self._sessions.admit(peer) is not None:
            bridge.abort()
            return
        self._bridges.add(bridge)
        budget = self._sessions.bind(bridge, lambda _reason: bridge.abort())
        self._budgets[bridge] = budget
        bridge.on_drained = budget.poke
        stream, _protocol = attach_capnp_stream(bridge)

        def ended() -> None:
            self._bridges.discard(bridge)
            self._budgets.pop(bridge, None)
            bridge.close()

        self._sessions.start(stream, peer, budget, ended)

    async def _close_idle_forever(self) -> None:
        """TLS has no idle timeout of its own (QUIC does): close connections that sent nothing for the idle
        timeout and have no call running (a parked fetchWait is a running call), half-sent frames included."""
        period = max(self._idle_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - self._idle_timeout
            for bridge, budget in list(self._budgets.items()):
                if budget.running == 0 and bridge.last_received < cutoff:
                    self._sessions.counters.refuse("tcp_idle_timeout_s")
                    bridge.abort()

    async def close(self) -> None:
        tasks = [*self._acceptors, *self._handshakes]
        if self._idle_sweeper is not None:
            tasks.append(self._idle_sweeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listening in self._listening:
            listening.close()
        for bridge in list(self._bridges):
            bridge.close()
