"""Malformed calls get `invalid_argument:` naming the parameter, never `internal:` (issue 13 rows: Text that is
not UTF-8, lone surrogates, Text without its NUL; hand-built pointers; amplified messages past the traversal
limit; auth before parameters; unknown methods; client faults rate-limited in the log)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from quicnprotochat.bench.rawrpc import (
    Answer,
    Frames,
    RawRpc,
    amplified_keys,
    auth,
    far_pointer,
    find_byte_list_pointer,
    list_pointer,
    patch_word,
    rpc,
    wire,
)
from quicnprotochat.common.schema import node_schema
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory

from .conftest import MIB, Witness, closed_by_peer

BAD_TEXTS = {
    "invalid UTF-8": b"ali\xffce\x00",
    "lone surrogate": b"al\xed\xa0\x80ice\x00",
    "no NUL": b"alice",
}
OPAQUE_METHODS: dict[str, Callable[[bytes], Any]] = {
    "opaqueRegisterStart": lambda name: wire.UsernameRequest.new_message(username=name, request=b"r"),
    "opaqueLoginStart": lambda name: wire.UsernameRequest.new_message(username=name, request=b"r"),
    "opaqueRegisterFinish": lambda name: wire.UsernameFinish.new_message(username=name, message=b"u"),
    "opaqueLoginFinish": lambda name: wire.UsernameFinish.new_message(username=name, message=b"f"),
}


def _ask_all(node: Node, calls: list[tuple[str | int, Any]]) -> list[str | None]:
    assert node.tcp_address is not None
    raw = RawRpc(*node.tcp_address)
    try:
        return [raw.ask(method, params).reason for method, params in calls]
    finally:
        raw.close()


def _send_frames(node: Node, frames: list[bytes]) -> list[str | None]:
    assert node.tcp_address is not None
    raw = RawRpc(*node.tcp_address)
    try:
        questions = []
        for frame in frames:
            question = struct_question(frame)
            raw.send(frame)
            questions.append(question)
        return [raw.answer(question).reason for question in questions]
    finally:
        raw.close()


def struct_question(frame: bytes) -> int:
    with rpc.Message.from_bytes(frame, traversal_limit_in_words=1 << 30) as message:
        return int(message.call.questionId)


async def test_bad_text_in_every_username_method_is_invalid_argument(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    witness = Witness(alice)
    token = alice.client.access_token
    assert token is not None
    calls: list[tuple[str | int, Any]] = []
    for bad in BAD_TEXTS.values():
        calls += [(method, build(bad)) for method, build in OPAQUE_METHODS.items()]
        calls.append(("resolveUser", wire.ResolveUser.new_message(username=bad, auth=auth(token))))
    reasons = await witness.during(asyncio.to_thread(_ask_all, node, calls))
    assert len(reasons) == 15
    for (method, _params), reason in zip(calls, reasons, strict=True):
        assert reason is not None and "invalid_argument: username " in reason, (method, reason)
    assert {r.split("username ", 1)[1] for r in reasons if r} == {
        "is not valid UTF-8 text",
        "is not NUL-terminated text",
    }
    await witness.through()


async def test_authentication_comes_before_parameters(node: Node, make_user: UserFactory) -> None:
    witness = Witness(await make_user(node, "alice"))
    bad = BAD_TEXTS["invalid UTF-8"]
    calls: list[tuple[str | int, Any]] = [
        ("resolveUser", wire.ResolveUser.new_message(username=bad)),
        ("resolveUser", wire.ResolveUser.new_message(username=bad, auth=auth(os.urandom(32)))),
    ]
    reasons = await witness.during(asyncio.to_thread(_ask_all, node, calls))
    assert all(r is not None and "unauthenticated:" in r for r in reasons), reasons
    await witness.through()


async def test_pointers_of_the_wrong_kind_are_invalid_argument(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    witness = Witness(alice)
    token = alice.client.access_token
    assert token is not None
    read = {"channelId": b"", "version": 1, "limit": 0}
    calls: list[tuple[str | int, Any]] = [
        ("opaqueLoginStart", wire.UsernameRequestWrongKind.new_message(username={"value": 7}, request=b"r")),
        ("resolveUser", wire.ResolveUserWrongKind.new_message(username=[b"a", b"b"], auth=auth(token))),
        ("peek", wire.ReadInboxWrongKind.new_message(recipientKey={"value": 1}, auth=auth(token), **read)),
        ("peek", wire.ReadInboxAuthAsList.new_message(recipientKey=alice.key, auth=[1, 2, 3], **read)),
    ]
    reasons = await witness.during(asyncio.to_thread(_ask_all, node, calls))
    assert [r.split("invalid_argument: ", 1)[1] if r else r for r in reasons] == [
        "username has the wrong type (malformed pointer)",
        "username has the wrong type (malformed pointer)",
        "recipientKey has the wrong type (malformed pointer)",
        "auth has the wrong type (malformed pointer)",
    ], reasons
    await witness.through()


async def test_pointers_out_of_bounds_are_invalid_argument(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    witness = Witness(alice)
    token = alice.client.access_token
    assert token is not None and node.tcp_address is not None
    marker = b"m" * 37
    builder = Frames()
    frames = []
    for word in (list_pointer(1 << 27, len(marker)), far_pointer(segment=9)):
        params = wire.ReadInbox.new_message(recipientKey=marker, channelId=b"", version=1, auth=auth(token), limit=0)
        _question, frame = builder.call_frame("peek", params)
        frames.append(patch_word(frame, find_byte_list_pointer(frame, len(marker)), word))
    reasons = await witness.during(asyncio.to_thread(_send_frames, node, frames))
    assert all(r is not None and "invalid_argument: recipientKey points outside the message" in r for r in reasons), (
        reasons
    )
    await witness.through()


async def test_amplified_lists_hit_the_traversal_limit(node: Node, make_user: UserFactory) -> None:
    """1,000 list pointers to one 1 MiB blob: a 1 MiB message that would cost 1 GiB to read."""
    alice = await make_user(node, "alice")
    witness = Witness(alice)
    token = alice.client.access_token
    assert token is not None and node.tcp_address is not None
    frame = amplified_keys(Frames(), token, MIB, 1000)
    assert len(frame) < 2 * MIB
    reasons = await witness.during(asyncio.to_thread(_send_frames, node, [frame]))
    assert (
        reasons[0] is not None
        and "invalid_argument: identityKeys makes the call exceed the message traversal" in (reasons[0])
    ), reasons
    await witness.through()


async def test_unknown_methods_are_unimplemented(node: Node, make_user: UserFactory) -> None:
    """An ordinal past the schema, or an interface the node does not serve, is answered below the node's dispatch
    by Cap'n Proto; the answer still carries the node's own `unimplemented:` reason, and the connection goes on."""
    witness = Witness(await make_user(node, "alice"))
    methods = len(node_schema().NodeService.schema.methods)
    assert node.tcp_address is not None
    address = node.tcp_address

    def ask() -> list[Answer]:
        raw = RawRpc(*address)
        try:
            answers = [raw.ask(200, wire.Empty.new_message()), raw.ask(methods, wire.Empty.new_message())]
            question, frame = raw.call_frame("health", wire.Empty.new_message())
            with rpc.Message.from_bytes(frame) as message:
                other = message.as_builder()
            other.call.interfaceId = 0x1234
            raw.send(bytes(other.to_bytes()))
            answers.append(raw.answer(question))
            answers.append(raw.ask("health", wire.Empty.new_message()))
            return answers
        finally:
            raw.close()

    unknown, next_one, other_interface, health = await witness.during(asyncio.to_thread(ask))
    assert unknown.reason == (
        f"unimplemented: method 200 is not part of NodeService (this node has methods 0-{methods - 1})"
    ), unknown.reason
    assert unknown.kind == "unimplemented"
    assert next_one.reason is not None and next_one.reason.startswith(f"unimplemented: method {methods} ")
    assert other_interface.reason == "unimplemented: interface 0x1234 is not served by this node"
    assert health.reason is None
    await witness.through()


async def test_repeated_client_faults_are_one_log_line(
    node: Node, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    witness = Witness(await make_user(node, "alice"))
    caplog.set_level(logging.INFO)
    params = OPAQUE_METHODS["opaqueLoginStart"](BAD_TEXTS["invalid UTF-8"])
    reasons = await witness.during(asyncio.to_thread(_ask_all, node, [("opaqueLoginStart", params)] * 200))
    assert all(r and "invalid_argument:" in r for r in reasons)
    lines = [r for r in caplog.records if "malformed opaqueLoginStart call" in r.getMessage()]
    assert len(lines) == 1
    assert not any(r.exc_info for r in caplog.records)  # no tracebacks for the client's faults
    await witness.through()


async def test_bootstrap_floods_close_the_connection(
    node: Node, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """kj answers Bootstrap below the node's dispatch: 50,000 of them cost the node their answers (and a normal
    client's p99 reached 950 ms). Past max_bootstraps_per_connection the node closes the connection instead."""
    caplog.set_level(logging.INFO)
    witness = Witness(await make_user(node, "alice"), await make_user(node, "bob"))
    assert node.tcp_address is not None
    address = node.tcp_address

    def flood(connections: int) -> list[bool]:
        closed = []
        for _ in range(connections):
            raw = RawRpc(*address)
            try:
                for question in range(1, 2_001):
                    message = rpc.Message.new_message()
                    message.init("bootstrap").questionId = question
                    raw.send(bytes(message.to_bytes()))
            except (ConnectionError, ssl.SSLError):
                pass  # closed while we were still sending
            closed.append(closed_by_peer(raw.sock, 3.0))
            raw.close()
        return closed

    assert await witness.during(asyncio.to_thread(flood, 10)) == [True] * 10
    assert node.counters.refused["max_bootstraps_per_connection"] == 10
    await witness.through()
    noisy = [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]
    assert noisy == []
    closing = [r for r in caplog.records if "Bootstrap messages" in r.getMessage()]
    assert len(closing) == 1  # one line per period for the ten connections
    assert len(caplog.records) < 50
