"""`Contacts`: the identity key this client has seen for each username, so that a change is noticed.

The node says which identity key a username has. The first key seen for a username is remembered. When the
node later gives another key for it (an impersonation by the node or someone who took the account over, or a
new account after the operator removed the old one), nothing is sent to that key: `check` raises
`IdentityKeyChanged`, a loud warning, until the user compares safety numbers and accepts the new key (`trust`).
"""

from __future__ import annotations

from .config import key_fingerprint
from .context import ChatContext
from .errors import ChatError, IdentityKeyChanged

SETTING_CONTACT = "contact:"
SETTING_CHANGED = "contact_changed:"


def changed_warning(username: str, old: bytes, new: bytes) -> str:
    return (
        f"WARNING: the identity key of {username} changed (was {key_fingerprint(old)}, now {key_fingerprint(new)}). "
        f"Someone may be impersonating {username}, or {username} has a new account. Compare safety numbers"
        f" (/verify @{username}, with {username} in person or on a call), then accept the new key with"
        f" /trust @{username}; nothing is sent to {username} until then."
    )


class Contacts:
    def __init__(self, context: ChatContext) -> None:
        self._context = context

    async def known_key(self, username: str) -> bytes | None:
        value = await self._context.store.get_setting(SETTING_CONTACT + username)
        return None if value is None else bytes.fromhex(value)

    async def changed_key(self, username: str) -> bytes | None:
        """The new key the node gave for `username`, while it is not accepted."""
        value = await self._context.store.get_setting(SETTING_CHANGED + username)
        return None if value is None else bytes.fromhex(value)

    async def note_change(self, username: str, identity_key: bytes) -> None:
        """Remember that the node gave another key for `username` (what `trust` accepts)."""
        await self._context.store.set_setting(SETTING_CHANGED + username, identity_key.hex())

    async def check(self, username: str, identity_key: bytes) -> None:
        """Remember the first key of `username`; IdentityKeyChanged if the node now gives another one."""
        known = await self.known_key(username)
        if known is None:
            await self._context.store.set_setting(SETTING_CONTACT + username, identity_key.hex())
            return
        if known == identity_key:
            return
        await self.note_change(username, identity_key)
        raise IdentityKeyChanged(changed_warning(username, known, identity_key), username)

    async def trust(self, username: str) -> bytes:
        """Accept the changed key of `username`; returns it."""
        changed = await self.changed_key(username)
        if changed is None:
            raise ChatError(f"the identity key of {username} has not changed: there is nothing to accept")
        store = self._context.store
        await store.set_setting(SETTING_CONTACT + username, changed.hex())
        await store.set_setting(SETTING_CHANGED + username, None)
        return changed
