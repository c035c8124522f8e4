"""A bot's coffer: the secrets its node operator provisioned for its key (`qpc-server coffer load`).

The node answers `fetchCoffer` with this session's own shard only, sealed in the hybrid envelope to our published
hybrid key; it is opened here with the vault's hybrid key and decoded with each value's type (str, int, float,
bool, datetime, date, time). Nothing is cached: each call asks the node, so a reloaded coffer is seen at once.
"""

from __future__ import annotations

from quicnprotochat.common.coffer_shard import CofferShardError, CofferValue, coffer_info, decode_shard
from quicnprotochat.native import NativeError

from .context import ChatContext
from .errors import ChatError


class CofferUnreadable(ChatError):
    """The node's answer is not a shard sealed to us (another key, tampered with, or not a shard)."""


async def read_coffer(context: ChatContext) -> dict[str, CofferValue]:
    sealed = await context.guard(context.node.fetch_coffer())
    try:
        opened = context.vault.open_envelope(sealed, coffer_info(context.identity_key))
    except NativeError:
        raise CofferUnreadable("the node's coffer answer does not open with this client's hybrid key") from None
    try:
        return decode_shard(opened)
    except CofferShardError as error:
        raise CofferUnreadable(f"the node's coffer answer is not a shard: {error}") from None
