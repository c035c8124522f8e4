"""The coffer: a bot reads the secrets its operator provisioned for it (`qpc-server coffer load`).

A caller gets the shard of its own session's identity key, and nothing else: no parameter names a key. The shard
(CBOR) is opened from its sealed record and sealed again in our hybrid envelope to the caller's published hybrid
key inside the native module, so that the clear shard never reaches Python. The node's logs and errors name the
bot's key at most, never a secret or its name.
"""

from __future__ import annotations

import logging

from quicnprotochat.common.errors import FailedPrecondition, NotFound
from quicnprotochat.native import RootKey
from quicnprotochat.server.sealed_coffer import shard_envelope
from quicnprotochat.server.sealed_secrets import SealedDataError
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.sessions import Caller
from quicnprotochat.server.store import CofferStore, DirectoryStore

log = logging.getLogger("quicnprotochat.server.coffer")


class CofferService:
    def __init__(self, shards: CofferStore, directory: DirectoryStore, root: RootKey | None) -> None:
        self._shards = shards
        self._directory = directory
        self._root = root

    async def fetch(self, caller: Caller) -> bytes:
        key = caller.identity_key
        with store_errors():
            shard = await self._shards.get_coffer_shard(key)
        if shard is None:
            raise NotFound("no coffer shard for your key on this node (the operator loads them: qpc-server coffer)")
        with store_errors():
            hybrid_key = await self._directory.get_hybrid_key(key)
        if hybrid_key is None:
            raise FailedPrecondition("publish your hybrid key first (uploadHybridKey): your shard is sealed to it")
        if self._root is None:
            raise FailedPrecondition("this node runs without its root key and cannot open coffer shards")
        try:
            return shard_envelope(self._root, shard, hybrid_key)
        except SealedDataError as error:
            log.error("cannot serve a coffer shard: %s", error)
            raise FailedPrecondition("the node cannot open your coffer shard (its log says why)") from None
