"""The inner framing: round trips, forward compatibility (unknown tags), and malformed input refused."""

from __future__ import annotations

import struct

import pytest

from quicnprotochat.client.chat.framing import (
    FrameError,
    MlsFrame,
    TextContent,
    WelcomeFrame,
    decode_content,
    decode_frame,
    encode_fields,
)


def test_round_trips() -> None:
    dm = WelcomeFrame("dm", "", b"c" * 16, b"k" * 32, b"welcome bytes")
    assert decode_frame(dm.encode()) == dm
    group = WelcomeFrame("group", "team ünïcode", None, b"k" * 32, b"w")
    assert decode_frame(group.encode()) == group
    assert decode_frame(MlsFrame(b"\x00mls").encode()) == MlsFrame(b"\x00mls")
    commit = MlsFrame(b"commit", sender=b"s" * 32)
    assert decode_frame(commit.encode()) == commit
    recreated = WelcomeFrame("group", "team", None, b"k" * 32, b"w", replaces=b"old group id")
    assert decode_frame(recreated.encode()) == recreated
    text = TextContent("héllo", 1_700_000_000.123)
    assert decode_content(text.encode()) == text
    assert decode_content(TextContent("", None).encode()) == TextContent("", None)
    # Layout: version, kind, then tag | u32 length | value.
    assert MlsFrame(b"ab").encode() == b"\x01\x02" + struct.pack(">BI", 5, 2) + b"ab"


def test_unknown_tags_are_skipped() -> None:
    data = encode_fields(1, 2, [(99, b"from the future"), (5, b"mls")])
    assert decode_frame(data) == MlsFrame(b"mls")
    content = encode_fields(1, 1, [(1, b"body"), (42, b"x")])
    assert decode_content(content) == TextContent("body", None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x02" + struct.pack(">BI", 5, 1) + b"m",  # another version
        b"\x01\x07" + struct.pack(">BI", 5, 1) + b"m",  # unknown kind
        b"\x01\x02" + struct.pack(">BI", 5, 9) + b"short",  # length past the end
        b"\x01\x02\x05\x00",  # truncated header
        encode_fields(1, 2, [(5, b"a"), (5, b"b")]),  # duplicate
        encode_fields(1, 2, []),  # missing MLS message
        encode_fields(1, 1, [(1, b"\x01"), (4, b"k" * 32), (5, b"w")]),  # DM welcome without channel
        encode_fields(1, 1, [(1, b"\x02"), (4, b"short"), (5, b"w")]),  # bad inviter key
        encode_fields(1, 1, [(1, b"\x03"), (4, b"k" * 32), (5, b"w")]),  # unknown conversation kind
        encode_fields(1, 2, [(5, b"m"), (6, b"short")]),  # bad sender key
        encode_fields(1, 1, [(1, b"\x02"), (4, b"k" * 32), (5, b"w"), (7, b"")]),  # empty replaced group id
    ],
)
def test_malformed_frames_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(data)


def test_malformed_content_refused() -> None:
    with pytest.raises(FrameError):
        decode_content(encode_fields(1, 1, [(1, b"\xff\xfe")]))
    with pytest.raises(FrameError):
        decode_content(encode_fields(1, 1, [(1, b"x"), (2, b"\x00")]))
    with pytest.raises(FrameError):
        decode_content(encode_fields(1, 9, [(1, b"x")]))
