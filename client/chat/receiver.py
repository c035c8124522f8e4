"""The receive loops (I/O): read each inbox in seq order, open envelopes, let the vault process MLS messages,
carry out what `receive_rules` decides, store, then ack.

Inbox layout (why each group's MLS traffic is in one ordered inbox per recipient):
- A DM is a 2-member MLS group plus a node channel (createChannel). Its Welcome goes to the peer's *default*
  inbox (the peer cannot know the channel before); every later DM message goes to the peer's inbox on that
  channel. The peer starts reading the channel inbox only after the Welcome has been joined, so the Welcome
  always comes first.
- Groups use the default inbox for everything: Welcomes, commits and application messages. One group's
  traffic to one recipient is thus in a single inbox whose seqs the node assigns in enqueue order.
- An inviter sends the Welcome to the newcomer *before* the commit to the other members: a member can only
  write to the newcomer after processing that commit, so whatever it writes lands after the Welcome.
- Each inbox is read by one task (`peekWait`), envelope by envelope in seq order. A fetched run of application
  messages is first processed by the vault in one transaction (`Vault.process_batch`: one durable commit for the
  lot; each message's result journaled as `process` would), then handled one by one. A message is acked only
  after its result is stored locally; the last processed seq per inbox is stored too, so a redelivered
  envelope (ack lost, crash) is skipped, not processed twice. An envelope whose MLS group is not known yet
  (two peers opening a DM to each other at the same time: the other side's Welcome sits in the default inbox)
  is held back, without acking anything after it, until the group appears (or for `defer_seconds`).

Message ids (the store's dedup key) of incoming messages: SHA-256 of the envelope bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quicnprotochat.client.node_client import Envelope
from quicnprotochat.client.state import Conversation, Route
from quicnprotochat.common.errors import Disconnected
from quicnprotochat.native import GroupNotFound, NativeError, ProcessedMessage, envelope_info, mls_message_info

from . import group_rules
from . import receive_rules as rules
from .attachments import Attachments, describe_file
from .config import MAX_GROUP_NAME
from .connection import ConnectionWatch, is_unreachable
from .context import ChatContext, reraise
from .conversations import (
    SETTING_ALIAS,
    SETTING_BROKEN,
    SETTING_DELETED,
    SETTING_LEAVING,
    SETTING_LEFT,
    Conversations,
)
from .directory import Directory
from .errors import ChatError, NodeUnavailable
from .events import (
    ErrorEvent,
    GroupBroken,
    JoinedConversation,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    ReceiptReceived,
    RemovedFromConversation,
)
from .framing import FileContent, FrameError, MlsFrame, TextContent, WelcomeFrame, decode_frame
from .key_packages import KeyPackageStock
from .receipts import message_ref

# Failures of reaching the node or of the client's own I/O: the envelope is fetched and tried again later, and
# counts against none of its inbox's retry or give-up rules.
_TRANSIENT = (NodeUnavailable, Disconnected, OSError, TimeoutError)


@dataclass
class _InboxState:
    channel: bytes
    rules: rules.InboxRules
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _MlsEnvelope:
    """An opened envelope's MLS message and what its clear framing says, read once before it is processed."""

    frame: MlsFrame
    header: rules.Header


_Opened = WelcomeFrame | _MlsEnvelope | NativeError | FrameError
"""What opening an envelope gave: a Welcome, an MLS message, or why it could not be read."""


@dataclass
class _Ahead:
    """A fetched batch's envelopes opened ahead of handling (by seq: the run of application messages at its head,
    and the envelope that ended the run), and the vault's results for that run, processed in one transaction (by
    MLS message bytes)."""

    opened: dict[int, _Opened] = field(default_factory=dict)
    results: dict[bytes, ProcessedMessage | NativeError] = field(default_factory=dict)


class _NotDirect(Exception):
    """An envelope that came directly and must come through the node instead (see `receive_direct`)."""


class _Deferred(Exception):
    """The envelope waits: for a group this client has not joined yet, or for its own commit's answer."""

    def __init__(self, defer: rules.Defer) -> None:
        super().__init__(defer.waiting_for)
        self.defer = defer


ProposalsHook = Callable[[Conversation, bytes, int, float], None]
"""(conversation, group id, epoch, delay): members asked to leave; commit that after `delay` seconds."""
StillMemberHook = Callable[[Conversation, bytes], None]
"""(conversation, group id): the epoch moved while this client's leave was not committed: ask again."""


class Receiver:
    def __init__(
        self,
        context: ChatContext,
        conversations: Conversations,
        directory: Directory,
        key_packages: KeyPackageStock,
        watch: ConnectionWatch,
        attachments: Attachments,
    ) -> None:
        self._context = context
        self._watch = watch
        self._attachments = attachments
        self._conversations = conversations
        self._directory = directory
        self._key_packages = key_packages
        self._inboxes: dict[bytes, _InboxState] = {}
        self._running = False
        self.on_proposals: ProposalsHook | None = None
        self.on_still_member: StillMemberHook | None = None

    # ── loops ───────────────────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Start the background receive loops: the default inbox and every DM channel's inbox."""
        if self._running:
            return
        self._running = True
        for channel in await self._channels():
            self.watch(channel)

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel the loops; returns their tasks (to await)."""
        self._running = False
        tasks = [inbox.task for inbox in self._inboxes.values() if inbox.task is not None]
        for task in tasks:
            task.cancel()
        return tasks

    async def _channels(self) -> list[bytes]:
        channels = [b""]
        for conversation in await self._context.store.list_conversations():
            if conversation.kind == "dm" and conversation.channel_id is not None:
                channels.append(conversation.channel_id)
        return channels

    def _inbox(self, channel: bytes) -> _InboxState:
        inbox = self._inboxes.get(channel)
        if inbox is None:
            inbox = self._inboxes[channel] = _InboxState(channel, rules.InboxRules(self._context.config.defer_seconds))
        return inbox

    def watch(self, channel: bytes) -> None:
        """Read `channel`'s inbox too (a DM joined or created) once the loops run."""
        if not self._running or self._context.bus.closed:
            return
        inbox = self._inbox(channel)
        if inbox.task is None or inbox.task.done():
            inbox.task = asyncio.create_task(self._inbox_loop(inbox), name=f"inbox {channel.hex() or 'default'}")

    async def sync(self) -> int:
        """Process everything queued now in every inbox (DM channels joined meanwhile included), without
        waiting for more; returns how many envelopes were processed."""
        context = self._context
        done: set[bytes] = set()
        total = 0
        while True:
            pending = [channel for channel in await self._channels() if channel not in done]
            if not pending:
                return total
            for channel in pending:
                done.add(channel)
                inbox = self._inbox(channel)
                envelopes = await context.guard(context.node.peek(context.identity_key, channel))
                processed, _deferred = await self._process(inbox, envelopes, final=False)
                total += processed

    async def sync_default(self) -> int:
        """Process what the default inbox (every group's commits) holds now; returns how many envelopes."""
        context = self._context
        inbox = self._inbox(b"")
        envelopes = await context.guard(context.node.peek(context.identity_key, b""))
        processed, _deferred = await self._process(inbox, envelopes, final=False)
        return processed

    async def _inbox_loop(self, inbox: _InboxState) -> None:
        context = self._context
        failures = 0
        while self._running:
            await self._watch.wait_up()
            try:
                envelopes = await context.node.peek_wait(
                    context.identity_key, inbox.channel, timeout_ms=context.config.wait_ms
                )
                _processed, deferred = await self._process(inbox, envelopes, final=True)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the loop reports and retries whatever fails
                if is_unreachable(error):
                    self._watch.lost(error)  # one status line for the outage; the watch says when it is back
                    continue
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    await self._report_loop_error(error)
                await asyncio.sleep(min(0.25 * 2 ** min(failures, 5), 5.0))
                continue
            failures = 0
            if deferred:
                # Wait for a new group (a Welcome on another inbox) before looking at the held envelope again.
                context.groups_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(context.groups_changed.wait(), 2.0)

    async def _report_loop_error(self, error: Exception) -> None:
        try:
            await self._context.guard(reraise(error))
        except ChatError as wrapped:
            self._context.emit(ErrorEvent(f"receiving: {wrapped}", wrapped))
        except Exception as other:  # noqa: BLE001 - anything unexpected becomes an event, not a crash
            self._context.emit(ErrorEvent(f"receiving failed: {other!r}", other))

    async def _process(self, inbox: _InboxState, envelopes: list[Envelope], *, final: bool) -> tuple[int, bool]:
        """Handle `envelopes` in seq order and ack what was handled; returns (count, whether one was held).

        Crash safety: the vault journals what it processed (keyed by the message's digest) inside its own
        transaction, so an envelope redelivered after a crash gives the same result again; the result is stored,
        the envelope acked, and only then is the journal entry forgotten."""
        context = self._context
        store = context.store
        processed = 0
        digests: list[bytes] = []
        async with inbox.lock:
            last = await store.get_last_seq(context.identity_key, inbox.channel)
            acked_up_to = 0
            deferred = False
            ordered = sorted(envelopes, key=lambda e: e.seq)
            ahead = await self._decrypt_ahead(inbox.channel, [e for e in ordered if rules.is_new(e.seq, last)])
            for envelope in ordered:
                if rules.is_new(envelope.seq, last):
                    try:
                        async with context.mls:
                            await self._handle(inbox.channel, envelope, digests, ahead=ahead)
                    except _TRANSIENT:
                        raise  # transient: the envelope is tried again later
                    except _Deferred as held:
                        if inbox.rules.hold(envelope.seq, time.monotonic(), final=final, defer=held.defer):
                            deferred = True
                            break
                        context.emit(
                            ErrorEvent(f"dropped a message for a group this client never joined (seq {envelope.seq})")
                        )
                    except Exception as error:
                        if inbox.rules.retry(envelope.seq):
                            raise
                        context.emit(ErrorEvent(f"gave up on a message (seq {envelope.seq}): {error!r}", error))
                    inbox.rules.done(envelope.seq)
                    await store.set_last_seq(context.identity_key, inbox.channel, envelope.seq)
                    last = envelope.seq
                    processed += 1
                acked_up_to = envelope.seq
            if acked_up_to:
                await context.guard(context.node.ack(context.identity_key, acked_up_to, inbox.channel))
            if digests:
                await asyncio.to_thread(context.vault.forget_processed, digests)
        return processed, deferred

    async def _decrypt_ahead(self, channel: bytes, envelopes: list[Envelope]) -> _Ahead:
        """Open the new envelopes of a fetched batch up to the first that is not an application message to process
        now (`receive_rules.decrypt_ahead`), and let the vault process those MLS messages in one transaction. The
        results are journaled there like `process`'s, so a crash before they are stored loses nothing and
        decrypts nothing twice. Anything that does not fit is left to `_handle` as it comes."""
        context = self._context
        ahead = _Ahead()
        batch: list[bytes] = []
        views: dict[bytes, rules.GroupView] = {}
        if len(envelopes) < 2:
            return ahead
        try:
            async with context.mls:
                info_bytes = envelope_info(context.identity_key, channel or None)
                for envelope in envelopes:
                    if await context.store.get_message(hashlib.sha256(envelope.data).digest()) is not None:
                        continue  # stored before: `_handle` skips it
                    opened = await self._open(envelope, info_bytes)
                    ahead.opened[envelope.seq] = opened  # the one that ends the run too: `_handle` opens none twice
                    if not isinstance(opened, _MlsEnvelope):
                        break
                    header = opened.header
                    if header.group_id not in views:
                        views[header.group_id] = await self._group_view(header.group_id)
                    if not rules.decrypt_ahead(header, views[header.group_id]):
                        break
                    batch.append(opened.frame.message)
                if len(batch) > 1:
                    results = await asyncio.to_thread(context.vault.process_batch, batch)
                    ahead.results = dict(zip(batch, results, strict=True))
        except _TRANSIENT:
            raise  # transient, as in `_process`: the batch is fetched again
        except Exception:  # noqa: BLE001 - not ours to judge here: see below
            # Batching is only a shortcut. Whatever failed here (a group's state that does not load, a storage
            # fault of the batch's transaction, which rolled back whole) meets each envelope again in `_handle`,
            # where the inbox's retry and give-up rules apply to it alone: one bad envelope must not block its
            # inbox for ever by failing every fetch of its batch.
            ahead.results = {}
        return ahead

    # ── direct delivery ─────────────────────────────────────────────────────────────────────────────────

    async def receive_direct(self, channel: bytes, data: bytes) -> bool:
        """An envelope a peer sent straight to this client (`direct`): handled exactly as the same envelope from
        the inbox would be, under the same message id (SHA-256 of the envelope), so that a copy arriving both
        ways is stored once. True once its result is stored (or it was stored before); False when it must come
        through the node: not an inbox this client reads, not an application message of a group's current
        epoch (`receive_rules.direct_refusal`), or anything that goes wrong here."""
        context = self._context
        if channel not in await self._channels():
            return False
        digests: list[bytes] = []
        try:
            async with context.mls:
                await self._handle(channel, Envelope(0, data), digests, route="direct")
        except (_NotDirect, _Deferred):
            return False  # nothing stored; the vault's journal answers the node's copy the same way
        except Exception as error:  # noqa: BLE001 - a peer's envelope never takes the client down: use the node
            context.emit(ErrorEvent(f"a directly delivered message is left to the node: {error!r}", error))
            return False
        if digests:
            await asyncio.to_thread(context.vault.forget_processed, digests)
        return True

    # ── one envelope ────────────────────────────────────────────────────────────────────────────────────

    async def _handle(
        self,
        channel: bytes,
        envelope: Envelope,
        digests: list[bytes],
        route: Route = "node",
        *,
        ahead: _Ahead | None = None,
    ) -> None:
        context = self._context
        message_id = hashlib.sha256(envelope.data).digest()
        if await context.store.get_message(message_id) is not None:
            return  # a copy of an envelope already stored (sent again after a dropped connection)
        ahead = ahead or _Ahead()
        opened = ahead.opened.get(envelope.seq)
        if opened is None:
            opened = await self._open(envelope, envelope_info(context.identity_key, channel or None))
        if isinstance(opened, NativeError | FrameError):
            if route == "direct":
                raise _NotDirect(str(opened))
            await self._apply(rules.after_open_failure(envelope.seq, opened), envelope, message_id)
            return
        if isinstance(opened, WelcomeFrame):
            if route == "direct":
                raise _NotDirect("Welcomes come through the node")
            await self._on_welcome(opened)
            digests.append(hashlib.sha256(opened.welcome).digest())
            return
        frame, header = opened.frame, opened.header
        group = await self._group_view(header.group_id)
        if route == "direct":
            refusal = rules.direct_refusal(header, group)
            if refusal is not None:
                raise _NotDirect(refusal)
        early = rules.before_processing(header, group)
        if early is not None:
            await self._apply(early, envelope, message_id)
            return
        try:
            result = ahead.results.pop(frame.message, None)
            if result is None:
                result = await asyncio.to_thread(context.vault.process, frame.message)
            if isinstance(result, NativeError):
                raise result
            processed = result
        except NativeError as error:
            action = rules.after_process_failure(envelope.seq, error, header, group, frame.sender)
        else:
            digests.append(processed.digest)
            conversation = group.conversation or await self._conversations.of_group(processed.group_id)
            action = rules.after_processed(processed, conversation, left=group.left)
        if route == "direct" and not isinstance(action, rules.StoreMessage | rules.ApplyReceipt | rules.Ignore):
            raise _NotDirect("left to the node")  # what was processed stays journaled for the node's copy
        await self._apply(action, envelope, message_id, message_ref(frame.message), route)

    async def _open(self, envelope: Envelope, info: bytes) -> _Opened:
        """Open the envelope (`info`: its inbox's `envelope_info`) and read its frame and, for an MLS message, the
        message's clear framing; what cannot be read comes back as the error, for `rules.after_open_failure`."""
        try:
            frame = decode_frame(await asyncio.to_thread(self._context.vault.open_envelope, envelope.data, info))
            if isinstance(frame, WelcomeFrame):
                return frame
            message = mls_message_info(frame.message)
        except (NativeError, FrameError) as error:
            return error
        return _MlsEnvelope(frame, rules.Header(message.group_id, message.epoch, message.content_type))

    async def _group_view(self, group_id: bytes) -> rules.GroupView:
        context = self._context
        store = context.store
        conversation = await self._conversations.of_group(group_id)
        try:
            epoch: int | None = await asyncio.to_thread(context.vault.epoch, group_id)
        except GroupNotFound:
            epoch = None
        broken = left = False
        if conversation is not None:
            broken = await store.get_setting(SETTING_BROKEN + str(conversation.id)) is not None
            left = await store.get_setting(SETTING_LEFT + str(conversation.id)) is not None
        return rules.GroupView(
            conversation,
            epoch,
            own_commit_unconfirmed=group_id in context.unconfirmed,
            broken=broken,
            deleted=await store.get_setting(SETTING_DELETED + group_id.hex()) is not None,
            left=left,
        )

    async def _apply(
        self,
        action: rules.Action,
        envelope: Envelope,
        message_id: bytes,
        ref: bytes | None = None,
        route: Route = "node",
    ) -> None:
        context = self._context
        if isinstance(action, rules.Defer):
            raise _Deferred(action)
        if isinstance(action, rules.Drop):
            context.emit(ErrorEvent(action.reason, action.error))
        elif isinstance(action, rules.StoreMessage):
            sender = action.sender
            content = action.content
            stored = await context.store.add_message(
                action.conversation.id,
                message_id,
                content.body if isinstance(content, TextContent) else describe_file(content),
                sender_identity_key=sender,
                sender_username=await self._directory.username_of(sender) if sender is not None else None,
                sent_at=action.content.sent_at,
                server_seq=envelope.seq if route == "node" else None,
                ref=ref,
                route=route,
            )
            if stored is not None:
                context.emit(MessageReceived(action.conversation, stored))
                if isinstance(content, FileContent):
                    # Fetched before the envelope is acked: a qpc recv has the file when it prints the message.
                    await self._attachments.fetch(action.conversation, stored, content)
        elif isinstance(action, rules.ApplyReceipt):
            by = await self._directory.username_of(action.sender) if action.sender is not None else None
            receipt = action.receipt
            refs = list(receipt.messages)
            for message in await context.store.apply_receipt(action.conversation.id, refs, receipt.kind):
                context.emit(ReceiptReceived(action.conversation, message, receipt.kind, by))
        elif isinstance(action, rules.ApplyCommit):
            await self._apply_commit(action)
        elif isinstance(action, rules.CommitProposals):
            leaving = await context.proposals.record(action.group_id, action.epoch, action.removed)
            members = await asyncio.to_thread(context.vault.members, action.group_id)
            delay = group_rules.proposal_delay(members, leaving, context.identity_key)
            if delay is not None and self.on_proposals is not None:
                self.on_proposals(action.conversation, action.group_id, action.epoch, delay)
        elif isinstance(action, rules.BreakGroup):
            await self._break_group(action)

    async def _apply_commit(self, action: rules.ApplyCommit) -> None:
        context = self._context
        store = context.store
        conversation = action.conversation
        leaves = await context.proposals.settle(action.group_id)
        by = await self._directory.username_of(action.sender) if action.sender is not None else None
        leaving_key = SETTING_LEAVING + action.group_id.hex()
        leaving = await store.get_setting(leaving_key) is not None
        if action.self_removed:
            await store.set_setting(SETTING_LEFT + str(conversation.id), "1")
            await store.set_setting(leaving_key, None)
            for member in await store.list_members(conversation.id):
                if member.identity_key != context.identity_key:
                    await store.remove_member(conversation.id, member.identity_key)
            context.emit(RemovedFromConversation(conversation, by, left=leaving))
            return
        for key in action.added:
            name = await self._directory.username_of(key)
            await store.add_member(conversation.id, key, name)
            context.emit(MemberJoined(conversation, key, name, by))
        for key in action.removed:
            name = await self._directory.username_of(key)
            await store.remove_member(conversation.id, key)
            context.emit(MemberLeft(conversation, key, name, by, left=key in leaves))
        await self._conversations.sync_members(conversation, action.group_id)
        if leaving and self.on_still_member is not None:
            # The epoch moved without this client's leave (its proposal was for the epoch before): ask again.
            self.on_still_member(conversation, action.group_id)

    async def _break_group(self, action: rules.BreakGroup) -> None:
        context = self._context
        conversation = action.conversation
        by = await self._directory.username_of(action.claimed_sender) if action.claimed_sender else None
        await context.store.set_setting(SETTING_BROKEN + str(conversation.id), action.reason)
        context.emit(GroupBroken(conversation, by, action.reason))

    # ── Welcomes ────────────────────────────────────────────────────────────────────────────────────────

    async def _on_welcome(self, frame: WelcomeFrame) -> None:
        context = self._context
        if frame.conversation_kind == "dm" and frame.inviter != context.identity_key:
            # The node gives a pair of identities one channel: asking for it checks the one in the Welcome
            # (before joining, so that a node that cannot be reached leaves the Welcome to be tried again).
            channel = await context.guard(context.node.create_channel(frame.inviter))
            if channel != frame.channel_id:
                context.emit(ErrorEvent("ignored a DM invitation naming a channel that is not the sender's and ours"))
                return
        try:
            # A group this client left or was removed from is discarded by the vault when its new Welcome comes.
            group_id = await asyncio.to_thread(context.vault.join_group, frame.welcome)
        except NativeError as error:
            context.emit(ErrorEvent(f"could not join a conversation an invitation was for: {error}", error))
            return
        await self._key_packages.consumed()
        await context.store.set_setting(SETTING_DELETED + group_id.hex(), None)
        members = await asyncio.to_thread(context.vault.members, group_id)
        inviter: bytes | None = frame.inviter if frame.inviter in members else None
        inviter_name = await self._directory.username_of(inviter) if inviter is not None else None
        if frame.conversation_kind == "dm":
            conversation = await self._joined_dm(frame, group_id, members, inviter_name)
            if conversation is None:
                return
        else:
            conversation = await self._joined_group(frame, group_id, inviter)
            if conversation is None:
                return
        await self._conversations.sync_members(conversation, group_id)
        context.groups_changed.set()
        context.emit(JoinedConversation(conversation, inviter_name))

    async def _joined_group(self, frame: WelcomeFrame, group_id: bytes, inviter: bytes | None) -> Conversation | None:
        """The conversation a group Welcome lands in: a new one, the one this client was in before (invited
        again after leaving), or the one the group re-creates. None: already joined (a redelivered Welcome)."""
        store = self._context.store
        existing = await store.find_by_group_id(group_id)
        if existing is None and frame.replaces is not None and inviter is not None:
            replaced = await self._conversations.of_group(frame.replaces)
            members = [] if replaced is None else await store.list_members(replaced.id)
            if replaced is not None and any(member.identity_key == inviter for member in members):
                await store.set_setting(SETTING_ALIAS + frame.replaces.hex(), str(replaced.id))
                await store.set_group_id(replaced.id, group_id)
                existing = await store.get_conversation(replaced.id)
                assert existing is not None
                await self._clear_marks(existing)
                return existing
        if existing is not None:
            was_out = await self._clear_marks(existing)
            return existing if was_out else None
        base = frame.name if frame.name and not frame.name.startswith("@") else "group"
        return await store.create_conversation(
            "group", await self._conversations.free_name(base[:MAX_GROUP_NAME]), group_id=group_id
        )

    async def _clear_marks(self, conversation: Conversation) -> bool:
        """A conversation is live again (rejoined or re-created): True if it had been left or broken."""
        store = self._context.store
        was_out = False
        for key in (SETTING_LEFT + str(conversation.id), SETTING_BROKEN + str(conversation.id)):
            if await store.get_setting(key) is not None:
                was_out = True
                await store.set_setting(key, None)
        if conversation.group_id is not None:
            await store.set_setting(SETTING_LEAVING + conversation.group_id.hex(), None)
        return was_out

    async def _joined_dm(
        self, frame: WelcomeFrame, group_id: bytes, members: list[bytes], inviter_name: str | None
    ) -> Conversation | None:
        context = self._context
        store = context.store
        problem = rules.dm_welcome_problem(frame, members, context.identity_key)
        if problem is not None or frame.channel_id is None:
            context.emit(ErrorEvent(problem or "ignored a DM invitation without a channel"))
            await asyncio.to_thread(context.vault.delete_group, group_id)
            return None
        inviter = frame.inviter
        existing = await store.find_dm(inviter)
        if existing is not None:
            assert existing.group_id is not None
            if rules.dm_to_keep(existing.group_id, group_id) == "new":
                await store.set_setting(SETTING_ALIAS + existing.group_id.hex(), str(existing.id))
                await store.set_group_id(existing.id, group_id)
            else:
                await store.set_setting(SETTING_ALIAS + group_id.hex(), str(existing.id))
            context.groups_changed.set()
            return None
        name = await self._conversations.free_name("@" + (inviter_name or inviter.hex()[:16]))
        conversation = await store.create_conversation(
            "dm", name, group_id=group_id, channel_id=frame.channel_id, peer_identity_key=inviter
        )
        self.watch(frame.channel_id)
        return conversation
