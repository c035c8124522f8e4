"""Where Cap'n Proto messages begin and end in a byte stream, read from their framing alone (sans I/O).

A framed message is a segment table (the segment count less one, then each segment's size in words, all
little-endian UInt32, padded to a word) followed by the segments. `FrameScanner` follows a stream through those
tables without keeping the messages: it knows how many bytes of the current message have arrived (what a reader
holds for a message in progress), refuses a message whose table announces more than a limit before any of its
body is read, and reads the kind of each RPC message (the `Message` union's tag: the word after the root
pointer) so that messages kj answers on its own, such as Bootstrap, can be counted.
"""

from __future__ import annotations

import struct

# rpc.capnp `Message` union tags.
BOOTSTRAP = 8
UNKNOWN_KIND = -1
"""A message whose kind is not in the first words of its first segment (a far or offset root pointer, a tiny
segment): well-formed, but no Cap'n Proto implementation lays out its own RPC messages that way."""

# kj refuses more segments than this (capnp/serialize.c++).
MAX_SEGMENTS = 512
_WORD = 8
# Root pointer and the root struct's first data word.
_KIND_BYTES = 2 * _WORD


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
            return 4 if len(self._head) < 4 else _table_size(self._head)
        first_segment = int.from_bytes(self._head[4:8], "little") * _WORD
        return self._table + min(first_segment, _KIND_BYTES)

    def _read_head(self) -> None:
        head = self._head
        if not self._table and len(head) >= 4:
            count = int.from_bytes(head[:4], "little") + 1
            if count > MAX_SEGMENTS:
                raise FrameRefused(f"a message of {count} segments (at most {MAX_SEGMENTS})")
            table = _table_size(head)
            if len(head) < table:
                return
            self._table = table
            self._total = table + _WORD * sum(struct.unpack_from(f"<{count}I", head, 4))
            if self._total > self._max_message_bytes:
                raise FrameRefused(f"a message of {self._total} bytes (at most {self._max_message_bytes})")
        if not self._table or len(head) < self._head_needed():
            return
        self.kinds.append(_kind(head[self._table :]))
        self._remaining = self._total - len(head)
        self._head = bytearray()
        self._table = self._total = 0
        if not self._remaining:
            self.in_progress = 0


def _table_size(head: bytes | bytearray) -> int:
    """The segment table's size in bytes, padded to a word, from its first four bytes."""
    table = 4 + 4 * (int.from_bytes(head[:4], "little") + 1)
    return table + table % _WORD


def _kind(first_words: bytes | bytearray) -> int:
    """The RPC message's union tag, when its root pointer is a struct pointer to the very next word."""
    if len(first_words) < _KIND_BYTES:
        return UNKNOWN_KIND
    root = int.from_bytes(first_words[:_WORD], "little")
    kind, offset, data_words = root & 3, (root >> 2) & 0x3FFF_FFFF, (root >> 32) & 0xFFFF
    if kind != 0 or offset != 0 or data_words == 0:
        return UNKNOWN_KIND
    return int.from_bytes(first_words[_WORD : _WORD + 2], "little")
