"""The local view of conversations: lookup by name or id, listing with unread counts, whether this client is
still a member, and keeping the stored member list in step with the MLS group."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from quicnprotochat.client.state import Conversation, Member, Message
from quicnprotochat.native import NativeError

from .config import NOTES_NAME, SELF_ALIASES
from .context import ChatContext
from .directory import Directory
from .errors import ChatError, NotAllowed, UnknownConversation

SETTING_ALIAS = "group_alias:"
"""group_alias:<group id hex> -> conversation id: a second MLS group whose messages land in that conversation."""
SETTING_LEFT = "left:"
"""left:<conversation id>: this client was removed from (or left) that conversation's group."""
SETTING_LEAVING = "leaving:"
"""leaving:<group id hex>: this client asked to leave; set until a commit removes it."""
SETTING_BROKEN = "broken:"
"""broken:<conversation id> -> reason: a change the node accepted could not be processed here."""
SETTING_DELETED = "deleted:"
"""deleted:<group id hex>: the user deleted the conversation; the group's later traffic is ignored."""

ConversationRef = Conversation | str | int


@dataclass(frozen=True)
class ConversationSummary:
    conversation: Conversation
    unread: int
    active: bool
    """False once this client was removed (or the group is otherwise gone)."""


class Conversations:
    def __init__(self, context: ChatContext, directory: Directory) -> None:
        self._context = context
        self._directory = directory

    async def get(self, ref: ConversationRef) -> Conversation:
        """Look a conversation up by object, id or name (``bob`` finds the DM ``@bob``); UnknownConversation."""
        store = self._context.store
        if isinstance(ref, Conversation):
            ref = ref.id
        if isinstance(ref, int):
            found = await store.get_conversation(ref)
        else:
            name = ref.strip()
            if name in SELF_ALIASES or name.removeprefix("@") == self._context.username:
                found = await store.notes()
            else:
                found = await store.find_by_name(name)
                if found is None and not name.startswith("@"):
                    found = await store.find_by_name("@" + name)
        if found is None:
            raise UnknownConversation(f"no conversation {ref!r}")
        return found

    async def summaries(self) -> list[ConversationSummary]:
        """All conversations, most recent activity first, with unread counts."""
        store = self._context.store
        unread = await store.unread_counts()
        result = []
        for conversation in await store.list_conversations():
            result.append(
                ConversationSummary(conversation, unread.get(conversation.id, 0), await self.active(conversation))
            )
        return result

    async def active(self, conversation: Conversation) -> bool:
        if conversation.kind == "notes":
            return True
        if await self._context.store.get_setting(SETTING_LEFT + str(conversation.id)) is not None:
            return False
        group_id = conversation.group_id
        if group_id is None:
            return False
        try:
            return await asyncio.to_thread(self._context.vault.is_active, group_id)
        except NativeError:
            return False

    async def group_of(self, conversation: Conversation, action: str) -> bytes:
        """The MLS group id of a conversation this client may `action` in (NotAllowed otherwise)."""
        if conversation.kind == "notes":
            raise NotAllowed(f"cannot {action} in your notepad")
        if not await self.active(conversation) or conversation.group_id is None:
            raise NotAllowed(f"you are no longer a member of {conversation.name}")
        return conversation.group_id

    async def members(self, ref: ConversationRef) -> list[Member]:
        conversation = await self.get(ref)
        return await self._context.store.list_members(conversation.id)

    async def history(self, ref: ConversationRef, limit: int = 50) -> list[Message]:
        conversation = await self.get(ref)
        return await self._context.store.history(conversation.id, limit)

    async def notes(self) -> Conversation:
        """The local notepad (created on first use)."""
        store = self._context.store
        existing = await store.notes()
        if existing is not None:
            return existing
        conversation = await store.create_conversation("notes", NOTES_NAME)
        await store.add_member(conversation.id, self._context.identity_key, self._context.username)
        return conversation

    async def free_name(self, wanted: str) -> str:
        name, counter = wanted, 1
        while await self._context.store.find_by_name(name) is not None:
            counter += 1
            name = f"{wanted}-{counter}"
        return name

    async def of_group(self, group_id: bytes) -> Conversation | None:
        """The conversation an MLS group's messages land in (its own, or the one it is an alias of)."""
        store = self._context.store
        conversation = await store.find_by_group_id(group_id)
        if conversation is not None:
            return conversation
        alias = await store.get_setting(SETTING_ALIAS + group_id.hex())
        return None if alias is None else await store.get_conversation(int(alias))

    async def sync_members(self, conversation: Conversation, group_id: bytes) -> None:
        """Make the stored member list the MLS group's."""
        store = self._context.store
        keys = await asyncio.to_thread(self._context.vault.members, group_id)
        known = {member.identity_key for member in await store.list_members(conversation.id)}
        for key in known - set(keys):
            await store.remove_member(conversation.id, key)
        for key in keys:
            if key not in known:
                name = await self._directory.username_of(key)
                await store.add_member(conversation.id, key, name)
                if key != self._context.identity_key:
                    # Kept now so that messages to a new member can be sealed (and kept pending) while the node
                    # is away later.
                    with contextlib.suppress(ChatError):
                        await self._directory.hybrid_key(key, name or key.hex()[:16])
