"""What the node knows about the other end of one connection."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPV6_PREFIX = 64
"""An IPv6 client is limited by its /64: one host or home network commonly holds a whole /64, so counting by
full address would give a single client 2^64 buckets of every per-address limit."""


def address_key(host: str) -> str:
    """What every per-address limit counts: an IPv4 address, or the /64 network of an IPv6 address."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network(f"{host}/{IPV6_PREFIX}", strict=False))
    except ValueError:
        return host


@dataclass(frozen=True)
class Peer:
    transport: str  # "quic" or "tcp"
    host: str
    port: int
    source: str = field(init=False, compare=False)
    """The key of the per-address limits for this peer (`address_key`), worked out once per connection."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", address_key(self.host))

    def __str__(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"


def peer_from_address(transport: str, address: object) -> Peer:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return Peer(transport, host, int(address[1]))
    return Peer(transport, "unknown", 0)
