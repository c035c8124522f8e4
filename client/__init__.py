"""The quicnprotochat client library: what bots import, and what the REPL is built on."""

from quicnprotochat.client.known_hosts import FingerprintMismatch, KnownHosts
from quicnprotochat.client.node_client import Envelope, NodeClient, ServerInfo, ServerLimits

__all__ = ["Envelope", "FingerprintMismatch", "KnownHosts", "NodeClient", "ServerInfo", "ServerLimits"]
