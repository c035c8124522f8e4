"""Keys people can check: safety numbers (the same on both sides) and a loud stop when the node gives a known
contact another identity key. Real node, real `qpc` processes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from quicnprotochat.client.chat.safety import safety_lines, safety_number
from tests.client.conftest import RestartableNode
from tests.client.terminal import client_env, env_for, one_line_error, qpc
from tests.conftest import node_address


def test_safety_number_is_symmetric_and_readable() -> None:
    a, b, c = bytes(range(32)), bytes(range(1, 33)), bytes(32)
    number = safety_number(a, b)
    assert number == safety_number(b, a) and number != safety_number(a, c)
    groups = number.split()
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert len(safety_lines(number)) == 3
    # Each key contributes its own half: the half of `a` is the same next to any other key.
    halves = {" ".join(groups[:6]), " ".join(groups[6:])}
    assert halves & set(" ".join(safety_number(a, c).split()[i : i + 6]) for i in (0, 6))


def number_in(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.startswith("    ")]


async def test_changed_identity_key_is_refused_until_trusted(restartable: RestartableNode, tmp_path: Path) -> None:
    node = restartable.node
    assert node is not None
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice, bob = env_for(base, "alice"), env_for(base, "bob")
    for env in (alice, bob):
        assert (await qpc("register", env=env)).returncode == 0
    assert (await qpc("send", "@bob", "hello bob", env=alice)).returncode == 0

    # Both sides see the same safety number.
    theirs = await qpc("verify", "@alice", env=bob)
    ours = await qpc("verify", "@bob", env=alice)
    assert theirs.returncode == ours.returncode == 0, ours.stderr + theirs.stderr
    assert len(number_in(ours.stdout)) == 3 and number_in(ours.stdout) == number_in(theirs.stdout)

    # The operator removes bob's account; someone registers "bob" again, with another identity key.
    await restartable.stop()
    with sqlite3.connect(restartable.config.data_dir / "node.sqlite3") as db:
        assert db.execute("DELETE FROM accounts WHERE username = 'bob'").rowcount == 1
    await restartable.start()
    new_bob = dict(bob, XDG_DATA_HOME=str(tmp_path / "new-bob-data"))
    assert (await qpc("register", env=new_bob)).returncode == 0

    # The new "bob" writes first: alice sees the message with a loud warning, and cannot answer it yet.
    assert (await qpc("send", "@alice", "it is me, bob", env=new_bob)).returncode == 0
    warned = await qpc("recv", env=alice)
    assert "bob: it is me, bob" in warned.stdout, warned.stdout
    assert "WARNING: the identity key of bob changed" in warned.stderr, warned.stderr
    answer = await qpc("send", "bob-2", "are you?", env=alice)
    assert answer.returncode == 1 and "WARNING: the identity key of bob changed" in answer.stderr, answer.stderr

    refused = await qpc("send", "@bob", "are you still bob?", env=alice)
    assert refused.returncode == 1
    warning = one_line_error(refused.stderr)
    assert "WARNING: the identity key of bob changed" in warning and "/trust @bob" in warning
    assert (await qpc("recv", env=new_bob)).stdout == ""  # nothing reached the new key

    check = await qpc("verify", "@bob", env=alice)
    assert check.returncode == 1 and "NOT the one known for bob" in check.stdout
    other_side = await qpc("verify", "@alice", env=new_bob)
    assert number_in(check.stdout) == number_in(other_side.stdout) != number_in(ours.stdout)
    again = await qpc("send", "@bob", "still refused", env=alice)
    assert again.returncode == 1 and "WARNING" in again.stderr

    trusted = await qpc("trust", "@bob", env=alice)
    assert trusted.returncode == 0 and "accepted the new identity key of bob" in trusted.stdout
    sent = await qpc("send", "@bob", "hello new bob", env=alice)
    assert sent.returncode == 0, sent.stderr
    received = await qpc("recv", env=new_bob)
    assert received.stdout.strip().endswith("alice: hello new bob"), received.stdout
    assert "still" not in received.stdout and "are you?" not in received.stdout
