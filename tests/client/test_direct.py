"""Direct delivery over iroh with the node as fallback: real nodes on loopback, real iroh endpoints (relays off,
loopback only), real clients, and real processes where one must die. Every message must arrive, stored once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import iroh
import pytest

from quicnprotochat.client.chat import ChatClient, JoinedConversation, direct, direct_wire
from quicnprotochat.client.chat.delivery import seal_for
from quicnprotochat.client.chat.direct import MAX_INCOMING_CONNECTIONS
from quicnprotochat.client.chat.framing import MlsFrame, TextContent
from quicnprotochat.client.chat.p2p_endpoint import P2PEndpoint
from quicnprotochat.client.state import Conversation, Message
from quicnprotochat.common import endpoint_record
from quicnprotochat.native import verify_ed25519
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory, EventLog
from tests.client.terminal import QPC, Tmux, client_env, env_for
from tests.conftest import node_address

P2P: dict[str, Any] = {"p2p": True, "p2p_bind": ("127.0.0.1:0",), "p2p_timeout": 10.0}
"""Direct delivery on loopback; a timeout that a loaded test machine never reaches on a path that works."""
EAGER: dict[str, Any] = {**P2P, "p2p_backoff_s": 0.0, "p2p_resolve_every_s": 0.0}
"""A sender that looks the record up again before every message and never waits after a failure."""
FAIL_FAST = 1.5
"""The direct timeout where a test expects the direct path to fail by timing out (nothing answers)."""
PEER = Path(__file__).with_name("p2p_peer.py")


async def dm_pair(node: Node, open_chat: ChatFactory, **options: Any) -> tuple[ChatClient, ChatClient, EventLog]:
    """alice and bob with a DM between them (bob joined it); `options` go to both configs."""
    alice, _ = await open_chat(node, "alice", **options)
    bob, bob_log = await open_chat(node, "bob", **options)
    await alice.dm("bob")
    await bob_log.wait_for(JoinedConversation)
    return alice, bob, bob_log


async def inbox_last_seq(node: Node, recipient: bytes, channel: bytes) -> int:
    """The last seq the node ever gave in this inbox (0: nothing ever went through the node)."""
    assert node.state is not None
    return (await node.state.store.inbox_stats(recipient, channel)).last_seq


def channel_of(conversation: Conversation) -> bytes:
    assert conversation.channel_id is not None
    return conversation.channel_id


async def stored(chat: ChatClient, body: str) -> list[Message]:
    found: list[Message] = []
    for summary in await chat.conversations():
        found += [m for m in await chat.history(summary.conversation, 1000) if m.body == body]
    return found


async def test_two_online_clients_deliver_directly(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **P2P)
    assert alice.p2p and bob.p2p
    sent = await alice.send("bob", "straight to you")
    assert sent.state == "sent" and sent.route == "direct" and sent.server_seq is None
    received = await bob_log.message("straight to you")
    assert received.message.route == "direct"
    conversation = await alice.conversation("bob")
    assert await inbox_last_seq(node, bob.identity_key, channel_of(conversation)) == 0  # the node never had it
    assert len(await stored(bob, "straight to you")) == 1
    # And the other way round, several in a row.
    for i in range(5):
        await bob.send("alice", f"back {i}")
    assert [m.route for m in await stored(alice, "back 4")] == ["direct"]


async def test_a_peer_record_is_decoded_and_verified_once(
    node: Node, open_chat: ChatFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **P2P)
    verified: list[bytes] = []

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        verified.append(public_key)
        return verify_ed25519(public_key, message, signature)

    monkeypatch.setattr(direct, "verify_ed25519", counting)
    for i in range(4):
        assert (await alice.send("bob", f"record checked once {i}")).route == "direct"
    await bob_log.message("record checked once 3")
    # One resolve, one check of bob's signature: the cached record is not checked again on every send.
    assert verified == [bob.identity_key]


async def test_p2p_off_takes_the_record_down_and_uses_the_node(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **EAGER)
    assert await alice.node.resolve_endpoint(bob.identity_key) is not None
    await bob.set_p2p(False)
    assert not bob.p2p
    assert await alice.node.resolve_endpoint(bob.identity_key) is None
    sent = await alice.send("bob", "via the node")
    assert sent.state == "sent" and sent.route == "node" and sent.server_seq is not None
    assert (await bob_log.message("via the node")).message.route == "node"
    assert len(await stored(bob, "via the node")) == 1
    await bob.set_p2p(True)
    assert (await alice.send("bob", "direct again")).route == "direct"
    assert (await bob_log.message("direct again")).message.route == "direct"


async def test_forged_and_wrong_key_records_are_never_used(node: Node, open_chat: ChatFactory) -> None:
    # The wrong-key record names an endpoint nobody holds: only the timeout ends that attempt.
    alice, bob, bob_log = await dm_pair(node, open_chat, **{**EAGER, "p2p_timeout": FAIL_FAST})
    mallory, mallory_log = await open_chat(node, "mallory", **P2P)
    assert node.state is not None
    conversation = await alice.conversation("bob")
    expires = int(time.time()) + 300
    mallory_addresses = mallory.p2p_addresses()
    # A record for bob signed by mallory (the node refuses to store it; a compromised node could hand it out
    # anyway: written straight into its store).
    forged = endpoint_record.sign_record(
        mallory.vault.sign, bob.identity_key, os.urandom(32), mallory_addresses, None, expires
    )
    # bob's own signature over an iroh key that is not the one at the address (mallory's endpoint answers there):
    # the handshake cannot complete, and the client refuses the peer.
    wrong_key = endpoint_record.sign_record(
        bob.vault.sign, bob.identity_key, os.urandom(32), mallory_addresses, None, expires
    )
    for n, record in enumerate((forged, wrong_key)):
        await node.state.store.put_endpoint(bob.identity_key, endpoint_record.encode(record), float(expires))
        body = f"not to mallory {n}"
        sent = await alice.send("bob", body)
        assert sent.state == "sent" and sent.route == "node", record
        assert (await bob_log.message(body)).message.route == "node"
        assert len(await stored(bob, body)) == 1
    assert await inbox_last_seq(node, bob.identity_key, channel_of(conversation)) == 2
    assert mallory_log.bodies() == []


class PeerProcess:
    """A client process with direct delivery on (`p2p_peer.py`); its JSON lines are collected."""

    def __init__(self, node: Node, name: str, state_dir: Path, *flags: str) -> None:
        self.args = [str(PEER), node_address(node, "quic"), node.fingerprint, name, str(state_dir), *flags]
        self.lines: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda line: "ready" in line)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(json.loads(raw))

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; lines so far: {self.lines}")
            await asyncio.sleep(0.02)

    async def exited(self, timeout: float = 20) -> int:
        assert self.process is not None and self._reader is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
        await self.exited()

    def bodies(self) -> list[str]:
        return [line["body"] for line in self.lines if "body" in line]


async def bob_process_with_a_dm(
    node: Node, open_chat: ChatFactory, tmp_path: Path, *flags: str
) -> tuple[ChatClient, PeerProcess]:
    bob = PeerProcess(node, "bob", tmp_path / "state-bob", *flags)
    await bob.start()
    # bob is killed in these tests: a dead process answers nothing, so the timeout ends alice's attempt.
    alice, _ = await open_chat(node, "alice", **{**P2P, "p2p_timeout": FAIL_FAST})
    await alice.dm("bob")
    await bob.wait_for(lambda line: "joined" in line)
    return alice, bob


async def bob_history(open_chat: ChatFactory, node: Node, body: str) -> list[Message]:
    """bob's stored copies of `body`, read from his state once his process is gone."""
    bob, _ = await open_chat(node, "bob", start=False, state_password=None)
    return await stored(bob, body)


async def test_an_offline_peer_with_a_stale_record_gets_it_through_the_node_once(
    node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    alice, bob = await bob_process_with_a_dm(node, open_chat, tmp_path)
    await bob.kill()  # its record stays on the node until it expires: stale
    bob_key = (await alice.resolve_user("bob"))[1]
    assert await alice.node.resolve_endpoint(bob_key) is not None
    sent = await alice.send("bob", "while you were away")
    assert sent.state == "sent" and sent.route == "node"
    again = PeerProcess(node, "bob", tmp_path / "state-bob")
    await again.start()
    line = await again.wait_for(lambda line: line.get("body") == "while you were away")
    assert line["route"] == "node"
    await again.kill()
    assert [m.route for m in await bob_history(open_chat, node, "while you were away")] == ["node"]


@pytest.mark.parametrize("flag", ["--die-before-storing", "--die-before-answering"])
async def test_a_receiver_killed_before_answering_gets_it_once_through_the_node(
    node: Node, open_chat: ChatFactory, tmp_path: Path, flag: str
) -> None:
    alice, bob = await bob_process_with_a_dm(node, open_chat, tmp_path, flag)
    sent = await alice.send("bob", "exactly once")
    assert await bob.exited() != 0  # it died inside the direct receive path
    # The direct attempt got no answer: the same envelope went to the node.
    assert sent.state == "sent" and sent.route == "node"
    again = PeerProcess(node, "bob", tmp_path / "state-bob")
    await again.start()
    if flag == "--die-before-storing":
        await again.wait_for(lambda line: line.get("body") == "exactly once")
    else:
        # Stored (and shown) before the kill: the node's copy is the same envelope, recognised and acked.
        assert bob.bodies() == ["exactly once"]
        conversation = await alice.conversation("bob")
        bob_key = (await alice.resolve_user("bob"))[1]
        assert node.state is not None
        deadline = time.monotonic() + 20
        while (await node.state.store.inbox_stats(bob_key, channel_of(conversation))).depth:
            assert time.monotonic() < deadline, "bob never acked the node's copy"
            await asyncio.sleep(0.05)
    await again.kill()
    assert again.bodies().count("exactly once") + bob.bodies().count("exactly once") == 1
    assert len(await bob_history(open_chat, node, "exactly once")) == 1


async def test_group_commits_never_go_direct(node: Node, open_chat: ChatFactory) -> None:
    alice, _ = await open_chat(node, "alice", **P2P)
    bob, bob_log = await open_chat(node, "bob", **P2P)
    carol, carol_log = await open_chat(node, "carol", **P2P)
    group = await alice.create_group("team")
    await alice.invite(group, "bob")
    await alice.invite(group, "carol")
    await bob_log.wait_for(JoinedConversation)
    await carol_log.wait_for(JoinedConversation)
    sent = await alice.send("team", "hello team")
    assert sent.route == "direct"
    await bob_log.message("hello team")
    before = await inbox_last_seq(node, bob.identity_key, b"")
    for round_ in range(3):
        # A commit, and a message at once in the epoch it starts: the commit goes through the node's sequencer
        # (one more seq in bob's default inbox each time); a message bob cannot take yet (his epoch is behind)
        # follows it through the node, in order, and nothing breaks.
        await alice.update_keys("team")
        await alice.send("team", f"after commit {round_}")
        await bob_log.message(f"after commit {round_}")
        await carol_log.message(f"after commit {round_}")
    # bob's default inbox got exactly the three commits and the messages that took the node: no commit went
    # direct (it would be missing here), and nothing came twice.
    via_node = 0
    for i in range(3):
        for chat in (bob, carol):
            copies = await stored(chat, f"after commit {i}")
            assert len(copies) == 1
            if chat is bob:
                via_node += copies[0].route == "node"
    assert await inbox_last_seq(node, bob.identity_key, b"") - before == 3 + via_node


async def test_two_repls_show_which_way_each_message_went(node: Node, tmp_path: Path, tmux: Tmux) -> None:
    base = client_env(
        tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint, TERM="xterm"
    )
    p2p = ["--p2p", "--p2p-bind", "127.0.0.1:0", "--p2p-timeout", "10"]
    await tmux.start("alice", [*QPC, "repl", "--register", *p2p], env_for(base, "alice"))
    await tmux.start("bob", [*QPC, "repl", "--register", *p2p], env_for(base, "bob"))
    await tmux.wait_for("alice", "logged in as alice")
    await tmux.wait_for("bob", "logged in as bob")
    await tmux.line("alice", "/dm @bob")
    await tmux.wait_for("alice", "now in @bob")
    await tmux.wait_for("bob", "now in @alice")
    await tmux.line("alice", "hello over iroh")
    await tmux.wait_for("alice", "me: hello over iroh (sent, direct)")
    await tmux.wait_for("bob", "alice: hello over iroh (direct)")
    await tmux.line("alice", "/p2p")
    await tmux.wait_for("alice", "direct delivery: on - published to logged-in users: 127.0.0.1:")
    await tmux.wait_for("alice", "last message in @bob: direct")
    await tmux.line("bob", "/p2p off")
    await tmux.wait_for("bob", "direct delivery: off")
    await tmux.line("bob", "back through the node")
    await tmux.wait_for("bob", "me: back through the node (sent)")
    await tmux.wait_for("alice", "bob: back through the node")
    await tmux.line("alice", "/list")
    screen = await tmux.wait_for("alice", "last: through the node")
    assert "Traceback" not in screen


async def test_the_record_is_published_again_while_the_client_runs(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, _ = await dm_pair(node, open_chat, **P2P, p2p_record_ttl=3)  # published again every second
    first = await alice.node.resolve_endpoint(bob.identity_key)
    assert first is not None
    await asyncio.sleep(3.5)  # past the first record's expiry
    later = await alice.node.resolve_endpoint(bob.identity_key)
    assert later is not None
    assert endpoint_record.decode(later).expires_at > endpoint_record.decode(first).expires_at
    assert endpoint_record.decode(later).endpoint_id == endpoint_record.decode(first).endpoint_id


async def record_of(alice: ChatClient, bob: ChatClient) -> endpoint_record.EndpointRecord:
    """bob's published record, as alice resolves it."""
    data = await alice.node.resolve_endpoint(bob.identity_key)
    assert data is not None
    return endpoint_record.decode(data)


async def stranger_endpoint() -> iroh.Endpoint:
    """A bare iroh endpoint on loopback (no identity, no record): a stranger."""
    builder = iroh.EndpointBuilder()  # type: ignore[no-untyped-call]
    builder.apply_minimal()
    builder.relay_mode(iroh.RelayMode.disabled())
    builder.bind_addr("127.0.0.1:0")
    return await builder.bind()


def address_of(record: endpoint_record.EndpointRecord) -> iroh.EndpointAddr:
    return iroh.EndpointAddr(iroh.EndpointId.from_bytes(record.endpoint_id), None, list(record.addresses))


async def raw_request(record: endpoint_record.EndpointRecord, request: bytes) -> bytes | str:
    """One stream to the endpoint a record names, from a bare iroh endpoint: the answer, or how it failed."""
    endpoint, connection = await stranger_connection(record)
    try:
        return await ask(connection, request)
    except iroh.IrohError as error:
        return f"failed: {error.message()}"
    finally:
        await endpoint.close()


async def test_what_a_stranger_sends_directly_is_refused_and_nothing_breaks(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **P2P)
    record = await record_of(alice, bob)
    channel = channel_of(await alice.conversation("bob"))
    # Garbage in a valid frame, on bob's channel and on one he does not read: "not taken, use the node".
    assert await raw_request(record, direct_wire.encode_request(channel, b"\x01" + os.urandom(1200))) == b"\x01"
    assert await raw_request(record, direct_wire.encode_request(os.urandom(16), b"sealed")) == b"\x01"
    # Not a request at all, and one larger than the node's largest payload: the stream is reset.
    assert str(await raw_request(record, b"\x09junk")).startswith("failed")
    oversized = direct_wire.encode_request(channel, b"x" * (node.config.max_payload_bytes + 1))
    assert str(await raw_request(record, oversized)).startswith("failed")
    # bob still takes alice's messages directly, and stored none of the above.
    sent = await alice.send("bob", "still fine")
    assert sent.route == "direct"
    await bob_log.message("still fine")
    assert bob_log.bodies() == ["still fine"]


async def test_a_peer_holds_a_bounded_number_of_incoming_connections(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **EAGER)
    peer = address_of(await record_of(alice, bob))
    stranger = await stranger_endpoint()
    try:
        held = [
            await asyncio.wait_for(stranger.connect(peer, direct_wire.ALPN), 5) for _ in range(MAX_INCOMING_CONNECTIONS)
        ]
        with pytest.raises((iroh.IrohError, TimeoutError)):
            await asyncio.wait_for(stranger.connect(peer, direct_wire.ALPN), 3)
        # While a stranger holds every slot, alice's message still arrives, through the node.
        assert (await alice.send("bob", "slots taken")).route == "node"
        await bob_log.message("slots taken")
        for connection in held:
            connection.close(0, b"bye")
    finally:
        await stranger.close()
    await asyncio.sleep(0.5)  # bob notices the closed connections
    assert (await alice.send("bob", "slots free")).route == "direct"
    await bob_log.message("slots free")


# ── pipelined copies ─────────────────────────────────────────────────────────────────────────────────────────

IN_FLIGHT = 3
"""The sender's bound on unanswered copies to one peer in these tests."""


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


class HoldingPeer:
    """A bare iroh endpoint standing in for bob (bob signed the record that names it): it reads every request
    alice sends, in the order the streams come, lets her open as many streams as she likes, and answers
    "stored" only when the test says."""

    def __init__(self, endpoint: P2PEndpoint) -> None:
        self.endpoint = endpoint
        self.received: list[bytes] = []
        self.held: list[iroh.BiStream] = []
        self.most_held = 0
        self._task = asyncio.create_task(self._serve())

    @classmethod
    async def standing_in_for(cls, bob: ChatClient, node: Node) -> HoldingPeer:
        endpoint = await P2PEndpoint.bind("off", ["127.0.0.1:0"])
        expires = int(time.time()) + 300
        record = endpoint_record.sign_record(
            bob.vault.sign, bob.identity_key, endpoint.endpoint_id, endpoint.addresses(), None, expires
        )
        assert node.state is not None
        await node.state.store.put_endpoint(bob.identity_key, endpoint_record.encode(record), float(expires))
        return cls(endpoint)

    async def _serve(self) -> None:
        incoming = await self.endpoint.accept()
        assert incoming is not None
        connection = await (await incoming.accept()).connect()
        connection.set_max_concurrent_bi_streams(64)
        while True:
            stream = await connection.accept_bi()
            request = await stream.recv().read_to_end(1 << 20)
            self.received.append(direct_wire.decode_request(request)[1])
            self.held.append(stream)
            self.most_held = max(self.most_held, len(self.held))

    async def answer_oldest(self) -> None:
        send = self.held.pop(0).send()
        await send.write_all(direct_wire.STORED)
        await send.finish()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.endpoint.close()


@pytest.mark.parametrize("wait", [True, False], ids=["sends-under-way-together", "sends-that-do-not-wait"])
async def test_copies_to_one_peer_are_pipelined_up_to_the_bound(node: Node, open_chat: ChatFactory, wait: bool) -> None:
    count = 6
    alice, alice_log = await open_chat(node, "alice", **P2P, p2p_max_in_flight=IN_FLIGHT)
    bob, bob_log = await open_chat(node, "bob")
    await alice.dm("bob")
    await bob_log.wait_for(JoinedConversation)
    peer = await HoldingPeer.standing_in_for(bob, node)
    try:
        # A first message goes out alone and is held: the ones written meanwhile wait for it, then go together.
        first = asyncio.create_task(alice.send("bob", "first"))

        async def first_held() -> bool:
            return len(peer.held) == 1

        await eventually(first_held, "the first copy held")
        if wait:
            sends = [asyncio.create_task(alice.send("bob", f"pipelined {i}")) for i in range(count)]
        else:
            queued = [await alice.send("bob", f"pipelined {i}", wait=False) for i in range(count)]
            assert {m.state for m in queued} == {"pending"}

        async def all_written() -> bool:
            return len(await alice.store.pending_copies()) == count + 1

        await eventually(all_written, "every message written while the first copy is held")
        written = [copy.envelope for copy in await alice.store.pending_copies()]
        await peer.answer_oldest()
        assert (await first).route == "direct"
        for answered in range(count):
            expected = min(IN_FLIGHT, count - answered)

            async def in_flight(expected: int = expected) -> bool:
                return len(peer.held) == expected

            await eventually(in_flight, f"{expected} copies in flight")
            if answered == 0:
                await asyncio.sleep(0.3)  # room for a copy past the bound, if the sender sent one
                assert len(peer.held) == IN_FLIGHT
            await peer.answer_oldest()
        if wait:
            sent = await asyncio.gather(*sends)
        else:
            sent = [await alice_log.settled(m) for m in queued]
    finally:
        await peer.close()
    assert [(m.state, m.route) for m in sent] == [("sent", "direct")] * count
    assert peer.received == written  # each copy once, in the order the messages were written
    assert peer.most_held == IN_FLIGHT


async def test_pipelined_copies_are_stored_in_the_order_they_were_written(node: Node, open_chat: ChatFactory) -> None:
    count = 10
    alice, bob, bob_log = await dm_pair(node, open_chat, **P2P, p2p_max_in_flight=IN_FLIGHT)
    sent = await asyncio.gather(*(alice.send("bob", f"in order {i}") for i in range(count)))
    assert {(m.state, m.route) for m in sent} == {("sent", "direct")}
    written = [m.body for m in sorted(sent, key=lambda m: m.id)]
    for body in written:
        await bob_log.message(body)
    assert bob_log.bodies() == written
    for body in written:
        assert len(await stored(bob, body)) == 1


async def test_a_peer_killed_mid_pipeline_loses_nothing_and_shows_nothing_twice(
    node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    count = 8
    # bob holds the first copy until alice wrote every message, then stores two more and is SIGKILLed after
    # storing the third, before answering it: the copies after it are in flight on the connection.
    bob = PeerProcess(node, "bob", tmp_path / "state-bob", "--hold-first", "--die-after-storing", "3")
    await bob.start()
    alice, _ = await open_chat(node, "alice", **{**P2P, "p2p_timeout": 5.0, "p2p_max_in_flight": IN_FLIGHT + 1})
    await alice.dm("bob")
    await bob.wait_for(lambda line: "joined" in line)
    sends = [asyncio.create_task(alice.send("bob", f"through a kill {i}")) for i in range(count)]

    async def all_written() -> bool:
        return len(await alice.store.pending_copies()) == count

    await eventually(all_written, "every message written")
    await bob.wait_for(lambda line: "holding" in line)
    assert bob.process is not None
    bob.process.send_signal(signal.SIGUSR1)
    assert await bob.exited() != 0
    sent = sorted(await asyncio.gather(*sends), key=lambda m: m.id)
    written = [m.body for m in sent]
    # Answered: the first two. The third was stored but never answered, so it went through the node with all
    # the others, in order.
    assert [(m.state, m.route) for m in sent] == [("sent", "direct")] * 2 + [("sent", "node")] * (count - 2)
    assert bob.bodies() == written[:3]
    again = PeerProcess(node, "bob", tmp_path / "state-bob")
    await again.start()
    await again.wait_for(lambda line: line.get("body") == written[-1])
    # The node's copy of the third is the envelope bob stored already: recognised, not shown again.
    assert bob.bodies() + again.bodies() == written
    await again.kill()
    for body in written:
        assert len(await bob_history(open_chat, node, body)) == 1


async def sealed_message(alice: ChatClient, bob: ChatClient, text: str) -> tuple[bytes, bytes]:
    """(channel, envelope): a message from alice to bob in their DM, sealed as her outbox would send it."""
    conversation = await alice.conversation("bob")
    assert conversation.group_id is not None
    hybrid = await alice.node.fetch_hybrid_key(bob.identity_key)
    assert hybrid is not None
    content = TextContent(text, time.time()).encode()
    ciphertext = await asyncio.to_thread(alice.vault.encrypt, conversation.group_id, content)
    channel = channel_of(conversation)
    return channel, seal_for(hybrid, bob.identity_key, MlsFrame(ciphertext).encode(), channel)


async def stranger_connection(record: endpoint_record.EndpointRecord) -> tuple[iroh.Endpoint, iroh.Connection]:
    endpoint = await stranger_endpoint()
    return endpoint, await asyncio.wait_for(endpoint.connect(address_of(record), direct_wire.ALPN), 5)


async def ask(connection: iroh.Connection, request: bytes) -> bytes:
    stream = await connection.open_bi()
    send = stream.send()
    await send.write_all(request)
    await send.finish()
    return await asyncio.wait_for(stream.recv().read_to_end(16), 15)


async def test_after_a_refusal_nothing_more_is_taken_on_that_connection(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **P2P)
    record = await record_of(alice, bob)
    channel, envelope = await sealed_message(alice, bob, "behind a refused one")
    endpoint, connection = await stranger_connection(record)
    try:
        # Refused (it does not open), so it goes through the node; a message after it on the same connection must
        # not overtake it: refused too, without being handled.
        assert await ask(connection, direct_wire.encode_request(channel, b"\x01" + os.urandom(600))) == b"\x01"
        assert await ask(connection, direct_wire.encode_request(channel, envelope)) == b"\x01"
        assert bob_log.bodies() == []
        # On a fresh connection it is taken.
        second, fresh = await stranger_connection(record)
        try:
            assert await ask(fresh, direct_wire.encode_request(channel, envelope)) == direct_wire.STORED
        finally:
            await second.close()
        await bob_log.message("behind a refused one")
    finally:
        await endpoint.close()


async def test_a_connection_holds_a_bounded_number_of_requests(node: Node, open_chat: ChatFactory) -> None:
    alice, bob, bob_log = await dm_pair(node, open_chat, **P2P)
    endpoint, connection = await stranger_connection(await record_of(alice, bob))
    try:
        # Requests never finished: bob reads the first (up to his read timeout), holds the next ones, and resets
        # every stream past the bound (QUIC itself would grant this stranger 100 streams at first).
        streams = []
        for _ in range(direct_wire.MAX_IN_FLIGHT + 4):
            stream = await asyncio.wait_for(connection.open_bi(), 5)
            await stream.send().write_all(b"\x01\x00unfinished")
            streams.append(stream)
        for stream in streams[direct_wire.MAX_IN_FLIGHT :]:
            with pytest.raises(iroh.IrohError):
                await asyncio.wait_for(stream.recv().read_to_end(16), 15)
    finally:
        await endpoint.close()
    # bob still takes alice's messages directly.
    assert (await alice.send("bob", "after the stranger")).route == "direct"
    await bob_log.message("after the stranger")
    assert bob_log.bodies() == ["after the stranger"]


async def test_a_sender_at_the_most_in_flight_delivers_a_long_run_directly(
    node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    count = 3 * direct_wire.MAX_IN_FLIGHT
    # bob holds the first copy until alice wrote them all, so the rest go as one run with the most in flight; he is
    # slow to come back from writing each answer, so alice has it, and opens her next stream, before he is.
    bob = PeerProcess(node, "bob", tmp_path / "state-bob", "--hold-first", "--slow-answers", "20")
    await bob.start()
    alice, alice_log = await open_chat(node, "alice", **P2P, p2p_max_in_flight=direct_wire.MAX_IN_FLIGHT)
    await alice.dm("bob")
    await bob.wait_for(lambda line: "joined" in line)
    queued = [await alice.send("bob", f"a long run {i}", wait=False) for i in range(count)]
    await bob.wait_for(lambda line: "holding" in line)
    assert bob.process is not None
    bob.process.send_signal(signal.SIGUSR1)
    sent = [await alice_log.settled(message, timeout=30) for message in queued]
    await bob.kill()
    routes = [message.route for message in sent]
    assert routes == ["direct"] * count, f"{routes.count('node')} of {count} went through the node"
    assert bob.bodies() == [message.body for message in queued]
