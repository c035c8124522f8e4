"""The one text form of a bot key (shown by /bots and prompts, written in the coffer's TOML)."""

from __future__ import annotations

import os

import pytest

from quicnprotochat.common.bot_keys import BotKeyError, bot_key_text, parse_bot_key


def test_round_trip() -> None:
    for _ in range(100):
        key = os.urandom(32)
        text = bot_key_text(key)
        assert len(text) == 43
        assert parse_bot_key(text) == key
        assert parse_bot_key(f"  {text}\n") == key


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "43 characters"),
        ("A" * 42, "43 characters"),
        ("A" * 44, "43 characters"),
        ("A" * 42 + "=", "only A-Z"),
        ("+" + "A" * 42, "only A-Z"),
        ("A" * 42 + "B", "last character"),  # same 32 bytes as ...A: only one spelling is accepted
    ],
)
def test_refuses_what_is_not_a_key(text: str, reason: str) -> None:
    with pytest.raises(BotKeyError, match=reason):
        parse_bot_key(text)


def test_only_32_byte_keys_have_a_text() -> None:
    with pytest.raises(BotKeyError):
        bot_key_text(b"\x00" * 31)
