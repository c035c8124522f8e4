"""Calls to methods the node does not have get the node's own `unimplemented:` answer, not kj's.

Cap'n Proto answers a method ordinal past the schema (or an interface the node does not serve) itself, below the
node's dispatch, with an exception of type `unimplemented` and kj's own text ("Method not implemented."). Every
other refusal of the node is a reason that starts with its code, so this one should be too. The connection's
incoming framing (server/incoming_messages.py) reports each Call's question, interface and method; a Call the
node cannot serve is remembered, and when kj's answer to that question goes out, its reason is rewritten. The
outgoing stream is followed frame by frame for that: frames pass through unchanged (the head of each is held
only until its size is known) unless a question is waiting and the frame is small enough to be such an answer.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import capnp  # type: ignore[import-untyped]

from quicnprotochat.common.capnp_frames import MAX_SEGMENTS, framed_length, table_size

_CAPNP_DIR = os.path.dirname(capnp.__file__)
_rpc: Any = None
# kj's exception answers are a few hundred bytes; larger frames are never held back.
_LARGEST_ANSWER = 4096
_TABLE_OF_ONE_SEGMENT = struct.Struct("<II")
_TABLE_OF_ONE = _TABLE_OF_ONE_SEGMENT.size


def _rpc_schema() -> Any:
    global _rpc
    if _rpc is None:
        _rpc = capnp.load(os.path.join(_CAPNP_DIR, "rpc.capnp"), imports=[os.path.dirname(_CAPNP_DIR)])
    return _rpc


class UnknownMethodAnswers:
    """One connection's calls to unknown methods, and the rewrite of kj's answers to them."""

    def __init__(self, interface_id: int, interface_name: str, methods: int) -> None:
        self._interface_id = interface_id
        self._interface_name = interface_name
        self._methods = methods
        self._waiting: dict[int, str] = {}  # question id -> our reason
        self._head = bytearray()  # the start of the current outgoing frame, held until its length is known
        self._frame = 0  # the current frame's length, once known
        self._passing = 0  # bytes of the current frame still to pass through unchanged

    def call_read(self, question: int, interface: int, method: int) -> None:
        """An incoming Call (from the connection's framing)."""
        if interface != self._interface_id:
            self._waiting[question] = f"unimplemented: interface {interface:#x} is not served by this node"
        elif method >= self._methods:
            self._waiting[question] = (
                f"unimplemented: method {method} is not part of {self._interface_name}"
                f" (this node has methods 0-{self._methods - 1})"
            )

    def outgoing(self, data: bytes) -> bytes:
        """What to send for `data`, the next bytes kj writes (some may be held back until their frame is read)."""
        if self._passing >= len(data):  # the body of a frame already let through: most bytes, no copy
            self._passing -= len(data)
            return data
        if not self._passing and not self._head and len(data) >= _TABLE_OF_ONE:
            # The common case: a one-segment frame's table starts this write, and it is not one to hold.
            count_less_one, words = _TABLE_OF_ONE_SEGMENT.unpack_from(data)
            length = _TABLE_OF_ONE + words * 8
            if count_less_one == 0 and length >= len(data) and (not self._waiting or length > _LARGEST_ANSWER):
                self._passing = length - len(data)
                return data
        out = bytearray()
        view = memoryview(data)
        position, end = 0, len(view)
        while position < end:
            if self._passing:
                taken = min(self._passing, end - position)
                out += view[position : position + taken]
                self._passing -= taken
                position += taken
                continue
            if not self._frame:
                needed = self._needed()
                taken = min(needed, end - position)
                self._head += view[position : position + taken]
                position += taken
                length = framed_length(self._head)
                if length is None:
                    continue
                if not self._waiting or length > _LARGEST_ANSWER:
                    out += self._head
                    self._passing = length - len(self._head)
                    self._head = bytearray()
                    continue
                self._frame = length
            taken = min(self._frame - len(self._head), end - position)
            self._head += view[position : position + taken]
            position += taken
            if len(self._head) == self._frame:
                out += self._answer(bytes(self._head))
                self._head = bytearray()
                self._frame = 0
        return bytes(out)

    def _needed(self) -> int:
        """Bytes to read next to learn the current frame's length."""
        head = self._head
        if len(head) < 4:
            return 4 - len(head)
        if int.from_bytes(head[:4], "little") + 1 > MAX_SEGMENTS:
            return 0  # framed_length passes it on as it is
        return max(table_size(head) - len(head), 0)

    def _answer(self, frame: bytes) -> bytes:
        """A small outgoing frame: kj's answer to a waiting question gets our reason; others pass unchanged."""
        try:
            with _rpc_schema().Message.from_bytes(frame) as message:
                if message.which() != "return":
                    return frame
                answer = getattr(message, "return")
                reason = self._waiting.pop(int(answer.answerId), None)
                if reason is None or answer.which() != "exception":
                    return frame
                builder = message.as_builder()
        except (capnp.KjException, ValueError):  # not a message we can read: not ours to change
            return frame
        getattr(builder, "return").exception.reason = reason
        return bytes(builder.to_bytes())
