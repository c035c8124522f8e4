"""What the conversation engine reports to its user (the REPL, a bot): see `ChatClient.events`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quicnprotochat.client.state import Conversation, Message


@dataclass(frozen=True)
class MessageReceived:
    """A message from a peer was decrypted and stored (it is in `history` from now on)."""

    conversation: Conversation
    message: Message


@dataclass(frozen=True)
class MemberJoined:
    conversation: Conversation
    identity_key: bytes
    username: str | None
    by: str | None
    """Username of the member who added them, when known."""


@dataclass(frozen=True)
class MemberLeft:
    conversation: Conversation
    identity_key: bytes
    username: str | None
    by: str | None
    """Who committed the removal (for a `left` member: who confirmed its leave)."""
    left: bool = False
    """The member asked to leave (`/leave`) rather than being removed."""


@dataclass(frozen=True)
class JoinedConversation:
    """A Welcome was accepted: this client is now a member of `conversation`."""

    conversation: Conversation
    inviter: str | None


@dataclass(frozen=True)
class RemovedFromConversation:
    """Another member removed this client (or, with `left`, committed its `/leave`); the history stays, nothing
    new can be read or sent."""

    conversation: Conversation
    by: str | None
    left: bool = False


@dataclass(frozen=True)
class GroupBroken:
    """A change the node accepted for this group cannot be processed here (corrupt, or made by a faulty or
    hostile member): the group cannot go on for this client. `ChatClient.recreate` makes a new group with its
    current members."""

    conversation: Conversation
    by: str | None
    """Who sent the change, as its frame claims (None if unknown)."""
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something worth telling the user that is not an error (connection restored, ...)."""

    text: str


@dataclass(frozen=True)
class ErrorEvent:
    """Something failed in the background (node unreachable, an undecryptable message, ...)."""

    text: str
    error: BaseException | None = None


@dataclass(frozen=True)
class MessageStateChanged:
    """An outgoing message reached its final state: `message.state` is "sent" (with `server_seq`) or "failed"
    (with `message.failure`)."""

    conversation: Conversation
    message: Message


@dataclass(frozen=True)
class ReceiptReceived:
    """A member got (`kind` "delivered") or read (`kind` "read") a message this client sent; `message.receipt`
    is updated."""

    conversation: Conversation
    message: Message
    kind: Literal["delivered", "read"]
    by: str | None
    """Username of the member who sent the receipt, when known."""


@dataclass(frozen=True)
class FileReceived:
    """An attachment of `message` was fetched and checked (`path`: where it was saved), or refused (`error`)."""

    conversation: Conversation
    message: Message
    name: str
    path: Path | None
    error: str | None


@dataclass(frozen=True)
class ConnectionLost:
    """The node stopped answering; the client tries again by itself, first after `retry_in` seconds. Messages
    sent meanwhile stay pending and go out, in order, once it is back."""

    reason: str
    retry_in: float


@dataclass(frozen=True)
class ConnectionRestored:
    """The node answers again (after a `ConnectionLost`)."""


@dataclass(frozen=True)
class BotApprovalRequested:
    """A bot key the node has not seen asks to act as your bot `name`: answer with `ChatClient.answer_bot`
    before `expires_at` (unix seconds), or it is refused. Every client of yours logged in now is asked."""

    request_id: bytes
    identity_key: bytes
    name: str
    expires_at: float


@dataclass(frozen=True)
class BotApprovalDecided:
    """A request this client was asked is decided (here or on another of your clients, or it expired): withdraw
    its prompt. `state` is "approved", "refused" or "expired"."""

    request_id: bytes
    identity_key: bytes
    name: str
    state: str


Event = (
    MessageReceived
    | MemberJoined
    | MemberLeft
    | JoinedConversation
    | RemovedFromConversation
    | GroupBroken
    | Notice
    | ErrorEvent
    | MessageStateChanged
    | ReceiptReceived
    | FileReceived
    | ConnectionLost
    | ConnectionRestored
    | BotApprovalRequested
    | BotApprovalDecided
)
