"""The coffer definition file: parsed and checked in full before anything is stored (no I/O).

The operator's TOML file (seed 002) names each bot in `[clients]` and gives its secrets in a table of that name::

    [clients]
    billing = "Mhc0Pq2Wv...43 characters of base64url"

    [billing]
    api_token = "..."
    retries = 3
    since = 2024-05-01

Values are TOML strings, integers, floats, booleans, and offset or local date-times, dates and times. Every
error is one line naming the file's line, and never quotes a value: an error message may end up in a terminal's
scrollback or a log.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

from quicnprotochat.common.bot_keys import BotKeyError, parse_bot_key
from quicnprotochat.common.coffer_shard import CofferValue, encode_shard, is_coffer_value

CLIENTS_TABLE = "clients"
MAX_SHARD_BYTES = 64 * 1024
"""A bot's encoded secrets at most: a shard travels in one answer and is sealed and opened whole."""

_SUPPORTED = "strings, integers, floats, booleans, and dates, times or date-times"


class CofferFileError(ValueError):
    """A definition file that cannot be loaded: `line N: what is wrong` (no value is ever quoted)."""

    def __init__(self, line: int | None, reason: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


@dataclass(frozen=True)
class CofferClient:
    """One bot: its name, its raw Ed25519 key, its secrets and their encoded shard."""

    name: str
    identity_key: bytes
    secrets: Mapping[str, CofferValue] = field(repr=False)
    shard: bytes = field(repr=False)


@dataclass(frozen=True)
class CofferDefinition:
    clients: tuple[CofferClient, ...]


def parse_coffer_file(text: str) -> CofferDefinition:
    """Every client with its shard; CofferFileError on the first problem found."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(error) from None
    lines = _KeyLines(text)
    clients = document.get(CLIENTS_TABLE)
    if not isinstance(clients, dict):
        where = lines.find((CLIENTS_TABLE,))
        raise CofferFileError(where, "the file needs a [clients] table mapping each bot's name to its public key")
    keys = _client_keys(clients, lines)
    for name, secrets in document.items():
        if name == CLIENTS_TABLE:
            continue
        where = lines.find((name,))
        if isinstance(secrets, list):
            raise CofferFileError(where, f"{name!r} is an array; a bot's secrets are one table, [{name}]")
        if not isinstance(secrets, dict):
            raise CofferFileError(where, f"{name!r} is outside any table: secrets go in a table named after their bot")
        if name not in keys:
            raise CofferFileError(where, f"[{name}] is not a bot named in [clients]")
        for key, value in secrets.items():
            if not is_coffer_value(value):
                kind = "an array" if isinstance(value, list) else "a table"
                raise CofferFileError(
                    lines.find((name, key)), f"{name}.{key} is {kind}; a coffer holds only {_SUPPORTED}"
                )
    result = []
    for name, key in keys.items():
        secrets = document.get(name, {})
        shard = encode_shard(secrets)
        if len(shard) > MAX_SHARD_BYTES:
            raise CofferFileError(
                lines.find((name,)),
                f"the secrets of {name!r} take {len(shard)} bytes encoded; a shard holds at most {MAX_SHARD_BYTES}",
            )
        result.append(CofferClient(name, key, dict(secrets), shard))
    return CofferDefinition(tuple(result))


def _client_keys(clients: dict[str, object], lines: _KeyLines) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    seen: dict[bytes, str] = {}
    for name, text in clients.items():
        where = lines.find((CLIENTS_TABLE, name))
        if name == CLIENTS_TABLE:
            raise CofferFileError(where, f"a bot cannot be named {CLIENTS_TABLE!r}")
        if not isinstance(text, str):
            raise CofferFileError(where, f"clients.{name} must be the bot's public key as a string")
        try:
            key = parse_bot_key(text)
        except BotKeyError as error:
            raise CofferFileError(where, f"clients.{name} is not a bot key: {error}") from None
        if key in seen:
            raise CofferFileError(where, f"clients.{name} has the same key as clients.{seen[key]}: one shard per key")
        seen[key] = name
        keys[name] = key
    return keys


_TOML_POSITION = re.compile(r"^(?P<reason>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$")
# tomllib quotes the character it stumbled on in these two: that character may be part of a secret.
_QUOTED_CHARACTER = re.compile(r"^(Illegal|Found invalid) character .*$")


def _syntax_error(error: tomllib.TOMLDecodeError) -> CofferFileError:
    text = str(error).splitlines()[0] if str(error) else ""
    match = _TOML_POSITION.match(text)
    if match is None:
        return CofferFileError(None, "not valid TOML")
    reason = _QUOTED_CHARACTER.sub("a character not allowed there", match["reason"])
    return CofferFileError(int(match["line"]), f"not valid TOML: {reason} (column {match['column']})")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _KeyLines:
    """Where each table header and key of a TOML text is, for error messages: tomllib keeps no positions.

    A light scan, enough for files a person writes: it follows table headers, dotted and quoted keys, and skips
    multi-line strings; what it cannot place is reported without a line."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        closing: str | None = None
        for number, raw in enumerate(text.splitlines(), start=1):
            if closing is not None:
                if closing in raw:
                    closing = None
                continue
            line = raw.strip()
            if line.startswith("["):
                start = 2 if line.startswith("[[") else 1
                parsed = _read_key(line, start)
                if parsed is not None:
                    table = parsed[0]
                    self._lines.setdefault(table, number)
                continue
            parsed = _read_key(line, 0)
            if parsed is None or not line[parsed[1] :].lstrip().startswith("="):
                continue
            self._lines.setdefault(table + parsed[0], number)
            value = line[parsed[1] :].lstrip()[1:].lstrip()
            for delimiter in ('"""', "'''"):
                if value.startswith(delimiter) and delimiter not in value[3:]:
                    closing = delimiter

    def find(self, path: tuple[str, ...]) -> int | None:
        if path in self._lines:
            return self._lines[path]
        below = [line for key, line in self._lines.items() if key[: len(path)] == path]
        return min(below) if below else None


def _read_key(line: str, index: int) -> tuple[tuple[str, ...], int] | None:
    """A (dotted) TOML key starting at `index`: its parts and where it ends; None if there is none."""
    parts: list[str] = []
    while True:
        while index < len(line) and line[index] in " \t":
            index += 1
        if index >= len(line):
            return None
        quote = line[index]
        if quote in "\"'":
            end = line.find(quote, index + 1)
            if end < 0:
                return None
            part = line[index + 1 : end]
            parts.append(_unescape(part) if quote == '"' else part)
            index = end + 1
        else:
            match = _BARE_KEY.match(line, index)
            if match is None:
                return None
            parts.append(match.group())
            index = match.end()
        while index < len(line) and line[index] in " \t":
            index += 1
        if index < len(line) and line[index] == ".":
            index += 1
            continue
        return tuple(parts), index


def _unescape(part: str) -> str:
    # TOML's basic-string escapes are JSON's, plus \U and \e: enough to place a key for an error message.
    try:
        return str(json.loads(f'"{part}"'))
    except ValueError:
        return part
