"""The conversation engine: DMs, groups and a notepad over MLS and hybrid envelopes (see `engine`).

Bots use `ChatClient` directly; the REPL and the `qpc` command are built on it. The frames inside the
envelopes are documented in `framing`.
"""

from quicnprotochat.client.chat.engine import (
    NOTES_NAME,
    ChatClient,
    ChatConfig,
    ConversationSummary,
    EventStream,
    PasswordSource,
    default_state_dir,
    key_fingerprint,
)
from quicnprotochat.client.chat.errors import (
    ChatError,
    DeliveryFailed,
    LoginFailed,
    MessageTooLarge,
    NodeUnavailable,
    NoHybridKey,
    NoKeyPackage,
    NotAllowed,
    PasswordRequired,
    StateUnavailable,
    UnknownConversation,
    UserNotFound,
)
from quicnprotochat.client.chat.events import (
    ConnectionLost,
    ConnectionRestored,
    ErrorEvent,
    Event,
    JoinedConversation,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    MessageStateChanged,
    Notice,
    RemovedFromConversation,
)

__all__ = [
    "NOTES_NAME",
    "ChatClient",
    "ChatConfig",
    "ChatError",
    "ConnectionLost",
    "ConnectionRestored",
    "ConversationSummary",
    "DeliveryFailed",
    "ErrorEvent",
    "Event",
    "EventStream",
    "JoinedConversation",
    "LoginFailed",
    "MemberJoined",
    "MemberLeft",
    "MessageReceived",
    "MessageStateChanged",
    "MessageTooLarge",
    "NoHybridKey",
    "NoKeyPackage",
    "NodeUnavailable",
    "NotAllowed",
    "Notice",
    "PasswordRequired",
    "PasswordSource",
    "RemovedFromConversation",
    "StateUnavailable",
    "UnknownConversation",
    "UserNotFound",
    "default_state_dir",
    "key_fingerprint",
]
