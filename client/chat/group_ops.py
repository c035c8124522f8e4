"""Conversation and group operations: open a DM, create a group, invite, remove."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from quicnprotochat.client.state import Conversation, ConversationExists
from quicnprotochat.native import NativeError

from .config import MAX_GROUP_NAME, SELF_ALIASES
from .context import ChatContext
from .conversations import ConversationRef, Conversations
from .delivery import Delivery
from .directory import Directory
from .errors import ChatError, DeliveryFailed, NotAllowed
from .events import MemberJoined, MemberLeft
from .framing import MlsFrame, WelcomeFrame
from .key_packages import KeyPackageStock


class GroupOps:
    def __init__(
        self,
        context: ChatContext,
        conversations: Conversations,
        directory: Directory,
        key_packages: KeyPackageStock,
        delivery: Delivery,
        watch: Callable[[bytes], None],
    ) -> None:
        self._context = context
        self._conversations = conversations
        self._directory = directory
        self._key_packages = key_packages
        self._delivery = delivery
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

    async def invite(self, ref: ConversationRef, username: str) -> None:
        """Add `username` to a group: their KeyPackage is fetched, the commit goes to the other members and the
        Welcome to them. They can read what is sent from now on, nothing earlier."""
        context = self._context
        vault = context.vault
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group":
            raise NotAllowed("invitations are for groups: create one with /group, then /invite")
        name, peer = await self._directory.resolve_user(username)
        group_id = await self._conversations.group_of(conversation, "invite")
        members = await asyncio.to_thread(vault.members, group_id)
        if peer in members:
            raise NotAllowed(f"{name} is already a member of {conversation.name}")
        hybrid = await self._directory.hybrid_key(peer, name)
        package = await self._key_packages.fetch_peer_package(peer, name)
        async with context.mls:
            members = await asyncio.to_thread(vault.members, group_id)
            commit, welcome = await asyncio.to_thread(vault.add_members, group_id, [package])
            await asyncio.to_thread(vault.merge_pending_commit, group_id)
            frame = WelcomeFrame("group", conversation.name, None, context.identity_key, welcome).encode()
            # The Welcome first: see "Inbox layout" in the receiver's docs.
            welcome_error: ChatError | None = None
            try:
                await self._delivery.deliver_one(peer, hybrid, frame, b"")
            except ChatError as error:
                welcome_error = error
            await context.store.add_member(conversation.id, peer, name)
            others = [key for key in members if key != context.identity_key]
            await self._delivery.deliver(others, MlsFrame(commit).encode(), b"")
        context.emit(MemberJoined(conversation, peer, name, context.username))
        if welcome_error is not None:
            raise DeliveryFailed(f"{name} was added but did not get the invitation: {welcome_error}", [name])

    async def remove(self, ref: ConversationRef, username: str) -> None:
        """Remove `username` from a group; they cannot read anything sent afterwards."""
        context = self._context
        conversation = await self._conversations.get(ref)
        if conversation.kind != "group":
            raise NotAllowed("only group members can be removed; a DM stays between its two members")
        name, peer = await self._directory.resolve_user(username)
        if peer == context.identity_key:
            raise NotAllowed("to leave a group, ask another member to remove you")
        group_id = await self._conversations.group_of(conversation, "remove members")
        async with context.mls:
            members = await asyncio.to_thread(context.vault.members, group_id)
            if peer not in members:
                raise NotAllowed(f"{name} is not a member of {conversation.name}")
            commit = await asyncio.to_thread(context.vault.remove_members, group_id, [peer])
            await asyncio.to_thread(context.vault.merge_pending_commit, group_id)
            await context.store.remove_member(conversation.id, peer)
            # Everyone who was a member gets the commit, the removed member included (so it learns of it).
            others = [key for key in members if key != context.identity_key]
            await self._delivery.deliver(others, MlsFrame(commit).encode(), b"")
        context.emit(MemberLeft(conversation, peer, name, context.username))
