"""The quicnprotochat client library: what bots import, and what the REPL is built on."""

from typing import TYPE_CHECKING, Any

from quicnprotochat.client.known_hosts import FingerprintMismatch, KnownHosts
from quicnprotochat.client.node_client import Envelope, NodeClient, NodeStatus, RateLimit, ServerInfo, ServerLimits

if TYPE_CHECKING:
    from quicnprotochat.client.chat import ChatClient, ChatConfig, ChatError

_CHAT_EXPORTS = ("ChatClient", "ChatConfig", "ChatError")


def __getattr__(name: str) -> Any:
    # The conversation engine loads the native module: imported on first use only.
    if name in _CHAT_EXPORTS:
        from quicnprotochat.client import chat

        return getattr(chat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChatClient",
    "ChatConfig",
    "ChatError",
    "Envelope",
    "FingerprintMismatch",
    "KnownHosts",
    "NodeClient",
    "NodeStatus",
    "RateLimit",
    "ServerInfo",
    "ServerLimits",
]
