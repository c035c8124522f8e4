"""A hostile (or faulty) member, made of real parts: a real commit with its ciphertext corrupted, which the node
accepts (it cannot judge MLS content) and no other member can process."""

from __future__ import annotations

from quicnprotochat.client.chat import ChatClient
from quicnprotochat.client.chat.delivery import seal_for
from quicnprotochat.client.chat.framing import MlsFrame
from quicnprotochat.client.node_client import CommitResult, Delivery


async def submit_corrupt_commit(member: ChatClient, conversation: str) -> CommitResult:
    """`member` builds a key-update commit in `conversation`, flips a byte of its ciphertext (the clear header stays
    readable), drops its own copy and gets the node to accept it, delivered to every other member."""
    group_id = (await member.conversation(conversation)).group_id
    assert group_id is not None
    vault = member.vault
    epoch = vault.epoch(group_id)
    members = vault.members(group_id)
    commit = bytearray(vault.self_update(group_id))
    commit[-20] ^= 0xFF
    vault.clear_pending_commit(group_id)
    frame = MlsFrame(bytes(commit), sender=member.identity_key).encode()
    deliveries = []
    for key in members:
        if key != member.identity_key:
            hybrid = await member.node.fetch_hybrid_key(key)
            assert hybrid is not None
            deliveries.append(Delivery(key, seal_for(hybrid, key, frame, b"")))
    return await member.node.submit_commit(group_id, epoch, bytes(commit), deliveries, [], members)
