"""The client's local state, encrypted at rest: conversations and messages (SQLCipher), the session token
cache (QPCE sealed file) and the native Vault's key, all from one state password.

Entry point: ``state = await StateDir(path).open(password)``; ``state.encrypted`` false means state is kept in
clear and the client must show ``state.warning``. See `keys` for the key derivation and separation,
`conversations` for the store, `sealed` for the file format.
"""

from quicnprotochat.client.state.conversations import (
    CONVERSATION_KINDS,
    SCHEMA_VERSION,
    Conversation,
    ConversationKind,
    ConversationStore,
    Member,
    Message,
    database_file_kind,
    encrypt_in_place,
)
from quicnprotochat.client.state.errors import (
    ConversationExists,
    ConversationNotFound,
    CorruptState,
    SchemaTooNew,
    StateError,
    StatePasswordRequired,
    StoreClosed,
    WrongStatePassword,
)
from quicnprotochat.client.state.keys import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    StateKeys,
    derive_state_key,
    wipe,
)
from quicnprotochat.client.state.outbox import MESSAGE_STATES, MessageState, OutgoingCopy, PendingCopy
from quicnprotochat.client.state.routes import Route
from quicnprotochat.client.state.sealed import CachedSession, SealedFile, TokenCache
from quicnprotochat.client.state.statedir import PLAINTEXT_WARNING, ClientState, StateDir

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "CONVERSATION_KINDS",
    "MESSAGE_STATES",
    "PLAINTEXT_WARNING",
    "SCHEMA_VERSION",
    "CachedSession",
    "ClientState",
    "Conversation",
    "ConversationExists",
    "ConversationKind",
    "ConversationNotFound",
    "ConversationStore",
    "CorruptState",
    "Member",
    "Message",
    "MessageState",
    "OutgoingCopy",
    "PendingCopy",
    "Route",
    "SchemaTooNew",
    "SealedFile",
    "StateDir",
    "StateError",
    "StateKeys",
    "StatePasswordRequired",
    "StoreClosed",
    "TokenCache",
    "WrongStatePassword",
    "database_file_kind",
    "derive_state_key",
    "encrypt_in_place",
    "wipe",
]
