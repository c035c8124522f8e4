"""One port shared by several node processes: per worker, its own UDP and TCP socket bound with SO_REUSEPORT.

The supervisor binds them all before it starts any worker and keeps them open for its whole life, so that
- port 0 works (the first socket picks the port, the others join it);
- a worker that dies leaves its sockets in the port's reuseport group: the kernel keeps sending that worker's share
  of flows (by address hash) to the same sockets, TCP connections wait in the listen backlog, and the restarted
  worker serves them; the other workers' flows never move.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from quicnprotochat.server.config import NodeConfig, parse_listen

TCP_BACKLOG = 1024


@dataclass
class ListenSockets:
    """What one worker serves: its QUIC (UDP) socket and its TLS (TCP) socket, each bound already, or None for a
    listener that is off."""

    quic: socket.socket | None = None
    tcp: socket.socket | None = None

    def close(self) -> None:
        for sock in (self.quic, self.tcp):
            if sock is not None:
                sock.close()

    def fds(self) -> set[int]:
        return {sock.fileno() for sock in (self.quic, self.tcp) if sock is not None}


def bind_shared(config: NodeConfig, count: int) -> list[ListenSockets]:
    """`count` workers' sockets on the configured QUIC and TLS addresses (each worker its own, one port)."""
    shares = [ListenSockets() for _ in range(count)]
    try:
        if config.quic_listen:
            for share, sock in zip(shares, _bind_group(config.quic_listen, socket.SOCK_DGRAM, count), strict=True):
                share.quic = sock
        if config.tcp_listen:
            for share, sock in zip(shares, _bind_group(config.tcp_listen, socket.SOCK_STREAM, count), strict=True):
                share.tcp = sock
    except BaseException:
        for share in shares:
            share.close()
        raise
    return shares


def listening_tcp_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets listening on every address `host` resolves to, as asyncio's create_server binds them (without
    SO_REUSEPORT: a second node on the same port fails instead of sharing it)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_group(address: str, kind: socket.SocketKind, count: int) -> list[socket.socket]:
    host, port = parse_listen(address)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=kind)[0]
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind)
            group.append(sock)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            if kind == socket.SOCK_STREAM:
                sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
            # The next ones join the port the first one got (port 0 picks one).
            sockaddr = (sockaddr[0], sock.getsockname()[1], *sockaddr[2:])
    except BaseException:
        for sock in group:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return group
