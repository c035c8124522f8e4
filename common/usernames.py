"""Usernames: NFKC-normalized, case-folded, 3 to 32 of [a-z0-9_.-]. Both sides normalize the same way."""

from __future__ import annotations

import re
import unicodedata

from quicnprotochat.common.errors import InvalidArgument

MIN_LENGTH = 3
MAX_LENGTH = 32
_ALLOWED = re.compile(rf"[a-z0-9_.-]{{{MIN_LENGTH},{MAX_LENGTH}}}")
_ALLOWED_CHAR = re.compile(r"[a-z0-9_.-]")
# Longer input cannot normalize to a valid name (NFKC composes at most a few code points into one); refusing it
# first keeps huge names from costing normalization time.
MAX_RAW_USERNAME_CHARS = 256


def normalize_username(raw: str) -> str:
    """The canonical form of a username, or InvalidArgument saying what is wrong with it."""
    if len(raw) > MAX_RAW_USERNAME_CHARS:
        raise InvalidArgument(f"a username is {MIN_LENGTH} to {MAX_LENGTH} characters (got {len(raw)})")
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    if not _ALLOWED.fullmatch(name):
        raise InvalidArgument(username_rule(name))
    return name


def username_rule(name: str) -> str:
    """The rule in plain words, naming what is wrong with `name` (the reason a client shows its user)."""
    rule = (
        f"a username is {MIN_LENGTH} to {MAX_LENGTH} characters: the letters a to z without accents, the digits"
        " 0 to 9, and _ . -"
    )
    refused = sorted({char for char in name if not _ALLOWED_CHAR.fullmatch(char)})
    if refused:
        shown = ", ".join(
            repr(char) if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}" for char in refused
        )
        return f"{rule} ({shown} is not allowed)" if len(refused) == 1 else f"{rule} ({shown} are not allowed)"
    return f"{rule} ({name!r} is {len(name)} long)"
