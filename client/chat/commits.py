"""The commit protocol (contract C): every change to a group goes through the node's sequencer.

A change (invite, remove, key update, committing others' proposals, re-creating a group) is built as a *pending*
commit in the vault and submitted with `submitCommit`, together with the sealed commit for every member before
it and the sealed Welcome for every newcomer. The node accepts exactly one commit per (group, epoch):

- *accepted* or *duplicate* (the same bytes were accepted before): the commit is the group's; merge it.
- *stale*: another member's commit took the epoch. Clear ours, process the inbox until the vault reaches the
  node's epoch, and build the change again from the new state (`group_rules.MAX_COMMIT_TRIES` times at most,
  then a clear error). One outcome per change, never a fork.
- No answer (the connection dropped): the same bytes are submitted again; if the node stays unreachable the
  commit stays pending in the vault (durably, with what it was for in the store) and is submitted again in the
  background and at the next start. Until then the group's incoming messages are held back.

Proposals (a member's own leave) take the same path; they do not move the epoch.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from quicnprotochat.client.node_client import CommitResult, Delivery
from quicnprotochat.client.state import Conversation
from quicnprotochat.common.errors import Disconnected, RpcError, Unavailable, UnknownOutcome
from quicnprotochat.native import NativeError

from . import group_rules
from .context import ChatContext, reraise
from .conversations import SETTING_ALIAS, SETTING_BROKEN, Conversations
from .delivery import seal_for
from .directory import Directory
from .errors import ChatError, NodeUnavailable, NotAllowed
from .events import ErrorEvent, MemberJoined, MemberLeft, Notice
from .framing import MlsFrame, WelcomeFrame
from .group_rules import Change

log = logging.getLogger(__name__)

_SETTING_INTENT = "commit_intent:"
"""commit_intent:<group id hex> -> JSON: what the vault's pending commit of that group is for."""
_CATCH_UP_ROUNDS = 40
_SUBMIT_TIMEOUT_FACTOR = 2
"""A submission unanswered for this many connect timeouts counts as a lost answer (submitted again)."""
_TRANSIENT = (Disconnected, Unavailable, UnknownOutcome, OSError, TimeoutError)


@dataclass(frozen=True)
class Prepared:
    """A pending commit the vault just built, and what it does."""

    commit: bytes
    welcome: bytes | None
    change: Change
    replaces: bytes | None = None
    """Re-creating a group: the id of the group this one replaces (travels in the Welcome)."""


@dataclass(frozen=True)
class Committed:
    """The outcome of a change the node accepted."""

    conversation: Conversation
    epoch: int
    tries: int
    """1: accepted at once; n: built n times because other members' changes came first."""
    change: Change

    @property
    def retry_note(self) -> str:
        return group_rules.retry_note(self.tries)


@dataclass(frozen=True)
class _Intent:
    conversation_id: int
    before: list[bytes]
    change: Change
    replaces: bytes | None

    def encode(self) -> str:
        return json.dumps(
            {
                "conversation": self.conversation_id,
                "before": [key.hex() for key in self.before],
                "added": [key.hex() for key in self.change.added],
                "removed": [key.hex() for key in self.change.removed],
                "replaces": self.replaces.hex() if self.replaces is not None else None,
            }
        )

    @staticmethod
    def decode(text: str) -> _Intent:
        raw = json.loads(text)
        replaces = raw.get("replaces")
        return _Intent(
            int(raw["conversation"]),
            [bytes.fromhex(key) for key in raw["before"]],
            Change(
                tuple(bytes.fromhex(key) for key in raw["added"]),
                tuple(bytes.fromhex(key) for key in raw["removed"]),
            ),
            bytes.fromhex(replaces) if replaces else None,
        )


class Unconfirmed(NodeUnavailable):
    """The node did not answer a submission; the commit stays pending and is submitted again later."""


Make = Callable[[list[bytes]], Awaitable[Prepared | None]]
"""Builds the change from the current members (a pending commit in the vault); None: nothing to do any more."""


class Committer:
    def __init__(
        self,
        context: ChatContext,
        conversations: Conversations,
        directory: Directory,
        sync_inbox: Callable[[], Awaitable[int]],
    ) -> None:
        self._context = context
        self._conversations = conversations
        self._directory = directory
        self._sync_inbox = sync_inbox
        self._resolvers: dict[bytes, asyncio.Future[Any]] = {}

    # ── commits ─────────────────────────────────────────────────────────────────────────────────────────

    async def commit(
        self, conversation: Conversation, group_id: bytes, make: Make, *, announce: bool = True
    ) -> Committed | None:
        """Build the change with `make` and get it accepted by the node (see the module docs)."""
        context = self._context
        vault = context.vault
        for tries in range(1, group_rules.MAX_COMMIT_TRIES + 1):
            async with context.mls:
                await self._check_not_broken(conversation, group_id)
                if group_id in context.unconfirmed:
                    raise NodeUnavailable(
                        f"an earlier change to {conversation.name} is not confirmed by the node yet: try again "
                        "once it is"
                    )
                before = await asyncio.to_thread(vault.members, group_id)
                epoch = await asyncio.to_thread(vault.epoch, group_id)
                prepared = await make(before)
                if prepared is None:
                    return None
                result = await self._submit_pending(conversation, group_id, epoch, before, prepared)
                if result.outcome != "stale":
                    try:
                        merged = await self._merged(
                            conversation, group_id, prepared.change, prepared.replaces, announce=announce
                        )
                    except BaseException:
                        # Accepted but not applied here: the pending commit stays and is merged on resubmission.
                        context.unconfirmed.add(group_id)
                        self._resolve_in_background(group_id)
                        raise
                    new_epoch = await asyncio.to_thread(vault.epoch, group_id)
                    return Committed(merged, new_epoch, tries, prepared.change)
                await self._drop_pending(group_id)
            await self._catch_up(conversation, group_id, result.epoch)
        raise ChatError(
            f"could not change {conversation.name}: other members' changes came first {group_rules.MAX_COMMIT_TRIES}"
            " times in a row; try again"
        )

    async def _submit_pending(
        self, conversation: Conversation, group_id: bytes, epoch: int, before: list[bytes], prepared: Prepared
    ) -> CommitResult:
        """Submit the vault's pending commit. Refused: it is cleared and the refusal raised. No answer: it stays
        pending (a resolver submits it again) and `Unconfirmed` is raised."""
        intent = _Intent(conversation.id, before, prepared.change, prepared.replaces)
        try:
            await self._context.store.set_setting(_SETTING_INTENT + group_id.hex(), intent.encode())
            return await self._submit(conversation, group_id, epoch, prepared.commit, prepared.welcome, intent)
        except (Unconfirmed, asyncio.CancelledError):
            # The node may have accepted it: keep it pending; it is submitted again (here, or at the next start).
            self._context.unconfirmed.add(group_id)
            self._resolve_in_background(group_id)
            raise
        except BaseException:
            await self._drop_pending(group_id)  # refused, or never sent
            raise

    async def _submit(
        self,
        conversation: Conversation,
        group_id: bytes,
        epoch: int,
        message: bytes,
        welcome: bytes | None,
        intent: _Intent,
        *,
        proposal: bool = False,
    ) -> CommitResult:
        context = self._context
        me = context.identity_key
        frame = MlsFrame(message, sender=me).encode()
        deliveries = [await self._sealed(key, frame) for key in group_rules.commit_recipients(intent.before, me)]
        welcomes: list[Delivery] = []
        if welcome is not None:
            welcome_frame = WelcomeFrame("group", conversation.name, None, me, welcome, intent.replaces).encode()
            welcomes = [
                await self._sealed(key, welcome_frame) for key in group_rules.newcomers(intent.before, intent.change)
            ]
        members = [] if proposal else group_rules.members_after(intent.before, intent.change)
        last: BaseException | None = None
        for attempt in range(group_rules.SUBMIT_ATTEMPTS):
            try:
                return await asyncio.wait_for(
                    context.node.submit_commit(group_id, epoch, message, deliveries, welcomes, members),
                    _SUBMIT_TIMEOUT_FACTOR * context.config.connect_timeout,
                )
            except _TRANSIENT as error:
                last = error
                await asyncio.sleep(0.2 * (attempt + 1))
            except RpcError as error:
                await context.guard(reraise(error))
        detail = f": {last}" if last is not None and str(last) else ""
        raise Unconfirmed(
            f"the node did not confirm the change to {conversation.name}{detail}; it is sent again until it does"
        )

    async def _sealed(self, key: bytes, frame: bytes) -> Delivery:
        hybrid = await self._directory.hybrid_key(key, await self._directory.display_name(key))
        return Delivery(key, seal_for(hybrid, key, frame, b""))

    async def _merged(
        self, conversation: Conversation, group_id: bytes, change: Change, replaces: bytes | None, *, announce: bool
    ) -> Conversation:
        """Apply an accepted commit here; returns the conversation (re-pointed to the new group if the commit
        re-created one)."""
        context = self._context
        store = context.store
        await asyncio.to_thread(context.vault.merge_pending_commit, group_id)
        await store.set_setting(_SETTING_INTENT + group_id.hex(), None)
        context.unconfirmed.discard(group_id)
        if replaces is not None:
            # The conversation moves to the new group; the old group's late messages still land in it.
            await store.set_setting(SETTING_ALIAS + replaces.hex(), str(conversation.id))
            await store.set_group_id(conversation.id, group_id)
            await store.set_setting(SETTING_BROKEN + str(conversation.id), None)
            moved = await store.get_conversation(conversation.id)
            assert moved is not None
            conversation = moved
        for key in change.added:
            name = await self._directory.username_of(key)
            await store.add_member(conversation.id, key, name)
            if announce:
                context.emit(MemberJoined(conversation, key, name, context.username))
        leaves = await context.proposals.settle(group_id)  # the epoch moved: they are committed or void
        for key in change.removed:
            name = await self._directory.username_of(key)
            await store.remove_member(conversation.id, key)
            if announce:
                context.emit(MemberLeft(conversation, key, name, context.username, left=key in leaves))
        await self._conversations.sync_members(conversation, group_id)
        context.groups_changed.set()
        return conversation

    async def _drop_pending(self, group_id: bytes) -> None:
        context = self._context
        with_pending = await asyncio.to_thread(context.vault.pending_commit, group_id)
        if with_pending is not None:
            await asyncio.to_thread(context.vault.clear_pending_commit, group_id)
        await context.store.set_setting(_SETTING_INTENT + group_id.hex(), None)
        context.unconfirmed.discard(group_id)
        context.groups_changed.set()

    async def _catch_up(self, conversation: Conversation, group_id: bytes, node_epoch: int) -> None:
        """Process the inbox until the vault's epoch of the group reaches the node's."""
        vault = self._context.vault
        local = -1
        for round_ in range(_CATCH_UP_ROUNDS):
            try:
                local = await asyncio.to_thread(vault.epoch, group_id)
                active = await asyncio.to_thread(vault.is_active, group_id)
            except NativeError:
                active = False
            if not active:
                raise NotAllowed(f"you are no longer a member of {conversation.name}")
            if local >= node_epoch:
                return
            await self._check_not_broken(conversation, group_id)
            if not await self._sync_inbox():
                await asyncio.sleep(min(0.02 * 2**round_, 0.5))
        raise ChatError(
            f"{conversation.name}: this client could not catch up with the group (epoch {local}, the node's "
            f"{node_epoch}); its messages may be held back: see the errors above"
        )

    async def _check_not_broken(self, conversation: Conversation, group_id: bytes) -> None:
        if conversation.group_id != group_id:
            return  # re-creating it: the new group is fine
        reason = await self._context.store.get_setting(SETTING_BROKEN + str(conversation.id))
        if reason is not None:
            raise NotAllowed(f"{conversation.name} cannot go on ({reason}): /recreate makes a new group")

    # ── proposals ───────────────────────────────────────────────────────────────────────────────────────

    async def propose(self, conversation: Conversation, group_id: bytes, build: Callable[[], bytes]) -> int:
        """Get a proposal built by `build` (a vault call) ordered by the node at the group's current epoch;
        returns how many times it was built."""
        context = self._context
        vault = context.vault
        for tries in range(1, group_rules.MAX_COMMIT_TRIES + 1):
            async with context.mls:
                await self._check_not_broken(conversation, group_id)
                before = await asyncio.to_thread(vault.members, group_id)
                epoch = await asyncio.to_thread(vault.epoch, group_id)
                proposal = await asyncio.to_thread(build)
                intent = _Intent(conversation.id, before, Change(), None)
                result = await self._submit(conversation, group_id, epoch, proposal, None, intent, proposal=True)
                if result.outcome != "stale":
                    return tries
            await self._catch_up(conversation, group_id, result.epoch)
        raise ChatError(
            f"could not send your request to {conversation.name}: other members' changes came first "
            f"{group_rules.MAX_COMMIT_TRIES} times in a row; try again"
        )

    # ── commits left pending (no answer, or a crash after submitting) ───────────────────────────────────

    async def find_pending(self) -> list[bytes]:
        """Groups whose vault holds a pending commit (marked unconfirmed: their messages wait for it)."""
        vault = self._context.vault
        found = []
        for group_id in await asyncio.to_thread(vault.group_ids):
            if await asyncio.to_thread(vault.pending_commit, group_id) is not None:
                self._context.unconfirmed.add(group_id)
                found.append(group_id)
        return found

    async def resume(self, group_id: bytes) -> bool:
        """Submit a pending commit again with the same bytes; True once it is settled (merged or dropped)."""
        context = self._context
        vault = context.vault
        async with context.mls:
            pending = await asyncio.to_thread(vault.pending_commit, group_id)
            raw = await context.store.get_setting(_SETTING_INTENT + group_id.hex())
            intent = _Intent.decode(raw) if raw is not None else None
            conversation = None if intent is None else await context.store.get_conversation(intent.conversation_id)
            if pending is None or intent is None or conversation is None:
                # Built but never submitted (the intent is written before submitting), or its conversation was
                # deleted: nothing to confirm.
                await self._drop_pending(group_id)
                return True
            commit, welcome = pending
            epoch = await asyncio.to_thread(vault.epoch, group_id)
            try:
                result = await self._submit(conversation, group_id, epoch, commit, welcome, intent)
            except Unconfirmed:
                return False
            except ChatError as error:
                await self._drop_pending(group_id)
                context.emit(ErrorEvent(f"your change to {conversation.name} was refused: {error}", error))
                return True
            if result.outcome == "stale":
                await self._drop_pending(group_id)
                context.emit(
                    ErrorEvent(
                        f"your change to {conversation.name} was not applied: another member's change came first "
                        "while it was unconfirmed; make it again"
                    )
                )
                return True
            await self._merged(conversation, group_id, intent.change, intent.replaces, announce=True)
            context.emit(Notice(f"the node confirmed your change to {conversation.name}"))
            return True

    def _resolve_in_background(self, group_id: bytes) -> None:
        if self._context.bus.closed:
            return  # the next start submits it again
        task = self._resolvers.get(group_id)
        if task is None or task.done():
            self._resolvers[group_id] = self._context.bus.spawn(self._resolve_until_settled(group_id))

    async def _resolve_until_settled(self, group_id: bytes) -> None:
        delay = 0.5
        while not self._context.bus.closed:
            await asyncio.sleep(delay)
            try:
                if await self.resume(group_id):
                    return
            except Exception as error:  # noqa: BLE001 - reported; tried again
                log.warning("resubmitting a pending commit failed: %r", error)
            delay = min(delay * 2, 10.0)

    async def resume_all(self) -> None:
        """At start: settle every commit a crash or a lost connection left pending."""
        for group_id in await self.find_pending():
            if not await self.resume(group_id):
                self._resolve_in_background(group_id)
