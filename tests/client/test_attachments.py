"""Attachments: files encrypted with a fresh key, kept on the node as blobs, checked by the recipients. Real node
(its blob limit set low), real clients; the tampering is done in the node's own database file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from quicnprotochat.client.chat import ErrorEvent, FileReceived, MessageTooLarge
from quicnprotochat.common.errors import NotFound, ResourceExhausted
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory
from tests.client.terminal import client_env, env_for, qpc
from tests.conftest import loopback_config, node_address

MAX_BLOB = 1_200_000
LIMIT = MAX_BLOB - 16  # the AEAD tag


def named(name: str) -> Callable[[FileReceived], bool]:
    return lambda event: event.name == name


@pytest.fixture
async def blob_node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(loopback_config(tmp_path / "node", max_blob_bytes=MAX_BLOB, max_blob_bytes_per_identity=4 * MAX_BLOB))
    await node.start()
    yield node
    await node.stop()


async def test_files_arrive_intact_and_a_tampered_blob_is_refused(
    blob_node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    alice, _alice_log = await open_chat(blob_node, "alice")
    bob, bob_log = await open_chat(blob_node, "bob")
    dm = await alice.dm("bob")
    files = {"empty.bin": b"", "one-mib.bin": os.urandom(1 << 20), "limit.bin": os.urandom(LIMIT)}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        sent = await alice.send_file(dm, path)
        assert sent.state == "sent" and sent.body.startswith(f"[file] {name} (")
        got = await bob_log.wait_for(FileReceived, named(name), timeout=30)
        assert got.error is None and got.path is not None
        assert got.path.read_bytes() == data and got.path.parent == bob.state.dir.root / "files"
        assert got.path.stat().st_mode & 0o777 == 0o600

    too_big = tmp_path / "too-big.bin"
    too_big.write_bytes(b"x" * (LIMIT + 1))
    with pytest.raises(MessageTooLarge, match=f"at most 1.1 MiB \\({LIMIT} bytes\\)"):
        await alice.send_file(dm, too_big)

    # The node (or whoever can write its disk) changes a blob: bob refuses it.
    await bob.close()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the real content")
    await alice.send_file(dm, secret)
    with sqlite3.connect(blob_node.config.store_location, timeout=10) as db:
        changed = db.execute("UPDATE blobs SET data = ? WHERE size = ?", (b"\x00" * 32, 16 + 16)).rowcount
    assert changed == 1
    bob, bob_log = await open_chat(blob_node, "bob", password=None)
    refused = await bob_log.wait_for(FileReceived, lambda e: e.name == "secret.txt", timeout=30)
    assert refused.path is None and refused.error is not None and "refused the file 'secret.txt'" in refused.error
    assert [e for e in bob_log.events if isinstance(e, ErrorEvent) and "refused the file" in e.text]
    assert not [p for p in (bob.state.dir.root / "files").iterdir() if p.name.endswith("secret.txt")]


async def test_node_blob_limits(blob_node: Node, open_chat: ChatFactory, tmp_path: Path) -> None:
    alice, _log = await open_chat(blob_node, "alice", start=False)
    blob_id = await alice.node.put_blob(b"ciphertext")
    assert await alice.node.get_blob(blob_id) == b"ciphertext"
    with pytest.raises(NotFound):
        await alice.node.get_blob(b"\x01" * 32)
    with pytest.raises(ResourceExhausted, match=f"at most {MAX_BLOB} bytes"):
        await alice.node.put_blob(b"x" * (MAX_BLOB + 1))
    for n in range(3):
        await alice.node.put_blob(bytes([n]) * MAX_BLOB)
    with pytest.raises(ResourceExhausted, match="max_blob_bytes_per_identity"):
        await alice.node.put_blob(b"y" * MAX_BLOB)
    assert (await alice.node.server_info()).limits.max_blob_bytes == MAX_BLOB

    # qpc send --attach, with a text before it.
    base = client_env(
        tmp_path, QPC_SERVER=node_address(blob_node, "quic"), QPC_SERVER_FINGERPRINT=blob_node.fingerprint
    )
    carol = env_for(base, "carol")
    assert (await qpc("register", env=carol)).returncode == 0
    report = tmp_path / "report.txt"
    report.write_text("numbers")
    sent = await qpc("send", "@alice", "see the file", "--attach", str(report), env=carol)
    assert sent.returncode == 0, sent.stderr
    await alice.sync()
    assert [m.body for m in await alice.history("@carol")] == ["see the file", "[file] report.txt (7 bytes)"]
    assert (alice.state.dir.root / "files").is_dir()
