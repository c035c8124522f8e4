"""`qpc` in scripts and at its prompts: what send leaves for recv, JSON output, text from stdin or a file, and
the login messages a new user meets. Real processes against a real node."""

from __future__ import annotations

import json
from pathlib import Path

from quicnprotochat.server.node import Node
from tests.client.terminal import QPC, Tmux, client_env, env_for, one_line_error, qpc
from tests.conftest import node_address


def records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def test_send_leaves_incoming_messages_for_recv(node: Node, tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice, bob = env_for(base, "alice"), env_for(base, "bob")
    for env in (alice, bob):
        assert (await qpc("register", env=env)).returncode == 0

    sent = await qpc("send", "@bob", "first", env=alice)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent to @bob")
    # bob's send takes "first" in (it joins the DM alice opened) but leaves it for his recv.
    answered = await qpc("send", "@alice", "an answer", env=bob)
    assert answered.returncode == 0, answered.stderr
    received = await qpc("recv", env=bob)
    assert received.returncode == 0, received.stderr
    assert received.stdout.strip().endswith("[@alice] alice: first"), received.stdout

    # Text from stdin and from a file; --json for scripts.
    piped = await qpc("send", "@bob", "-", env=alice, stdin=b"from stdin\n")
    assert piped.returncode == 0, piped.stderr
    text_file = tmp_path / "message.txt"
    text_file.write_text("from a file\nsecond line ë\n", encoding="utf-8")
    filed = await qpc("send", "@bob", "--file", str(text_file), env=alice)
    assert filed.returncode == 0, filed.stderr
    received = await qpc("recv", "--json", env=bob)
    assert received.returncode == 0, received.stderr
    got = records(received.stdout)
    assert [r["body"] for r in got] == ["from stdin", "from a file\nsecond line ë"]
    assert {(r["conversation"], r["sender"], r["outgoing"]) for r in got} == {("@alice", "alice", False)}

    history = await qpc("history", "@alice", "--json", env=bob)
    assert history.returncode == 0, history.stderr
    bodies = [(r["body"], r["outgoing"]) for r in records(history.stdout)]
    file_text = "from a file\nsecond line ë"
    assert bodies == [("first", False), ("an answer", True), ("from stdin", False), (file_text, False)]
    plain = await qpc("history", "alice", "-n", "1", env=bob)
    assert plain.stdout.count("\n") == 2 and "alice: from a file" in plain.stdout

    listed = await qpc("list", env=bob)
    assert listed.returncode == 0 and listed.stdout.strip() == "@alice  dm", listed.stdout
    listed = await qpc("list", "--json", env=alice)
    assert records(listed.stdout) == [{"active": True, "kind": "dm", "name": "@bob", "unread": 1}]

    # Nothing to send is refused before anything is sent.
    for args, stdin in ((["@bob", ""], b""), (["@bob", "-"], b"  \n\n"), (["@bob"], b"")):
        empty = await qpc("send", *args, env=alice, stdin=stdin)
        assert empty.returncode == 2 and "the message is empty" in one_line_error(empty.stderr)
    assert (await qpc("recv", env=bob)).stdout == ""


async def test_login_messages(node: Node, tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice = env_for(base, "alice")
    assert (await qpc("register", env=alice)).returncode == 0

    # A given password is checked even though a cached session would do.
    wrong = await qpc("recv", env=dict(alice, QPC_PASSWORD="not the password"))
    assert wrong.returncode == 1 and "login as alice failed" in one_line_error(wrong.stderr)
    cached = await qpc("recv", env={k: v for k, v in alice.items() if k != "QPC_PASSWORD"})
    assert cached.returncode == 0, cached.stderr

    unknown = await qpc("recv", env=env_for(base, "nobody"))
    assert unknown.returncode == 1
    assert "register first: qpc register" in one_line_error(unknown.stderr)

    accented = await qpc("register", env=env_for(base, "zoë"))
    line = one_line_error(accented.stderr)
    assert accented.returncode == 2 and "the letters a to z without accents" in line and "'ë' is not allowed" in line
    assert "invalid_argument" not in line


async def test_password_confirmation_asks_again(node: Node, tmp_path: Path, tmux: Tmux) -> None:
    env = client_env(
        tmp_path,
        QPC_SERVER=node_address(node, "quic"),
        QPC_SERVER_FINGERPRINT=node.fingerprint,
        QPC_STATE_PASSWORD="state secret",
        QPC_USERNAME="dave",
    )
    await tmux.start("dave", [*QPC, "register"], env)
    await tmux.wait_for("dave", "Password for dave:")
    await tmux.line("dave", "one password")
    await tmux.wait_for("dave", "Repeat the password:")
    await tmux.line("dave", "another one")
    await tmux.wait_for("dave", "the two passwords differ; again, please")
    await tmux.wait_for("dave", "Password for dave:", count=2)
    await tmux.line("dave", "the password")
    await tmux.wait_for("dave", "Repeat the password:", count=2)
    await tmux.line("dave", "the password")
    screen = await tmux.wait_for("dave", "EXITED 0")
    assert "registered dave on " in screen
