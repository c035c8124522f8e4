"""Leave proposals this client received that no commit has taken yet, per group, kept in the local store.

The vault keeps the proposals themselves, and every commit it builds carries them (OpenMLS commits all pending
proposals), so the member set a committer tells the node must leave their members out; a restart must not forget
them, or the node's member set and the group's would differ and the node would refuse later commits.
"""

from __future__ import annotations

import json

from quicnprotochat.client.state import ConversationStore

_SETTING = "leave_proposals:"
"""leave_proposals:<group id hex> -> JSON {"epoch": n, "members": [hex, ...]}."""


class LeaveProposals:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def _load(self, group_id: bytes) -> tuple[int, tuple[bytes, ...]] | None:
        raw = await self._store.get_setting(_SETTING + group_id.hex())
        return None if raw is None else _decode(raw)

    async def record(self, group_id: bytes, epoch: int, members: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """Members asked to leave at `epoch`; returns everyone who asked at that epoch so far."""
        known = await self._load(group_id)
        merged = list(known[1]) if known is not None and known[0] == epoch else []
        merged += [key for key in members if key not in merged]
        value = json.dumps({"epoch": epoch, "members": [key.hex() for key in merged]})
        await self._store.set_setting(_SETTING + group_id.hex(), value)
        return tuple(merged)

    async def at(self, group_id: bytes, epoch: int) -> tuple[bytes, ...]:
        """Who asked to leave at `epoch` (proposals of an older epoch are void)."""
        known = await self._load(group_id)
        return known[1] if known is not None and known[0] == epoch else ()

    async def settle(self, group_id: bytes) -> tuple[bytes, ...]:
        """A commit moved the group's epoch: its proposals were committed or are void. Returns who had asked."""
        known = await self._load(group_id)
        if known is None:
            return ()
        await self._store.set_setting(_SETTING + group_id.hex(), None)
        return known[1]

    async def waiting(self) -> list[tuple[bytes, int, tuple[bytes, ...]]]:
        """(group id, epoch, members) of every group with proposals waiting for a commit."""
        return [
            (bytes.fromhex(key.removeprefix(_SETTING)), *_decode(raw))
            for key, raw in (await self._store.settings()).items()
            if key.startswith(_SETTING)
        ]


def _decode(raw: str) -> tuple[int, tuple[bytes, ...]]:
    record = json.loads(raw)
    return int(record["epoch"]), tuple(bytes.fromhex(key) for key in record["members"])
