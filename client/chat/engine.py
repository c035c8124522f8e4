"""`ChatClient`: conversations (1:1 DMs, groups, a local notepad) over MLS and hybrid envelopes.

This is what bots and the REPL use::

    chat = await ChatClient.open(ChatConfig(server="127.0.0.1:7700", username="alice", password="...",
                                            state_dir=Path("..."), state_password="...", register=True))
    await chat.start()                       # background receive loops
    conversation = await chat.dm("bob")
    await chat.send(conversation, "hello")
    async for event in chat.events():        # MessageReceived, JoinedConversation, MemberJoined, ...
        ...
    await chat.close()

`ChatClient` is a facade over parts with one job each, which share a `ChatContext` (state, vault, node
connection, the MLS lock, the event bus):

- `session`: registration, login and the session-token cache;
- `key_packages`: own hybrid key and KeyPackage stock on the node, peers' KeyPackages;
- `directory`: usernames, identity keys and hybrid keys of peers;
- `conversations`: the local view (lookup, listing, membership, member lists);
- `group_ops`: DMs and groups: create, invite, remove, update keys, leave, delete, re-create;
- `commits`: the commit protocol: every group change through the node's sequencer (`group_rules`: no I/O);
- `sending` and `delivery`: encrypting application messages; sealing and enqueueing any frame;
- `receiver`: the receive loops (I/O), carrying out what `receive_rules` (no I/O) decides;
- `coffer`: the secrets the node's operator provisioned for this key (bots: `await chat.coffer()`);
- `direct`: opt-in direct delivery of application messages over iroh (`p2p_endpoint`, `direct_wire`), the node
  as fallback.

First use
---------
The Vault of the state directory already holds the Ed25519 identity key (the MLS credential) and the X-Wing
key pair. `open` registers the account when asked (`register=True`, once per state directory), logs in (or
reuses the cached session token), publishes the hybrid public key, and uploads a stock of KeyPackages
(`key_packages`, default 10, plus one last-resort package). The node has no count RPC, so the client counts
itself: every Welcome it joins consumed one package; when the count falls to `key_packages_low`, it uploads
enough to be back at the stock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicnprotochat.client.bot_keyfile import BotKeyFileError, load_bot_key_file
from quicnprotochat.client.bot_records import ApprovalState, BotKeyRecord
from quicnprotochat.client.node_client import NodeClient
from quicnprotochat.client.state import ClientState, Conversation, Member, Message, StateDir, StateError
from quicnprotochat.common.coffer_shard import CofferValue
from quicnprotochat.native import Vault

from .attachments import Attachments
from .bot_approvals import BotApprovals
from .coffer import read_coffer
from .commits import Committed, Committer
from .config import NOTES_NAME, ChatConfig, PasswordSource, default_state_dir, key_fingerprint
from .connection import ConnectionWatch
from .contacts import Contacts
from .context import ChatContext
from .conversations import ConversationRef, Conversations, ConversationSummary
from .delivery import Delivery
from .direct import DirectDelivery
from .directory import Directory, checked_username
from .errors import ChatError, StateUnavailable
from .event_bus import EventCallback, EventStream
from .events import ErrorEvent
from .group_ops import GroupOps
from .key_packages import KeyPackageStock
from .outbox import Outbox
from .receipts import Receipts
from .receiver import Receiver
from .safety import safety_number
from .sending import Sender
from .session import SETTING_USERNAME, Session

RECEIPT_DRAIN_SECONDS = 2.0
"""How long `close` lets receipts being sent go out."""


@dataclass(frozen=True)
class Verification:
    username: str
    identity_key: bytes
    fingerprint: str
    safety_number: str
    """60 digits in groups of 5; `safety.safety_lines` splits it for display."""
    changed: bool
    """The node gives another key than the one accepted for this username: compare, then `trust`."""


class ChatClient:
    """A logged-in chat client over one state directory and one node connection. Build with `open`."""

    def __init__(self, config: ChatConfig, state: ClientState, vault: Vault, node: NodeClient) -> None:
        self.config = config
        self.state = state
        self.store = state.conversations
        self.vault = vault
        self.node = node
        self.username = checked_username(config.username)
        self.identity_key = vault.identity_key
        context = self._context = ChatContext(config, state, vault, node, self.username)
        self._session = Session(context)
        self._key_packages = KeyPackageStock(context)
        self._contacts = Contacts(context)
        self._directory = Directory(context, self._contacts)
        self._conversations = Conversations(context, self._directory)
        self._delivery = Delivery(context, self._directory)
        self._watch = ConnectionWatch(context)
        self._attachments = Attachments(context)
        self._receiver = Receiver(
            context, self._conversations, self._directory, self._key_packages, self._watch, self._attachments
        )
        self._direct = DirectDelivery(context, self._receiver.receive_direct)
        self._outbox = Outbox(context, self._watch, self._direct)
        self._committer = Committer(context, self._conversations, self._directory, self._receiver.sync_default)
        self._groups = GroupOps(
            context,
            self._conversations,
            self._directory,
            self._key_packages,
            self._delivery,
            self._committer,
            self._receiver.watch,
        )
        self._receipts = Receipts(context, self._conversations, self._delivery)
        self._receiver.on_proposals = self._groups.commit_proposals_later
        self._receiver.on_still_member = self._groups.ask_to_leave_again
        self._resumed = False
        self._sender = Sender(context, self._conversations, self._directory, self._outbox, self._attachments)
        self._bot_approvals = BotApprovals(context, self._watch)

    # ── opening and closing ─────────────────────────────────────────────────────────────────────────────

    @classmethod
    async def open(cls, config: ChatConfig) -> ChatClient:
        """Unlock the state, connect, register if asked and needed, log in, publish keys. Raises ChatError."""
        username = checked_username(config.username)
        if config.vault_groups_in_memory < 1:
            raise ChatError(f"vault_groups_in_memory must be at least 1, not {config.vault_groups_in_memory}")
        try:
            state = await StateDir(config.state_dir).open(config.state_password)
        except StateError as error:
            raise StateUnavailable(str(error)) from None
        vault: Vault | None = None
        node: NodeClient | None = None
        try:
            stored = await state.conversations.get_setting(SETTING_USERNAME)
            if stored is not None and stored != username:
                raise StateUnavailable(f"{config.state_dir} holds the state of {stored!r}, not {username!r}")
            try:
                vault = await asyncio.to_thread(state.open_vault, config.vault_groups_in_memory)
            except StateError as error:
                raise StateUnavailable(str(error)) from None
            try:
                node = NodeClient(
                    config.server,
                    transport=config.transport,
                    known_hosts=config.known_hosts,
                    server_fingerprint=config.server_fingerprint,
                    connect_timeout=config.connect_timeout,
                )
            except ValueError as error:  # a malformed address or transport
                raise ChatError(str(error)) from None
            chat = cls(config, state, vault, node)
            await chat._context.guard(chat._session.sign_in(stored is None))
            await chat._context.guard(chat._key_packages.publish_keys())
        except BaseException:
            if node is not None:
                with contextlib.suppress(Exception):
                    await node.close()
            if vault is not None:
                vault.close()
            await state.close()
            raise
        return chat

    @classmethod
    async def open_bot(cls, key_file: Path, **settings: Any) -> ChatClient:
        """Open a bot by its key file alone (`qpc bot new` writes one): no password. The first run waits until
        the bot's owner approves its key from one of their clients; `settings` override ChatConfig fields."""
        try:
            bot = await asyncio.to_thread(load_bot_key_file, key_file)
        except BotKeyFileError as error:
            raise StateUnavailable(str(error)) from None
        config = ChatConfig(
            server=bot.server,
            username=bot.name,
            state_dir=bot.state_dir,
            state_password=bot.state_key,
            transport=bot.transport,
            server_fingerprint=bot.server_fingerprint,
            bot_owner=bot.owner,
        )
        return await cls.open(dataclasses.replace(config, **settings))

    async def close(self) -> None:
        """Stop the receive loops and close the connection, the vault and the state (wiping its keys)."""
        bus = self._context.bus
        if bus.closed:
            return
        await self._receipts.drain(RECEIPT_DRAIN_SECONDS)
        with contextlib.suppress(Exception):
            await self._direct.stop()
        bus.closed = True
        tasks: list[asyncio.Future[Any]] = [*self._receiver.stop(), *bus.background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Wait for whatever an operation still does with the vault or the store.
        async with self._context.mls:
            with contextlib.suppress(Exception):
                await self.node.close()
            self.vault.close()
            await self.state.close()
        bus.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def encrypted(self) -> bool:
        return self.state.encrypted

    @property
    def state_warning(self) -> str | None:
        """Set when state is stored in clear: show it to the user."""
        return self.state.warning

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.identity_key)

    # ── account and names ───────────────────────────────────────────────────────────────────────────────

    async def key_package_stock(self) -> int:
        """How many (non last-resort) KeyPackages this client believes the node still holds for it."""
        return await self._key_packages.count()

    async def coffer(self) -> dict[str, CofferValue]:
        """The secrets the node's operator provisioned for this client's key, each with its TOML type (str, int,
        float, bool, datetime, date or time). ChatError when there is no shard for us (`not_found`)."""
        return await read_coffer(self._context)

    async def username_of(self, identity_key: bytes) -> str | None:
        """The username of an identity key (resolveIdentity, cached); None if the node knows none."""
        return await self._directory.username_of(identity_key)

    async def resolve_user(self, username: str) -> tuple[str, bytes]:
        """(normalized username, identity key); UserNotFound if the node has no such account, IdentityKeyChanged
        if it gives another key than the one known for them (until `trust`)."""
        return await self._directory.resolve_user(username)

    async def verify(self, username: str) -> Verification:
        """The safety number with `username`'s current key (as the node gives it), to compare with theirs."""
        name = checked_username(username)
        key = await self._directory.lookup(name)
        known = await self._contacts.known_key(name)
        return Verification(
            username=name,
            identity_key=key,
            fingerprint=key_fingerprint(key),
            safety_number=safety_number(self.identity_key, key),
            changed=known is not None and known != key,
        )

    async def trust(self, username: str) -> str:
        """Accept the changed identity key of `username` (after comparing safety numbers); returns its
        fingerprint. From now on messages to `username` go to that key."""
        name = checked_username(username)
        key = await self._contacts.trust(name)
        self._directory.forget(name)
        return key_fingerprint(key)

    # ── events ──────────────────────────────────────────────────────────────────────────────────────────

    def events(self) -> EventStream:
        """Every event from the moment of this call on (subscribe before `start` to miss nothing), until
        `close`. Several consumers may each have their own stream; `EventStream.close` unsubscribes."""
        return self._context.bus.stream()

    def add_listener(self, callback: EventCallback) -> None:
        """Call `callback(event)` for every event (a coroutine function is scheduled as a task)."""
        self._context.bus.add_listener(callback)

    # ── conversations ───────────────────────────────────────────────────────────────────────────────────

    async def conversation(self, ref: ConversationRef) -> Conversation:
        """Look a conversation up by object, id or name (``bob`` finds the DM ``@bob``); UnknownConversation."""
        return await self._conversations.get(ref)

    async def conversations(self) -> list[ConversationSummary]:
        """All conversations, most recent activity first, with unread counts."""
        return await self._conversations.summaries()

    async def members(self, ref: ConversationRef) -> list[Member]:
        return await self._conversations.members(ref)

    async def history(self, ref: ConversationRef, limit: int = 50) -> list[Message]:
        return await self._conversations.history(ref, limit)

    async def mark_read(self, ref: ConversationRef, up_to: int | None = None) -> None:
        """Mark the conversation read up to the message with local id `up_to` (default: all of it); read
        receipts go to the senders of what this passes (unless `ChatConfig.receipts` is off)."""
        await self._receipts.mark_read(ref, up_to)

    async def notes(self) -> Conversation:
        """The local notepad (created on first use)."""
        return await self._conversations.notes()

    async def dm(self, username: str) -> Conversation:
        """The DM with `username`, created (MLS group + channel, Welcome sent) if there is none yet.
        Your own username (or ``me``) gives the local notepad."""
        return await self._groups.dm(username)

    async def create_group(self, name: str) -> Conversation:
        """A new group with only this client in it; `invite` adds members."""
        return await self._groups.create_group(name)

    async def invite(self, ref: ConversationRef, username: str) -> Committed:
        """Add `username` to a group: they can read what is sent from now on, nothing earlier. The node orders
        the change among other members' (`Committed.tries` > 1: it was built again after theirs)."""
        return await self._groups.invite(ref, username)

    async def remove(self, ref: ConversationRef, username: str) -> Committed:
        """Remove `username` from a group; they cannot read anything sent afterwards."""
        return await self._groups.remove(ref, username)

    async def update_keys(self, ref: ConversationRef) -> Committed:
        """Rotate this client's key material in a group (a commit, ordered like every change)."""
        return await self._groups.update_keys(ref)

    async def leave(self, ref: ConversationRef) -> None:
        """Leave a group: the other members are asked to remove this client (the next one to commit does);
        nothing new is shown or can be sent from now on; the history stays. An invitation brings it back."""
        await self._groups.leave(ref)

    async def delete(self, ref: ConversationRef) -> None:
        """Delete a conversation and its history from this device (leaving the group first if still in it)."""
        await self._groups.delete(ref)

    async def recreate(self, ref: ConversationRef) -> tuple[Committed, list[str]]:
        """Replace a group that cannot go on (see `GroupBroken`) by a new one with its current members, in the
        same conversation; returns the outcome and who could not be invited."""
        return await self._groups.recreate(ref)

    async def send(self, ref: ConversationRef, text: str, *, wait: bool = True) -> Message:
        """Store `text` as a pending message for the conversation's members and send it now if the node answers;
        returns the message with its state: "sent" (with `server_seq`), "failed" (with `failure`: the node refused
        it), or "pending" (the node is away: it goes out, in order, when it is back, also after a restart; a
        `MessageStateChanged` event says when). MessageTooLarge or another ChatError: nothing was stored.
        `wait=False` returns as soon as the message is stored ("pending") and the outbox sends it in the
        background, in order, with whatever else is pending (`MessageStateChanged` says how each went): a bot's
        messages to one peer then go out directly several at a time instead of one per `send`. What is still
        pending at `close` goes out at the next start; `flush_outbox` first waits for it."""
        return await self._sender.send(ref, text, wait=wait)

    async def send_file(self, ref: ConversationRef, path: Path) -> Message:
        """Send the file at `path`: encrypted with a fresh key and stored on the node (which must answer now), its
        key and hash sent like a message (pending, sent or failed as `send`). Recipients fetch and check it
        (`FileReceived`). MessageTooLarge past the node's blob limit."""
        return await self._sender.send_file(ref, path)

    async def flush_outbox(self) -> bool:
        """Send what is pending now; True when nothing is left pending."""
        return await self._outbox.flush()

    # ── your bots (key login) ───────────────────────────────────────────────────────────────────────────

    async def answer_bot(self, request_id: bytes, approve: bool) -> ApprovalState:
        """Answer a `BotApprovalRequested`; returns how it ended (another client's answer, if that came first)."""
        return await self._bot_approvals.answer(request_id, approve)

    async def bots(self) -> list[BotKeyRecord]:
        """Your approved bot keys (revoked ones too, marked)."""
        return await self._bot_approvals.bots()

    async def revoke_bot(self, identity_key: bytes) -> None:
        """Revoke one of your bot keys: its sessions end at once and it cannot log in again."""
        await self._bot_approvals.revoke(identity_key)

    # ── receiving ───────────────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Start the background receive loops (the default inbox and every DM channel's inbox) and send what an
        earlier run left pending."""
        await self._resume_commits()
        await self._receiver.start()
        if self.config.p2p:
            try:
                await self.set_p2p(True)
            except ChatError as error:  # the client works without it: through the node
                self._context.emit(ErrorEvent(f"direct delivery is off: {error}", error))
        self._outbox.flush_soon()
        if self.config.bot_owner is None:
            self._bot_approvals.start()

    async def sync(self) -> int:
        """Process everything queued now in every inbox (DM channels joined meanwhile included), without
        waiting for more, and send what is pending; returns how many envelopes were processed."""
        await self._resume_commits()
        processed = await self._receiver.sync()
        await self._outbox.flush()
        return processed

    # ── direct delivery ─────────────────────────────────────────────────────────────────────────────────

    async def set_p2p(self, on: bool) -> None:
        """Direct delivery on (an iroh endpoint, its signed address published on the node) or off (the record
        taken down, the endpoint closed). ChatError if it cannot start; messages then go through the node."""
        if on:
            await self._direct.start()
        else:
            await self._direct.stop()

    @property
    def p2p(self) -> bool:
        """Whether direct delivery runs now."""
        return self._direct.running

    def p2p_addresses(self) -> list[str]:
        """The direct addresses the published record gives (what peers who resolve it learn)."""
        return self._direct.addresses()

    async def _resume_commits(self) -> None:
        """Once, before receiving: a commit left pending by a crash or a lost connection is submitted again with
        the same bytes (the node answers *duplicate* if it had accepted it)."""
        if self._resumed:
            return
        self._resumed = True
        try:
            await self._committer.resume_all()
        except ChatError as error:
            self._context.emit(ErrorEvent(f"confirming an earlier change: {error}", error))
        await self._groups.commit_waiting_proposals()


__all__ = [
    "NOTES_NAME",
    "ChatClient",
    "ChatConfig",
    "Committed",
    "ConversationSummary",
    "EventStream",
    "PasswordSource",
    "Verification",
    "default_state_dir",
    "key_fingerprint",
]
