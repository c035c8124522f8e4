"""What the node knows about the other end of one connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    transport: str  # "quic" or "tcp"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"


def peer_from_address(transport: str, address: object) -> Peer:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return Peer(transport, host, int(address[1]))
    return Peer(transport, "unknown", 0)
