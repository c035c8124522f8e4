"""A hand-written Cap'n Proto RPC client over TLS, for sending what a hostile client would (tests/hostile and
`qpc-bench hostile`).

It speaks the two-party protocol at the message level (capnp's own rpc.capnp schema): one Bootstrap, then
Calls pipelined on it, with parameter structs from `rawrpc.capnp` (laid out like the real ones, but free to carry
bytes that are not UTF-8, pointers of the wrong kind, or raw words). It reads answers only when asked to, so a
test can send calls and never read.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import capnp  # type: ignore[import-untyped]

from quicnprotochat.common.capnp_frames import framed_length
from quicnprotochat.common.schema import ALPN, node_schema

_CAPNP_DIR = os.path.dirname(capnp.__file__)
rpc: Any = capnp.load(os.path.join(_CAPNP_DIR, "rpc.capnp"), imports=[os.path.dirname(_CAPNP_DIR)])
wire: Any = capnp.load(os.path.join(os.path.dirname(__file__), "rawrpc.capnp"))

_SERVICE = node_schema().NodeService.schema
_ORDINALS = {method.name: ordinal for ordinal, method in enumerate(_SERVICE.node.interface.methods)}
BOOTSTRAP_QUESTION = 0


@dataclass
class Answer:
    question: int
    reason: str | None  # the exception's reason, or None for results
    results: Any = None
    kind: str = ""  # the exception's type (failed, overloaded, disconnected, unimplemented)


def auth(token: bytes) -> dict[str, Any]:
    return {"version": 1, "accessToken": token, "deviceId": b""}


def text(value: str) -> bytes:
    """A Text field's bytes, for wire structs that declare it as Data: UTF-8 and the NUL terminator."""
    return value.encode() + b"\x00"


class Frames:
    """Builds framed RPC messages (no connection needed), numbering questions from 1."""

    def __init__(self) -> None:
        self._next_question = BOOTSTRAP_QUESTION + 1

    @staticmethod
    def bootstrap_frame() -> bytes:
        message = rpc.Message.new_message()
        message.init("bootstrap").questionId = BOOTSTRAP_QUESTION
        return bytes(message.to_bytes())

    def call_frame(self, method: str | int, params: Any, *, segment_words: int = 1024) -> tuple[int, bytes]:
        """A Call of `method` (a name, or a raw ordinal) on the bootstrap capability; returns (question, bytes).
        `segment_words`: the first segment's size (large: the whole message in one segment, for patching)."""
        question = self._next_question
        self._next_question += 1
        message = rpc.Message.new_message(num_first_segment_words=segment_words)
        call = message.init("call")
        call.questionId = question
        call.target.init("promisedAnswer").questionId = BOOTSTRAP_QUESTION
        call.interfaceId = _SERVICE.node.id
        call.methodId = _ORDINALS[method] if isinstance(method, str) else method
        call.params.content = params
        return question, bytes(message.to_bytes())


class RawRpc(Frames):
    def __init__(self, host: str, port: int, *, timeout: float = 10.0, source: str | None = None) -> None:
        """Connects (blocking: call it from a thread when the node runs on this event loop) and bootstraps.
        `source`: the local address to connect from (any of 127.0.0.0/8 works on loopback)."""
        super().__init__()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols([ALPN])
        raw = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock = context.wrap_socket(raw)
        self._received = bytearray()
        self.send(self.bootstrap_frame())

    def close(self) -> None:
        self.sock.close()

    # -- I/O ---------------------------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def call(self, method: str | int, params: Any) -> int:
        question, frame = self.call_frame(method, params)
        self.send(frame)
        return question

    def read_message(self) -> Any:
        while True:
            length = framed_length(bytes(self._received[:4096]))
            if length is not None and len(self._received) >= length:
                data = bytes(self._received[:length])
                del self._received[:length]
                return rpc.Message.from_bytes(data, traversal_limit_in_words=1 << 30).__enter__()
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the node closed the connection")
            self._received += chunk

    def answer(self, question: int) -> Answer:
        """Reads until the Return for `question` (other messages are skipped)."""
        while True:
            message = self.read_message()
            if message.which() != "return":
                continue
            ret = message.__getattr__("return")
            if ret.answerId != question:
                continue
            if ret.which() == "exception":
                return Answer(question, str(ret.exception.reason), kind=str(ret.exception.type))
            return Answer(question, None, ret.results.content)

    def ask(self, method: str | int, params: Any) -> Answer:
        return self.answer(self.call(method, params))


# -- hand-made pointers --------------------------------------------------------------------------------------------
# A list pointer word: kind 1 in bits 0-1, signed word offset in bits 2-31, element size in bits 32-34 (2: bytes),
# element count in bits 35-63. A far pointer: kind 2, landing-pad offset in bits 3-31, segment id in bits 32-63.

_BYTE_LIST = 2


def _segments(frame: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(header length, [(start, words) per segment]) of a framed message."""
    count = struct.unpack_from("<I", frame)[0] + 1
    sizes = struct.unpack_from(f"<{count}I", frame, 4)
    header = 4 + 4 * count
    header += header % 8
    spans, at = [], header
    for words in sizes:
        spans.append((at, words))
        at += 8 * words
    return header, spans


def find_byte_list_pointer(frame: bytes, length: int) -> int:
    """The byte position of the (unique) pointer to a Data value of exactly `length` bytes."""
    _header, spans = _segments(frame)
    found = []
    for start, words in spans:
        for position in range(start, start + 8 * words, 8):
            word = struct.unpack_from("<Q", frame, position)[0]
            if word & 3 == 1 and (word >> 32) & 7 == _BYTE_LIST and word >> 35 == length:
                found.append(position)
    if len(found) != 1:
        raise ValueError(f"{len(found)} pointers to {length}-byte data in the frame")
    return found[0]


def list_pointer(offset: int, count: int) -> int:
    return 1 | ((offset & 0x3FFFFFFF) << 2) | (_BYTE_LIST << 32) | (count << 35)


def patch_word(frame: bytes, position: int, word: int) -> bytes:
    patched = bytearray(frame)
    struct.pack_into("<Q", patched, position, word)
    return bytes(patched)


def far_pointer(segment: int, offset: int = 0) -> int:
    return 2 | (offset << 3) | (segment << 32)


def amplified_keys(frames: Frames, token: bytes, blob_bytes: int, copies: int) -> bytes:
    """A fetchHybridKeys call whose `copies` list elements all point at one `blob_bytes` blob: a small message
    that costs `copies` x `blob_bytes` to read."""
    keys = [b"\x01" * blob_bytes] + [b"\x02" * 3] * (copies - 1)
    params = wire.IdentityKeys.new_message(identityKeys=keys, auth=auth(token))
    _question, frame = frames.call_frame("fetchHybridKeys", params, segment_words=blob_bytes // 8 + 8 * copies)
    first = find_byte_list_pointer(frame, blob_bytes)
    word = struct.unpack_from("<Q", frame, first)[0]
    offset = (word >> 2) & 0x3FFFFFFF
    for index in range(1, copies):
        frame = patch_word(frame, first + 8 * index, list_pointer(offset - index, blob_bytes))
    return frame
