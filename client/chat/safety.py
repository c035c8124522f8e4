"""Safety numbers: what two people compare (in person, on a call) to know that each has the other's real
identity key and no one in between.

A safety number is 60 digits in 12 groups of 5: 30 digits derived from each of the two identity keys, the two
halves in ascending order so that both sides compute the same number. Each half is SHA-512 iterated over a
domain label and the key (iterating makes searching for a key with a chosen half expensive); every 5 bytes of
the result give one group (a 40-bit number modulo 100000). No I/O here.
"""

from __future__ import annotations

import hashlib

DOMAIN = b"quicnprotochat safety number v1\x00"
ITERATIONS = 5200
GROUPS_PER_KEY = 6
GROUPS_PER_LINE = 4


def _half(identity_key: bytes) -> list[str]:
    digest = DOMAIN + identity_key
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + identity_key).digest()
    return [f"{int.from_bytes(digest[i * 5 : i * 5 + 5], 'big') % 100_000:05d}" for i in range(GROUPS_PER_KEY)]


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """The 60-digit safety number of two identity keys (the same whichever is given first)."""
    first, second = sorted((_half(key_a), _half(key_b)))
    return " ".join(first + second)


def safety_lines(number: str) -> list[str]:
    """The number as it is shown: 3 lines of 4 groups."""
    groups = number.split()
    return [" ".join(groups[i : i + GROUPS_PER_LINE]) for i in range(0, len(groups), GROUPS_PER_LINE)]
