"""How a bot's public key is written for people: in `/bots`, in approval prompts, in `qpc bot` output and in the
coffer's TOML `[clients]` table. One encoding everywhere: unpadded base64url of the raw 32-byte Ed25519 key."""

from __future__ import annotations

import base64
import re

BOT_KEY_BYTES = 32
BOT_KEY_TEXT_CHARS = 43
_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


class BotKeyError(ValueError):
    """Text that is not a bot key; the message says what is wrong, never more than the first characters."""


def bot_key_text(key: bytes) -> str:
    if len(key) != BOT_KEY_BYTES:
        raise BotKeyError(f"a bot key is {BOT_KEY_BYTES} bytes, got {len(key)}")
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def parse_bot_key(text: str) -> bytes:
    """The raw key from its text form; BotKeyError for anything else (wrong length, wrong alphabet)."""
    stripped = text.strip()
    if len(stripped) != BOT_KEY_TEXT_CHARS:
        raise BotKeyError(
            f"a bot key is {BOT_KEY_TEXT_CHARS} characters of base64url (A-Z a-z 0-9 - _), got {len(stripped)}"
        )
    if not _ALPHABET.fullmatch(stripped):
        raise BotKeyError("a bot key is base64url: only A-Z a-z 0-9 - _ may appear")
    key = base64.urlsafe_b64decode(stripped + "=")
    if bot_key_text(key) != stripped:
        # 43 characters carry 258 bits: the last character's low bits must be zero, or two texts name one key.
        raise BotKeyError("not a bot key: its last character is not one base64url can end 32 bytes with")
    return key
