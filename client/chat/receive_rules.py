"""The receive rules, with no I/O: given one decoded incoming message and the state it concerns, say what to do.

Like h11 for HTTP, this module reads nothing from the network, the vault or the store and writes nothing: the
receive loops (`receiver`) feed it what they decoded or what the vault answered, and carry out the action it
returns. That keeps the rules testable without a node (tests/client/test_receive_rules.py).

Actions: `StoreMessage` (an application message to keep and show), `ApplyReceipt` (a member got or read our
messages), `ApplyCommit` (the member list changed), `CommitProposals` (a member asked to leave: commit it),
`BreakGroup` (a change the node accepted cannot be processed: the group cannot go on here, say so loudly), `Defer`
(hold the envelope and everything after it in its inbox: the group is not known yet, or this client's own commit
awaits the node's answer), `Drop` (tell the user why, ack, go on), `Ignore` (nothing to show). Per inbox,
`InboxRules` decides how long a held envelope may block its inbox and how often a failing one is tried again.

With the node ordering each group's commits (one per epoch, enqueued to every member in the same order), a
member's inbox brings every commit of its groups in epoch order. So a commit this client cannot process at its
current epoch, or any message from a later epoch, means the group cannot go on for it: not a message to skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from quicnprotochat.client.state import Conversation
from quicnprotochat.native import GroupNotFound, NativeError, ProcessedMessage, WrongEpoch

from .framing import FileContent, FrameError, ReceiptContent, TextContent, WelcomeFrame, decode_content

MAX_TRIES = 3
"""How often an envelope that fails for a local reason (a bug, a full disk) is tried before it is given up."""


@dataclass(frozen=True)
class StoreMessage:
    conversation: Conversation
    content: TextContent | FileContent
    sender: bytes | None


@dataclass(frozen=True)
class ApplyReceipt:
    """A member says it got (or read) messages this client sent."""

    conversation: Conversation
    receipt: ReceiptContent
    sender: bytes | None


@dataclass(frozen=True)
class ApplyCommit:
    conversation: Conversation
    group_id: bytes
    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    self_removed: bool
    sender: bytes | None


@dataclass(frozen=True)
class CommitProposals:
    """Members asked to leave (remove proposals at `epoch`): a remaining member commits them."""

    conversation: Conversation
    group_id: bytes
    epoch: int
    removed: tuple[bytes, ...]


@dataclass(frozen=True)
class BreakGroup:
    conversation: Conversation
    group_id: bytes
    reason: str
    claimed_sender: bytes | None


@dataclass(frozen=True)
class Defer:
    """Hold the message: its group is not known yet (`"group"`: its Welcome may still be on its way), or this
    client's own commit to it awaits the node's answer (`"own_commit"`: no time limit)."""

    waiting_for: Literal["group", "own_commit"] = "group"


@dataclass(frozen=True)
class Drop:
    reason: str
    """One sentence for the user (an `ErrorEvent`)."""
    error: BaseException | None = None


@dataclass(frozen=True)
class Ignore:
    """Handled; nothing to store or show."""


Action = StoreMessage | ApplyReceipt | ApplyCommit | CommitProposals | BreakGroup | Defer | Drop | Ignore


@dataclass(frozen=True)
class Header:
    """What the clear MLS framing of a message says (`native.mls_message_info`)."""

    group_id: bytes
    epoch: int
    content_type: Literal["application", "proposal", "commit"]


@dataclass(frozen=True)
class GroupView:
    """What this client knows of the group a message is for."""

    conversation: Conversation | None
    epoch: int | None
    """The vault's epoch of the group; None: the vault has no such group."""
    own_commit_unconfirmed: bool = False
    broken: bool = False
    """Already reported as unable to go on."""
    deleted: bool = False
    """Deleted locally by the user."""
    left: bool = False
    """This client left or was removed (its history stays)."""


def is_new(seq: int, last_processed_seq: int) -> bool:
    """A redelivered envelope (its ack was lost, or the client crashed before acking) is not processed again."""
    return seq > last_processed_seq


def after_open_failure(seq: int, error: NativeError | FrameError) -> Drop:
    """The hybrid envelope did not open, or its frame did not parse."""
    return Drop(f"ignored an envelope that does not open or parse (seq {seq}): {error}", error)


def before_processing(header: Header, group: GroupView) -> Defer | Ignore | None:
    """Whether to hand the message to the vault at all (None: process it)."""
    if group.epoch is None and group.deleted:
        return Ignore()  # a conversation the user deleted: its group's traffic is not news
    if group.own_commit_unconfirmed:
        return Defer("own_commit")
    if group.broken:
        return Ignore()  # said loudly once; everything after it fails the same way
    return None


def decrypt_ahead(header: Header, group: GroupView) -> bool:
    """Whether a fetched message may be processed by the vault together with the ones before it (one transaction
    for a run of them: `Vault.process_batch`). Only application messages of a group this client is in, at an
    epoch it has reached, that `before_processing` lets through: they change no group state that a later
    message's handling depends on. A handshake message ends the run (what follows must see its epoch)."""
    return (
        header.content_type == "application"
        and group.epoch is not None
        and header.epoch <= group.epoch
        and before_processing(header, group) is None
    )


def direct_refusal(header: Header, group: GroupView) -> str | None:
    """Why a message that came straight from a peer (direct delivery) must come through the node's inbox
    instead, or None to process it now. Only application messages of the group's current epoch are taken
    directly: anything else depends on the order the node gives (a commit before the messages of its epoch),
    so the sender falls back to the node and the copy there arrives in that order."""
    if header.content_type != "application":
        return "only application messages travel directly"
    if group.conversation is None or group.epoch is None:
        return "a group this client has not joined"
    if header.epoch != group.epoch:
        return f"a message of epoch {header.epoch} while this client is at epoch {group.epoch}"
    if group.own_commit_unconfirmed or group.broken or group.left or group.deleted:
        return "the group is not taking messages now"
    return None


def after_process_failure(
    seq: int,
    error: NativeError,
    header: Header | None = None,
    group: GroupView | None = None,
    claimed_sender: bytes | None = None,
) -> Action:
    """The vault could not process an MLS message."""
    if isinstance(error, GroupNotFound):
        return Defer()
    if header is not None and group is not None and group.conversation is not None and group.epoch is not None:
        if header.content_type == "commit" and header.epoch >= group.epoch:
            return BreakGroup(
                group.conversation,
                header.group_id,
                f"a change for epoch {header.epoch} cannot be processed: {error}",
                claimed_sender,
            )
        if header.epoch > group.epoch:
            return BreakGroup(
                group.conversation,
                header.group_id,
                f"a message from epoch {header.epoch} arrived while this client is at epoch {group.epoch}: "
                "a change is missing",
                claimed_sender,
            )
    if isinstance(error, WrongEpoch):
        return Drop(f"dropped a message from another epoch (seq {seq}): {error}", error)
    return Drop(f"dropped a message that does not decrypt (seq {seq}): {error}", error)


def after_processed(processed: ProcessedMessage, conversation: Conversation | None, *, left: bool = False) -> Action:
    """What a message the vault processed means for the conversation it belongs to (`left`: this client left
    it, so new messages are not shown, while commits still keep its state right)."""
    if conversation is None:
        return Drop("dropped a message for a group without a conversation")
    if processed.kind == "proposal":
        if left or not processed.removed:
            return Ignore()
        return CommitProposals(conversation, processed.group_id, processed.epoch, tuple(processed.removed))
    if processed.kind == "application" and left:
        return Ignore()
    if processed.kind == "application":
        try:
            content = decode_content(processed.plaintext or b"")
        except FrameError as error:
            return Drop(f"ignored a message this client cannot read: {error}", error)
        if isinstance(content, ReceiptContent):
            return ApplyReceipt(conversation, content, processed.sender)
        return StoreMessage(conversation, content, processed.sender)
    return ApplyCommit(
        conversation,
        processed.group_id,
        tuple(processed.added),
        tuple(processed.removed),
        processed.self_removed,
        processed.sender,
    )


def dm_welcome_problem(frame: WelcomeFrame, members: list[bytes], self_key: bytes) -> str | None:
    """Why a joined DM Welcome cannot be kept (its members must be exactly its sender and us), or None."""
    others = [key for key in members if key != self_key]
    if frame.inviter not in members or others != [frame.inviter] or frame.channel_id is None:
        return "ignored a DM invitation whose members do not match its sender"
    return None


def dm_to_keep(existing_group_id: bytes, new_group_id: bytes) -> Literal["existing", "new"]:
    """Both sides opened the DM at once: both keep both groups and both send in the one whose id is smaller, so
    that they end up in the same group; messages of the other still land in the conversation (an alias)."""
    return "new" if new_group_id < existing_group_id else "existing"


@dataclass
class InboxRules:
    """Per inbox: how long a held envelope may block it, and how often a failing envelope is tried."""

    defer_seconds: float
    max_tries: int = MAX_TRIES
    deferred_since: dict[int, float] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)

    def hold(self, seq: int, now: float, *, final: bool, defer: Defer | None = None) -> bool:
        """The envelope at `seq` waits: True to hold it (and what follows), False to drop it now. A non-final
        pass (a `sync`) always holds, and so does waiting for this client's own commit: only the receive loop
        gives up on an unknown group, after `defer_seconds`."""
        first = self.deferred_since.setdefault(seq, now)
        if defer is not None and defer.waiting_for == "own_commit":
            return True
        return not final or now - first < self.defer_seconds

    def retry(self, seq: int) -> bool:
        """The envelope at `seq` failed for a local reason: True to try again later, False to give up on it (so
        that one bad envelope cannot block its inbox for ever)."""
        tries = self.failures.get(seq, 0) + 1
        self.failures[seq] = tries
        return tries < self.max_tries

    def done(self, seq: int) -> None:
        self.failures.pop(seq, None)
        self.deferred_since.pop(seq, None)
