"""The framing scanner (common/capnp_frames.py), the node-wide account of incoming bytes built on it
(server/incoming_messages.py) and the rewrite of kj's answers to unknown methods (server/unknown_methods.py),
on real RPC messages cut at every byte."""

from __future__ import annotations

import asyncio
import struct

import pytest

from quicnprotochat.bench.rawrpc import Frames, rpc, wire
from quicnprotochat.common.capnp_frames import BOOTSTRAP, UNKNOWN_KIND, FrameRefused, FrameScanner
from quicnprotochat.server.incoming_messages import ConnectionInbound, IncomingMessages
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.unknown_methods import UnknownMethodAnswers

CALL, FINISH = 2, 4


def _messages() -> list[bytes]:
    frames = Frames()
    finish = rpc.Message.new_message()
    finish.init("finish").questionId = 1
    return [
        Frames.bootstrap_frame(),
        frames.call_frame("health", wire.Empty.new_message(), segment_words=8)[1],  # three segments
        frames.call_frame("health", wire.Empty.new_message())[1],
        bytes(finish.to_bytes()),
        frames.call_frame("health", wire.Empty.new_message(), segment_words=2)[1],  # root in another segment
    ]


@pytest.mark.parametrize("step", [1, 3, 8, 13, 4096])
def test_messages_and_kinds_are_followed_whatever_the_cuts(step: int) -> None:
    messages = _messages()
    stream = b"".join(messages)
    scanner = FrameScanner(1 << 20)
    ends = {sum(len(m) for m in messages[: i + 1]) for i in range(len(messages))}
    for start in range(0, len(stream), step):
        scanner.feed(stream[start : start + step])
        end = min(start + step, len(stream))
        boundary = max([e for e in ends if e <= end], default=0)
        assert scanner.in_progress == end - boundary
    assert scanner.kinds == [BOOTSTRAP, CALL, CALL, FINISH, UNKNOWN_KIND]


def test_a_message_past_the_limit_is_refused_from_its_table() -> None:
    scanner = FrameScanner(4096)
    with pytest.raises(FrameRefused, match="at most 4096"):
        scanner.feed(struct.pack("<II", 0, 1 << 20))  # the table alone: nothing of the body was needed
    with pytest.raises(FrameRefused, match="600 segments"):
        FrameScanner(1 << 30).feed(struct.pack("<I", 599))
    scanner = FrameScanner(1 << 30)
    scanner.feed(struct.pack("<II", 0, 1 << 20) + bytes(1000))
    assert scanner.in_progress == 1008 and scanner.kinds == [UNKNOWN_KIND]


async def test_the_longest_holder_is_closed_not_the_newest() -> None:
    counters = NodeCounters()
    incoming = IncomingMessages(10_000, counters)
    closed: list[str] = []

    def meter(name: str) -> ConnectionInbound:
        return incoming.connection(max_message_bytes=8000, max_bootstraps=2, close=lambda why: closed.append(name))

    old, middle, new = meter("old"), meter("middle"), meter("new")
    head = struct.pack("<II", 0, 900)  # a 7,208-byte message
    for connection, sent in ((old, 4000), (middle, 4000)):
        connection.received(head + bytes(sent))
    assert incoming.total == 8016
    new.received(head + bytes(3000))
    await asyncio.sleep(0)
    assert closed == ["old"] and incoming.total == 7016 and incoming.holders == 2
    assert counters.refused == {"max_incoming_bytes_in_progress": 1}
    # Completing a message frees its share; bytes waiting undelivered count as well.
    new.received(bytes(7208 - 3008))
    assert incoming.total == 4008
    new.buffered(5000)
    assert incoming.total == 9008
    middle.closed()
    assert incoming.total == 5000 and incoming.holders == 1
    assert counters.incoming_bytes_in_progress == 5000  # what /metrics shows


async def test_bootstraps_past_the_cap_close_the_connection() -> None:
    counters = NodeCounters()
    closed: list[str] = []
    connection = IncomingMessages(1 << 20, counters).connection(
        max_message_bytes=4096, max_bootstraps=2, close=closed.append
    )
    for _ in range(3):
        connection.received(Frames.bootstrap_frame())
    await asyncio.sleep(0)
    assert not connection.open
    assert closed == ["max_bootstraps_per_connection: more than 2 Bootstrap messages"]
    assert counters.refused == {"max_bootstraps_per_connection": 1}


def _exception_return(answer: int, reason: str) -> bytes:
    message = rpc.Message.new_message()
    returned = message.init("return")
    returned.answerId = answer
    returned.init("exception").reason = reason
    return bytes(message.to_bytes())


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_kj_answers_to_unknown_methods_get_the_nodes_reason(step: int) -> None:
    answers = UnknownMethodAnswers(interface_id=0xABC, interface_name="NodeService", methods=5)
    big = rpc.Message.new_message()
    big.init("return").answerId = 1
    getattr(big, "return").init("results").content = wire.ReadInbox.new_message(recipientKey=bytes(10_000))
    stream = [_exception_return(3, "Method not implemented."), bytes(big.to_bytes()), _exception_return(4, "x")]
    answers.call_read(4, 0xABC, 9)  # question 4 called method 9 of 5; question 3 is not waiting
    answers.call_read(5, 0xABC, 2)  # a method the node has: nothing to do
    data = b"".join(stream)
    out = b"".join(answers.outgoing(data[i : i + step]) for i in range(0, len(data), step))
    assert out.startswith(stream[0] + stream[1])  # unchanged, byte for byte
    with rpc.Message.from_bytes(out[len(stream[0]) + len(stream[1]) :]) as message:
        returned = getattr(message, "return")
        assert returned.answerId == 4
        assert (
            returned.exception.reason
            == "unimplemented: method 9 is not part of NodeService (this node has methods 0-4)"
        )
