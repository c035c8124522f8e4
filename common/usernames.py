"""Usernames: NFKC-normalized, case-folded, 3 to 32 of [a-z0-9_.-]. Both sides normalize the same way."""

from __future__ import annotations

import re
import unicodedata

from quicnprotochat.common.errors import InvalidArgument

_ALLOWED = re.compile(r"[a-z0-9_.-]{3,32}")


def normalize_username(raw: str) -> str:
    """The canonical form of a username, or InvalidArgument saying what is wrong with it."""
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    if not _ALLOWED.fullmatch(name):
        raise InvalidArgument("a username is 3 to 32 characters of a-z, 0-9, '_', '.' and '-'")
    return name
