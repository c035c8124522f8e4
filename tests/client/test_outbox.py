"""The outbox: messages are stored pending first and sent in order, once, whatever happens to the node or the
client in between; what the node refuses is shown as failed with its reason. Real nodes, real processes, real
terminals (tmux)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from quicnprotochat.client.chat import JoinedConversation, MessageStateChanged, MessageTooLarge
from quicnprotochat.client.chat.outbox import idempotency_key
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory, RestartableNode
from tests.client.terminal import QPC, Tmux, client_env, env_for, qpc
from tests.conftest import loopback_config, node_address

BROKEN = ("Traceback", "Press ENTER", "Unhandled exception", "never retrieved")


def lines_with(screen: str, text: str) -> list[str]:
    return [line for line in screen.splitlines() if text in line]


async def test_two_repls_type_through_a_node_outage(restartable: RestartableNode, tmp_path: Path, tmux: Tmux) -> None:
    node = restartable.node
    assert node is not None
    base = client_env(
        tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint, TERM="xterm"
    )
    await tmux.start("alice", [*QPC, "repl", "--register"], env_for(base, "alice"))
    await tmux.start("bob", [*QPC, "repl", "--register"], env_for(base, "bob"))
    await tmux.wait_for("alice", "logged in as alice")
    await tmux.wait_for("bob", "logged in as bob")
    await tmux.line("alice", "/dm @bob")
    await tmux.wait_for("alice", "now in @bob")
    await tmux.line("alice", "before the outage")
    await tmux.wait_for("alice", "me: before the outage (sent)")
    await tmux.wait_for("bob", "alice: before the outage")
    await tmux.wait_for("alice", "* bob read: before the outage")  # bob's screen showed it: a read receipt

    await restartable.stop()
    stopped = time.monotonic()
    ours = {"alice": [f"alice during {i}" for i in range(3)], "bob": [f"bob during {i}" for i in range(3)]}
    for i in range(3):
        for name in ("alice", "bob"):
            await tmux.line(name, ours[name][i])
            await tmux.wait_for(name, f"me: {ours[name][i]} (pending)")
    for name in ("alice", "bob"):
        screen = await tmux.wait_for(name, "* disconnected, retrying in ")
        assert len(lines_with(screen, "disconnected, retrying")) == 1, screen
    await asyncio.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    await restartable.start()

    peers = {"alice": "bob", "bob": "alice"}
    for name, peer in peers.items():
        for text in ours[name]:
            await tmux.wait_for(name, f"me: {text} (sent)", timeout=30)
        for text in ours[peer]:
            await tmux.wait_for(name, f"{peer}: {text}", timeout=30)
    await asyncio.sleep(1.0)  # anything delivered twice would show by now
    for name, peer in peers.items():
        screen = await tmux.screen(name)
        assert not [marker for marker in BROKEN if marker in screen], screen
        assert len(lines_with(screen, "* connected again")) == 1, screen
        received = [line.split(f"{peer}: ", 1)[1].strip() for line in lines_with(screen, f"] {peer}: ")]
        assert received == (["before the outage"] if peer == "alice" else []) + ours[peer], screen
    # bob's history says the same: each line once, in the order written, his own marked sent.
    # Each side's REPL showed the other's messages, so read receipts came back and are shown.
    for text in ours["alice"]:
        await tmux.wait_for("alice", f"* bob read: {text}")
    for text in ours["bob"]:
        await tmux.wait_for("bob", f"* alice read: {text}")
    # The whole listing, up to the prompt that comes back after it: its last line is alice's (hers came in after
    # bob's own), so a listing read as soon as bob's last line shows can still lack her last ones.
    output = await tmux.output_of("bob", "/history", "[@alice] >")
    history = [line.split("] ", 1)[1] for line in output.splitlines() if "] " in line]
    assert [line for line in history if line.startswith("alice: ")] == [
        "alice: before the outage",
        *(f"alice: {text}" for text in ours["alice"]),
    ]
    assert [line for line in history if line.startswith("me: ")] == [f"me: {text} (read)" for text in ours["bob"]]


async def test_sigkilled_client_sends_its_pending_messages_after_restart(
    restartable: RestartableNode, tmp_path: Path
) -> None:
    node = restartable.node
    assert node is not None
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice, bob = env_for(base, "alice"), env_for(base, "bob")
    for env in (alice, bob):
        assert (await qpc("register", env=env)).returncode == 0
    assert (await qpc("send", "@bob", "before", env=alice)).returncode == 0
    # bob follows along through the outage (one status line each way on stderr, never a traceback).
    follower = await asyncio.create_subprocess_exec(
        *QPC, "recv", "--follow", "--json", env=bob, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert follower.stdout is not None and follower.stderr is not None
    first = json.loads(await asyncio.wait_for(follower.stdout.readline(), 30))
    assert first["body"] == "before"

    repl = await asyncio.create_subprocess_exec(
        *QPC, "repl", env=alice, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert repl.stdin is not None and repl.stdout is not None
    repl.stdin.write(b"/switch @bob\n")
    await repl.stdin.drain()
    while b"now in @bob" not in await asyncio.wait_for(repl.stdout.readline(), 30):
        pass
    await restartable.stop()
    pending = [f"pending {i}" for i in range(3)]
    for text in pending:
        repl.stdin.write(text.encode() + b"\n")
        await repl.stdin.drain()
        while f"me: {text} (pending)".encode() not in await asyncio.wait_for(repl.stdout.readline(), 30):
            pass
    repl.send_signal(signal.SIGKILL)
    await repl.wait()

    await restartable.start()
    flushed = await qpc("recv", env=alice)  # any later run sends what is pending first
    assert flushed.returncode == 0, flushed.stderr
    assert flushed.stderr.count("(sent)") == 3, flushed.stderr
    followed = [json.loads(await asyncio.wait_for(follower.stdout.readline(), 30))["body"] for _ in pending]
    assert followed == pending
    await asyncio.sleep(1.0)  # a second copy would show by now
    follower.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(follower.wait(), 20) == 0
    rest, errors = await follower.stdout.read(), (await follower.stderr.read()).decode()
    assert rest == b"", rest
    assert errors.count("disconnected, retrying in") == 1 and errors.count("connected again") == 1, errors
    assert "Traceback" not in errors and "never retrieved" not in errors, errors
    history = await qpc("history", "@bob", "--json", env=alice)
    states = [(r["body"], r["state"]) for r in map(json.loads, history.stdout.splitlines())]
    assert states == [("before", "sent"), *((text, "sent") for text in pending)]


async def test_a_copy_the_node_already_took_is_not_shown_twice(
    restartable: RestartableNode, open_chat: ChatFactory
) -> None:
    node = restartable.node
    assert node is not None
    address = node_address(node, "quic")
    alice, alice_log = await open_chat(address, "alice", connect_timeout=2.0)
    bob, bob_log = await open_chat(address, "bob")
    dm = await alice.dm("bob")
    assert (await alice.send(dm, "first")).state == "sent"
    await bob_log.message("first")
    await restartable.stop()
    kept = await alice.send(dm, "only once")
    assert kept.state == "pending"
    (copy,) = await alice.store.pending_copies()
    await restartable.start()
    # What a connection lost after the node stored the copy but before its answer leaves behind: the node has
    # the envelope, the outbox still holds it and sends the same bytes, with the same idempotency key, again.
    first_seq = await alice.node.enqueue(
        copy.recipient_key, copy.envelope, copy.channel_id, idempotency_key=idempotency_key(copy)
    )
    sent = await alice_log.wait_for(MessageStateChanged, lambda e: e.message.id == kept.id, timeout=20)
    assert sent.message.state == "sent" and sent.message.server_seq == first_seq  # the node's first answer
    await bob_log.message("only once", timeout=20)
    await asyncio.sleep(1.0)
    assert bob_log.bodies() == ["first", "only once"]
    assert [m.body for m in await bob.history("@alice")] == ["first", "only once"]
    assert not await alice.store.pending_copies()


async def test_refused_and_oversized_sends(tmp_path: Path, open_chat: ChatFactory) -> None:
    node = Node(loopback_config(tmp_path / "node", max_inbox_depth=2, max_payload_bytes=64 * 1024))
    await node.start()
    try:
        alice, alice_log = await open_chat(node, "alice")
        bob, _bob_log = await open_chat(node, "bob", start=False)  # bob is offline: his inbox fills
        dm = await alice.dm("bob")
        assert (await alice.send(dm, "one")).state == "sent"
        assert (await alice.send(dm, "two")).state == "sent"
        refused = await alice.send(dm, "three")
        assert refused.state == "failed" and refused.server_seq is None
        assert refused.failure is not None and refused.failure.startswith("bob: ") and "inbox" in refused.failure
        assert "resource_exhausted" not in refused.failure
        event = await alice_log.wait_for(MessageStateChanged, lambda e: e.message.id == refused.id)
        assert event.message.state == "failed"
        states = [(m.body, m.state) for m in await alice.history(dm)]
        assert states == [("one", "sent"), ("two", "sent"), ("three", "failed")]
        assert not await alice.store.pending_copies()

        with pytest.raises(MessageTooLarge, match=r"too large: .* at most 64\.0 KiB per message"):
            await alice.send(dm, "x" * 70_000)
        assert len(await alice.history(dm)) == 3

        base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
        carol = env_for(base, "carol")
        assert (await qpc("register", env=carol)).returncode == 0
        await bob.sync()  # bob joins alice's DM; his DM inbox stays full
        failed = await qpc("send", "@alice", "fine", env=carol)
        assert failed.returncode == 0, failed.stdout + failed.stderr
        assert failed.stdout.startswith("sent to @alice (seq ")
        for i in range(2):
            assert (await qpc("send", "@bob", f"to bob {i}", env=carol)).returncode == 0
        full = await qpc("send", "@bob", "one too many", env=carol)
        assert full.returncode == 1 and full.stdout.startswith("failed: not sent to @bob: bob: "), full.stdout
        big = tmp_path / "big.txt"
        big.write_text("y" * 100_000)
        oversized = await qpc("send", "@bob", "--file", str(big), env=carol)
        assert oversized.returncode == 1 and "the message is too large" in oversized.stderr
        history = await qpc("history", "@bob", "--json", env=carol)
        states = [(r["body"], r["state"]) for r in map(json.loads, history.stdout.splitlines())]
        assert states == [("to bob 0", "sent"), ("to bob 1", "sent"), ("one too many", "failed")]
    finally:
        await node.stop()


async def test_sends_that_do_not_wait_go_out_in_order_in_the_background(node: Node, open_chat: ChatFactory) -> None:
    alice, alice_log = await open_chat(node, "alice")
    _bob, bob_log = await open_chat(node, "bob")
    await alice.dm("bob")
    await bob_log.wait_for(JoinedConversation)
    queued = [await alice.send("bob", f"not waiting {i}", wait=False) for i in range(6)]
    assert {m.state for m in queued} == {"pending"}  # stored; the outbox sends them
    for message in queued:
        changed = await alice_log.settled(message)
        assert (changed.state, changed.route) == ("sent", "node")
        await bob_log.message(message.body)
    assert bob_log.bodies() == [m.body for m in queued]
    assert await alice.flush_outbox()
