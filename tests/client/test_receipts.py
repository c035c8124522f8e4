"""Delivery and read receipts between members: MLS application messages of their own kind, sent to the
message's sender only, off with a setting. Real node, real clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from quicnprotochat.client.chat import MessageReceived, ReceiptReceived
from quicnprotochat.client.chat.framing import FrameError, ReceiptContent, decode_content
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory
from tests.client.terminal import client_env, env_for, qpc
from tests.conftest import node_address


def test_receipt_framing() -> None:
    receipt = ReceiptContent("read", (b"a" * 32, b"b" * 32))
    assert decode_content(receipt.encode()) == receipt
    with pytest.raises(FrameError, match="references of 32 bytes"):
        decode_content(ReceiptContent("read", (b"a" * 31,)).encode())


async def test_receipts_come_back_to_the_sender_only(node: Node, open_chat: ChatFactory) -> None:
    alice, alice_log = await open_chat(node, "alice")
    bob, bob_log = await open_chat(node, "bob")
    carol, carol_log = await open_chat(node, "carol", receipts=False)

    dm = await alice.dm("bob")
    hello = await alice.send(dm, "hello bob")
    await bob_log.message("hello bob")
    delivered = await alice_log.wait_for(ReceiptReceived, lambda e: e.message.id == hello.id)
    assert (delivered.kind, delivered.by, delivered.message.receipt) == ("delivered", "bob", "delivered")
    await bob.mark_read("@alice")
    read = await alice_log.wait_for(ReceiptReceived, lambda e: e.kind == "read")
    assert read.message.id == hello.id and read.by == "bob"
    assert [(m.body, m.receipt) for m in await alice.history(dm)] == [("hello bob", "read")]

    # In a group: each member's receipts go to the sender; carol has them off and sends none.
    group = await alice.create_group("team")
    await alice.invite(group, "bob")
    await alice.invite(group, "carol")
    team = await alice.send(group, "hello team")
    await bob_log.message("hello team")
    await carol_log.message("hello team")
    await bob.mark_read("team")
    await carol.mark_read("team")
    await alice_log.wait_for(ReceiptReceived, lambda e: e.message.id == team.id and e.kind == "read")
    await asyncio.sleep(1.0)
    about_team = [e for e in alice_log.events if isinstance(e, ReceiptReceived) and e.message.id == team.id]
    assert {e.by for e in about_team} == {"bob"}
    # Receipts are not messages, and nobody but the sender gets them.
    for log in (bob_log, carol_log):
        assert not [e for e in log.events if isinstance(e, ReceiptReceived)]
        assert all(e.message.body.startswith("hello") for e in log.events if isinstance(e, MessageReceived))


async def test_qpc_recv_sends_receipts_unless_off(node: Node, tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice, bob, carol = env_for(base, "alice"), env_for(base, "bob"), env_for(base, "carol", state_password=None)
    for env in (alice, bob, carol):
        assert (await qpc("register", env=env)).returncode == 0
    assert (await qpc("send", "@bob", "read me", env=alice)).returncode == 0
    assert (await qpc("send", "@carol", "read me too", env=alice)).returncode == 0
    assert (await qpc("recv", env=bob)).returncode == 0
    assert (await qpc("recv", "--no-receipts", env=carol)).returncode == 0
    assert (await qpc("recv", env=alice)).returncode == 0  # takes the receipts in
    receipts = {}
    for peer in ("@bob", "@carol"):
        history = await qpc("history", peer, "--json", env=alice)
        (record,) = map(json.loads, history.stdout.splitlines())
        receipts[peer] = record["receipt"]
    assert receipts == {"@bob": "read", "@carol": None}
