"""Who is who: usernames and identity keys (resolveUser/resolveIdentity) and peers' hybrid keys, cached."""

from __future__ import annotations

from quicnprotochat.common.errors import InvalidArgument, RpcError
from quicnprotochat.common.usernames import normalize_username

from .contacts import Contacts, changed_warning
from .context import ChatContext
from .errors import ChatError, NoHybridKey, UserNotFound
from .events import ErrorEvent

SETTING_HYBRID_KEY = "hybrid_key:"


def checked_username(username: str) -> str:
    """A username as typed (``@bob`` or ``bob``), normalized; ChatError if it cannot be one."""
    try:
        return normalize_username(username.removeprefix("@"))
    except InvalidArgument as error:
        raise ChatError(error.reason) from None


class Directory:
    def __init__(self, context: ChatContext, contacts: Contacts) -> None:
        self._context = context
        self._contacts = contacts
        self._names: dict[bytes, str] = {context.identity_key: context.username}
        self._hybrid_keys: dict[bytes, bytes] = {}

    async def username_of(self, identity_key: bytes) -> str | None:
        """The username of an identity key (resolveIdentity, cached); None if the node knows none."""
        name = self._names.get(identity_key)
        if name is not None:
            return name
        try:
            name = await self._context.node.resolve_identity(identity_key)
        except (RpcError, OSError, TimeoutError):
            return None
        if name:
            self._names[identity_key] = name
            # Someone writing under a known contact's name with another key: say so loudly (nothing is sent to
            # that key until the user accepts it: `check_recipient`).
            known = await self._contacts.known_key(name)
            if known is not None and known != identity_key:
                await self._contacts.note_change(name, identity_key)
                self._context.emit(ErrorEvent(changed_warning(name, known, identity_key)))
        return name

    async def check_recipient(self, identity_key: bytes) -> None:
        """IdentityKeyChanged if `identity_key` is not the accepted key of the username it belongs to."""
        name = await self.username_of(identity_key)
        if name is not None:
            await self._contacts.check(name, identity_key)

    async def display_name(self, identity_key: bytes) -> str:
        return await self.username_of(identity_key) or identity_key.hex()[:16]

    async def resolve_user(self, username: str) -> tuple[str, bytes]:
        """(normalized username, identity key); UserNotFound if the node has no such account."""
        name = checked_username(username)
        for known_key, known in self._names.items():
            if known == name:
                return name, known_key
        key = await self.lookup(name)
        await self._contacts.check(name, key)  # a changed key is refused until the user accepts it
        self._names[key] = name
        return name, key

    async def lookup(self, name: str) -> bytes:
        """The identity key the node gives for `name` now (not checked against the known one)."""
        key = await self._context.guard(self._context.node.resolve_user(name))
        if key is None:
            raise UserNotFound(f"no user named {name!r} on {self._context.node.address}")
        return key

    def forget(self, name: str) -> None:
        """Ask the node again next time (after the user accepted a changed key)."""
        for key in [key for key, known in self._names.items() if known == name and key != self._context.identity_key]:
            del self._names[key]

    async def hybrid_key(self, identity_key: bytes, name: str) -> bytes:
        """A peer's hybrid public key: remembered (in the state too, so that messages can be sealed and kept
        pending while the node is away), else fetched."""
        key = self._hybrid_keys.get(identity_key)
        if key is not None:
            return key
        store = self._context.store
        stored = await store.get_setting(SETTING_HYBRID_KEY + identity_key.hex())
        if stored is not None:
            key = bytes.fromhex(stored)
        else:
            key = await self._context.guard(self._context.node.fetch_hybrid_key(identity_key))
            if key is None:
                raise NoHybridKey(f"{name} has not published a hybrid key yet: they have to log in once")
            await store.set_setting(SETTING_HYBRID_KEY + identity_key.hex(), key.hex())
        self._hybrid_keys[identity_key] = key
        return key
