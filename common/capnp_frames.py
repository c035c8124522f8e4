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
_ONE_SEGMENT = struct.Struct("<II")
_FIRST_WORDS = struct.Struct("<5Q")
_FAST_HEAD = _WORD + _HEAD_BYTES


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
            if not self._head and end - position >= _FAST_HEAD:
                count_less_one, segment_words = _ONE_SEGMENT.unpack_from(view, position)
                if count_less_one == 0 and segment_words * _WORD >= _HEAD_BYTES:
                    # The common case, read in place: one segment, its first words all here.
                    total = _WORD + segment_words * _WORD
                    if total > self._max_message_bytes:
                        raise FrameRefused(f"a message of {total} bytes (at most {self._max_message_bytes})")
                    self._classify(_FIRST_WORDS.unpack_from(view, position + _WORD))
                    if total <= end - position:
                        position += total
                    else:
                        self.in_progress = end - position
                        self._remaining = total - self.in_progress
                        position = end
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
        words = (len(head) - self._table) // _WORD
        self._classify(struct.unpack_from(f"<{words}Q", head, self._table))
        self._remaining = self._total - len(head)
        self._head = bytearray()
        self._table = self._total = 0
        if not self._remaining:
            self.in_progress = 0

    def _classify(self, words: tuple[int, ...]) -> None:
        """Notes the kind of the message whose first segment starts with `words` (up to five), and its Call.

        The kind is the Message union's tag when the root pointer is a struct pointer to the very next word; a
        Call is read when its struct follows the Message's one pointer directly (word 3)."""
        if len(words) < 2 or words[0] & 0xFFFF_FFFF or not (words[0] >> 32) & 0xFFFF:
            self.kinds.append(UNKNOWN_KIND)
            return
        kind = words[1] & 0xFFFF
        self.kinds.append(kind)
        if kind != CALL or len(words) < 5 or (words[0] >> 32) & 0xFFFF != 1:
            return
        pointer = words[2]
        if pointer & 0xFFFF_FFFF or (pointer >> 32) & 0xFFFF < 2:
            return
        self.calls.append((words[3] & 0xFFFF_FFFF, words[4], (words[3] >> 32) & 0xFFFF))


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
