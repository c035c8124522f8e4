"""Conversation and group operations: open a DM, create a group, invite, remove, update keys, leave, delete,
re-create. Every change to a group is a commit through the node's sequencer (`commits`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from quicnprotochat.client.state import Conversation, ConversationExists
from quicnprotochat.native import NativeError

from . import group_rules
from .commits import Committed, Committer, Prepared, Unconfirmed
from .config import MAX_GROUP_NAME, SELF_ALIASES
from .context import ChatContext
from .conversations import (
    SETTING_BROKEN,
    SETTING_DELETED,
    SETTING_LEAVING,
    SETTING_LEFT,
    ConversationRef,
    Conversations,
)
from .delivery import Delivery
from .directory import Directory
from .errors import ChatError, NotAllowed
from .events import ErrorEvent
from .framing import WelcomeFrame
from .group_rules import Change
from .key_packages import KeyPackageStock


class GroupOps:
    def __init__(
        self,
        context: ChatContext,
        conversations: Conversations,
        directory: Directory,
        key_packages: KeyPackageStock,
        delivery: Delivery,
        committer: Committer,
        watch: Callable[[bytes], None],
    ) -> None:
        self._context = context
        self._conversations = conversations
        self._directory = directory
        self._key_packages = key_packages
        self._delivery = delivery
        self._committer = committer
        self._watch = watch

    async def dm(self, username: str) -> Conversation:
        """The DM with `username`, created (MLS group + channel, Welcome sent) if there is none yet.
        Your own username (or ``me``) gives the local notepad."""
        context = self._context
        store, vault = context.store, context.vault
        raw = username.strip()
        if raw in SELF_ALIASES:
            return await self._conversations.notes()
        name, peer = await self._directory.resolve_user(raw)
        if peer == context.identity_key:
            return await self._conversations.notes()
        existing = await store.find_dm(peer)
        if existing is not None:
            return existing
        hybrid = await self._directory.hybrid_key(peer, name)
        package = await self._key_packages.fetch_peer_package(peer, name)
        channel = await context.guard(context.node.create_channel(peer))
        async with context.mls:
            existing = await store.find_dm(peer)  # a Welcome from the peer may have come meanwhile
            if existing is not None:
                return existing
            group_id = await asyncio.to_thread(vault.create_group)
            try:
                # A DM's one commit goes to nobody (the peer joins by the Welcome): no order to agree on.
                _commit, welcome = await asyncio.to_thread(vault.add_members, group_id, [package])
                await asyncio.to_thread(vault.merge_pending_commit, group_id)
                frame = WelcomeFrame("dm", "", channel, context.identity_key, welcome).encode()
                await self._delivery.deliver_one(peer, hybrid, frame, b"")
                conversation = await store.create_conversation(
                    "dm",
                    await self._conversations.free_name("@" + name),
                    group_id=group_id,
                    channel_id=channel,
                    peer_identity_key=peer,
                )
            except BaseException:
                with contextlib.suppress(NativeError):
                    await asyncio.to_thread(vault.delete_group, group_id)
                raise
            await store.add_member(conversation.id, context.identity_key, context.username)
            await store.add_member(conversation.id, peer, name)
        self._watch(channel)
        context.groups_changed.set()
        return conversation

    async def create_group(self, name: str) -> Conversation:
        """A new group with only this client in it; `invite` adds members."""
        context = self._context
        name = name.strip()
        if not name or len(name) > MAX_GROUP_NAME or name.startswith("@") or any(c.isspace() for c in name):
            raise ChatError(f"a group name is 1 to {MAX_GROUP_NAME} characters, no spaces, not starting with '@'")
        if await context.store.find_by_name(name) is not None:
            raise ChatError(f"there is already a conversation named {name!r}")
        async with context.mls:
            group_id = await asyncio.to_thread(context.vault.create_group)
            try:
                conversation = await context.store.create_conversation("group", name, group_id=group_id)
            except ConversationExists:
                await asyncio.to_thread(context.vault.delete_group, group_id)
                raise ChatError(f"there is already a conversation named {name!r}") from None
            await context.store.add_member(conversation.id, context.identity_key, context.username)
        return conversation

    async def invite(self, ref: ConversationRef, username: str) -> Committed:
        """Add `username` to a group: their KeyPackage is fetched, and the commit (to the other members) and the
        Welcome (to them) go through the node's sequencer. They can read what is sent from now on, nothing
        earlier. Returns the outcome (`Committed.tries` > 1: built again after other members' changes)."""
        context = self._context
        vault = context.vault
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group":
            raise NotAllowed("invitations are for groups: create one with /group, then /invite")
        name, peer = await self._directory.resolve_user(username)
        group_id = await self._conversations.group_of(conversation, "invite")
        if peer in await asyncio.to_thread(vault.members, group_id):
            raise NotAllowed(f"{name} is already a member of {conversation.name}")
        await self._directory.hybrid_key(peer, name)  # fails early, before their KeyPackage is used up
        package = await self._key_packages.fetch_peer_package(peer, name)

        async def make(members: list[bytes]) -> Prepared:
            if peer in members:
                raise NotAllowed(f"{name} is already a member of {conversation.name} (added meanwhile)")
            commit, welcome = await asyncio.to_thread(vault.add_members, group_id, [package])
            return Prepared(commit, welcome, await self._with_proposals(group_id, Change(added=(peer,))))

        committed = await self._committer.commit(conversation, group_id, make)
        assert committed is not None
        return committed

    async def remove(self, ref: ConversationRef, username: str) -> Committed:
        """Remove `username` from a group; they cannot read anything sent afterwards."""
        context = self._context
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group":
            raise NotAllowed("only group members can be removed; a DM stays between its two members")
        name, peer = await self._directory.resolve_user(username)
        if peer == context.identity_key:
            raise NotAllowed("to leave a group, use /leave")
        group_id = await self._conversations.group_of(conversation, "remove members")
        if peer not in await asyncio.to_thread(context.vault.members, group_id):
            raise NotAllowed(f"{name} is not a member of {conversation.name}")

        async def make(members: list[bytes]) -> Prepared:
            if peer not in members:
                raise NotAllowed(f"{name} is not a member of {conversation.name} (removed meanwhile)")
            commit = await asyncio.to_thread(context.vault.remove_members, group_id, [peer])
            return Prepared(commit, None, await self._with_proposals(group_id, Change(removed=(peer,))))

        committed = await self._committer.commit(conversation, group_id, make)
        assert committed is not None
        return committed

    async def update_keys(self, ref: ConversationRef) -> Committed:
        """Rotate this client's key material in a group (post-compromise security): a commit like any other."""
        context = self._context
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group":
            # A DM's messages travel on its channel, a commit on the default inbox: no one order for both.
            raise NotAllowed("keys are updated in groups")
        group_id = await self._conversations.group_of(conversation, "update keys")

        async def make(_members: list[bytes]) -> Prepared:
            commit = await asyncio.to_thread(context.vault.self_update, group_id)
            return Prepared(commit, None, await self._with_proposals(group_id, Change()))

        committed = await self._committer.commit(conversation, group_id, make)
        assert committed is not None
        return committed

    async def _with_proposals(self, group_id: bytes, change: Change) -> Change:
        """A commit also carries the leave proposals the vault holds for the current epoch (OpenMLS commits every
        pending proposal), so the member set the node is told leaves those members out too."""
        epoch = await asyncio.to_thread(self._context.vault.epoch, group_id)
        leaving = await self._context.proposals.at(group_id, epoch)
        return Change(change.added, change.removed + tuple(k for k in leaving if k not in change.removed))

    # ── leaving ─────────────────────────────────────────────────────────────────────────────────────────

    async def leave(self, ref: ConversationRef) -> None:
        """Ask to leave a group: a self-remove proposal, ordered by the node, that the next remaining member
        commits. From now on nothing new of the group is shown or can be sent; the history stays. Alone in the
        group, it is simply left."""
        context = self._context
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group":
            raise NotAllowed("only groups can be left: /delete removes a conversation from this device")
        group_id = await self._conversations.group_of(conversation, "leave")
        members = await asyncio.to_thread(context.vault.members, group_id)
        broken = await context.store.get_setting(SETTING_BROKEN + str(conversation.id)) is not None
        if members != [context.identity_key] and not broken:
            await self._committer.propose(conversation, group_id, lambda: context.vault.leave_group(group_id))
            await context.store.set_setting(SETTING_LEAVING + group_id.hex(), "1")
        await context.store.set_setting(SETTING_LEFT + str(conversation.id), "1")

    def ask_to_leave_again(self, conversation: Conversation, group_id: bytes) -> None:
        """The group's epoch moved and this client is still in it: its leave proposal was for an older epoch."""
        self._context.bus.spawn(
            self._report(f"leaving {conversation.name}", self._propose_leave(conversation, group_id))
        )

    async def _propose_leave(self, conversation: Conversation, group_id: bytes) -> None:
        vault = self._context.vault
        await self._committer.propose(conversation, group_id, lambda: vault.leave_group(group_id))

    def commit_proposals_later(self, conversation: Conversation, group_id: bytes, epoch: int, delay: float) -> None:
        """Members asked to leave at `epoch`: commit that after `delay` seconds unless someone did."""
        self._context.bus.spawn(
            self._report(
                f"committing a leave in {conversation.name}",
                self._commit_proposals(conversation, group_id, epoch, delay),
            )
        )

    async def commit_waiting_proposals(self) -> None:
        """At start: leave proposals an earlier run received and nobody has committed yet."""
        context = self._context
        for group_id, epoch, leaving in await context.proposals.waiting():
            conversation = await self._conversations.of_group(group_id)
            try:
                current = await asyncio.to_thread(context.vault.epoch, group_id)
                members = await asyncio.to_thread(context.vault.members, group_id)
            except NativeError:
                current, members = -1, []
            if conversation is None or current != epoch:
                await context.proposals.settle(group_id)  # void: the group moved on (or is gone)
                continue
            delay = group_rules.proposal_delay(members, leaving, context.identity_key)
            if delay is not None:
                self.commit_proposals_later(conversation, group_id, epoch, delay)

    async def _commit_proposals(self, conversation: Conversation, group_id: bytes, epoch: int, delay: float) -> None:
        context = self._context
        if delay:
            await asyncio.sleep(delay)

        async def make(_members: list[bytes]) -> Prepared | None:
            leaving = await context.proposals.at(group_id, epoch)
            if not leaving or await asyncio.to_thread(context.vault.epoch, group_id) != epoch:
                return None  # another member committed it (or another change made the proposal void)
            commit, welcome = await asyncio.to_thread(context.vault.commit_pending_proposals, group_id)
            return Prepared(commit, welcome, Change(removed=leaving))

        await self._committer.commit(conversation, group_id, make)

    async def _report(self, what: str, operation: Awaitable[None]) -> None:
        try:
            await operation
        except ChatError as error:
            self._context.emit(ErrorEvent(f"{what}: {error}", error))

    # ── deleting and re-creating ────────────────────────────────────────────────────────────────────────

    async def delete(self, ref: ConversationRef) -> None:
        """Delete a conversation from this device: its history and its group state. A group this client is
        still in is left first (so the others stop sending to it)."""
        context = self._context
        conversation = await self._conversations.get(ref)
        if conversation.kind == "notes":
            raise NotAllowed("the notepad cannot be deleted")
        group_id = conversation.group_id
        if conversation.kind == "group" and await self._conversations.active(conversation):
            await self.leave(conversation)
        async with context.mls:
            if group_id is not None:
                await context.store.set_setting(SETTING_DELETED + group_id.hex(), "1")
                await context.store.set_setting(SETTING_LEAVING + group_id.hex(), None)
                with contextlib.suppress(NativeError):
                    await asyncio.to_thread(context.vault.delete_group, group_id)
            for key in (SETTING_LEFT, SETTING_BROKEN):
                await context.store.set_setting(key + str(conversation.id), None)
            await context.store.delete_conversation(conversation.id)

    async def recreate(self, ref: ConversationRef) -> tuple[Committed, list[str]]:
        """Replace a group that cannot go on by a new one with its current members (as this client knows them),
        under the same conversation: each member's client attaches the new group to its conversation. Returns
        the outcome and the members who could not be invited (no KeyPackage left, ...)."""
        context = self._context
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group" or conversation.group_id is None:
            raise NotAllowed("only groups can be re-created")
        old_group = conversation.group_id
        if await context.store.get_setting(SETTING_LEFT + str(conversation.id)) is not None:
            raise NotAllowed(f"you are no longer a member of {conversation.name}")
        others = [
            m for m in await context.store.list_members(conversation.id) if m.identity_key != context.identity_key
        ]
        packages: list[tuple[bytes, bytes]] = []
        missing: list[str] = []
        for member in others:
            name = member.username or member.identity_key.hex()[:16]
            try:
                await self._directory.hybrid_key(member.identity_key, name)
                packages.append(
                    (member.identity_key, await self._key_packages.fetch_peer_package(member.identity_key, name))
                )
            except ChatError as error:
                missing.append(f"{name} ({error})")
        group_id = await asyncio.to_thread(context.vault.create_group)
        try:

            async def make(_members: list[bytes]) -> Prepared:
                if not packages:
                    commit = await asyncio.to_thread(context.vault.self_update, group_id)
                    return Prepared(commit, None, Change(), replaces=old_group)
                commit, welcome = await asyncio.to_thread(
                    context.vault.add_members, group_id, [p for _k, p in packages]
                )
                return Prepared(commit, welcome, Change(added=tuple(k for k, _p in packages)), replaces=old_group)

            committed = await self._committer.commit(conversation, group_id, make, announce=False)
        except Unconfirmed:
            raise  # the node may have accepted it: it is submitted again until it answers
        except BaseException:
            with contextlib.suppress(NativeError):
                await asyncio.to_thread(context.vault.delete_group, group_id)
            raise
        assert committed is not None
        return committed, missing
