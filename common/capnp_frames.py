"""Where Cap'n Proto messages begin and end in a byte stream, read from their framing alone (sans I/O).

A framed message is a segment table (the segment count less one, then each segment's size in words, all
little-endian UInt32, padded to a word) followed by the segments. `FrameScanner` follows a stream through those
tables without keeping the messages: it knows how many bytes of the current message have arrived (what a reader
holds for a message in progress), refuses a message whose table announces more than a limit before any of its
body is read, and reads the kind of each RPC message (the `Message` union's tag: the word after the root
pointer) so that messages kj answers on its own, such as Bootstrap, can be counted, and the question, interface
and method of each Call.
"""

from __future__ import annotations

import struct

# rpc.capnp `Message` union tags.
CALL = 2
BOOTSTRAP = 8
UNKNOWN_KIND = -1
"""A message whose kind is not in the first words of its first segment (a far or offset root pointer, a tiny
segment): well-formed, but no Cap'n Proto implementation lays out its own RPC messages that way."""

# kj refuses more segments than this (capnp/serialize.c++).
MAX_SEGMENTS = 512
_WORD = 8
# Root pointer, the Message struct (its tag word and its one pointer), and a Call laid out right after it (its
# data: question id and method id, then interface id): what is read of each message's first segment.
_HEAD_BYTES = 5 * _WORD


class FrameRefused(ValueError):
    """The stream announced a message past the scanner's limits."""


class FrameScanner:
    def __init__(self, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes
        self._head = bytearray()  # the current message's table and first words, until its size and kind are known
        self._table = 0  # the current message's table size once known (with its padding), else 0
        self._total = 0  # the current message's size once its table is read, else 0
        self._remaining = 0  # bytes of the current message's body still to come, once its head is read
        self.in_progress = 0
        """Bytes of the current, incomplete message received so far (0 between messages)."""
        self.kinds: list[int] = []
        """Kinds of the messages whose head was read (the caller reads and clears them)."""
        self.calls: list[tuple[int, int, int]] = []
        """(question id, interface id, method id) of the Calls among them, when laid out as Cap'n Proto
        implementations build them (the caller reads and clears them)."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Follows `data`, the next bytes of the stream. Raises FrameRefused for a message past the limits."""
        view = memoryview(data)
        position, end = 0, len(view)
        while position < end:
            if self._remaining:
                taken = min(self._remaining, end - position)
                self._remaining -= taken
                self.in_progress += taken
                position += taken
                if not self._remaining:
                    self.in_progress = 0
                continue
            taken = min(self._head_needed() - len(self._head), end - position)
            self._head += view[position : position + taken]
            self.in_progress += taken
            position += taken
            self._read_head()

    def _head_needed(self) -> int:
        """Bytes of head needed for what is known so far: the count, then the table, then the first words."""
        if not self._table:
            return 4 if len(self._head) < 4 else table_size(self._head)
        first_segment = int.from_bytes(self._head[4:8], "little") * _WORD
        return self._table + min(first_segment, _HEAD_BYTES)

    def _read_head(self) -> None:
        head = self._head
        if not self._table and len(head) >= 4:
            count = int.from_bytes(head[:4], "little") + 1
            if count > MAX_SEGMENTS:
                raise FrameRefused(f"a message of {count} segments (at most {MAX_SEGMENTS})")
            table = table_size(head)
            if len(head) < table:
                return
            self._table = table
            self._total = framed_length(head) or 0
            if self._total > self._max_message_bytes:
                raise FrameRefused(f"a message of {self._total} bytes (at most {self._max_message_bytes})")
        if not self._table or len(head) < self._head_needed():
            return
        first_words = head[self._table :]
        kind = _kind(first_words)
        self.kinds.append(kind)
        if kind == CALL and (call := _call(first_words)) is not None:
            self.calls.append(call)
        self._remaining = self._total - len(head)
        self._head = bytearray()
        self._table = self._total = 0
        if not self._remaining:
            self.in_progress = 0


def table_size(head: bytes | bytearray) -> int:
    """The segment table's size in bytes, padded to a word, from its first four bytes."""
    table = 4 + 4 * (int.from_bytes(head[:4], "little") + 1)
    return table + table % _WORD


def framed_length(head: bytes | bytearray) -> int | None:
    """The whole message's length once its segment table is in `head` (None before). A table of more than
    MAX_SEGMENTS segments is not read: its length is taken as what is there."""
    if len(head) < 4:
        return None
    count = int.from_bytes(head[:4], "little") + 1
    if count > MAX_SEGMENTS:
        return len(head)
    table = table_size(head)
    if len(head) < table:
        return None
    return table + _WORD * sum(int(size) for size in struct.unpack_from(f"<{count}I", head, 4))


def _kind(first_words: bytes | bytearray) -> int:
    """The RPC message's union tag, when its root pointer is a struct pointer to the very next word."""
    if len(first_words) < 2 * _WORD:
        return UNKNOWN_KIND
    root = int.from_bytes(first_words[:_WORD], "little")
    kind, offset, data_words = root & 3, (root >> 2) & 0x3FFF_FFFF, (root >> 32) & 0xFFFF
    if kind != 0 or offset != 0 or data_words == 0:
        return UNKNOWN_KIND
    return int.from_bytes(first_words[_WORD : _WORD + 2], "little")


def _call(first_words: bytes | bytearray) -> tuple[int, int, int] | None:
    """A Call's (question id, interface id, method id), when its struct follows the Message's pointer directly."""
    root = int.from_bytes(first_words[:_WORD], "little")
    if len(first_words) < _HEAD_BYTES or (root >> 32) & 0xFFFF != 1:
        return None  # the Message's pointer is not at word 2
    pointer = int.from_bytes(first_words[2 * _WORD : 3 * _WORD], "little")
    kind, offset, data_words = pointer & 3, (pointer >> 2) & 0x3FFF_FFFF, (pointer >> 32) & 0xFFFF
    if kind != 0 or offset != 0 or data_words < 2:
        return None
    question = int.from_bytes(first_words[3 * _WORD : 3 * _WORD + 4], "little")
    method = int.from_bytes(first_words[3 * _WORD + 4 : 3 * _WORD + 6], "little")
    interface = int.from_bytes(first_words[4 * _WORD : 5 * _WORD], "little")
    return question, interface, method
