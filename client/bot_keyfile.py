"""A bot's key file: everything a bot needs to log in with no password (`ChatClient.open_bot`).

The bot's Ed25519 identity key lives, as every client's, in the native Vault of its state directory, encrypted
under the state password; the key file holds that password with the rest of the bot's settings, so whoever
reads the file can act as the bot. It is JSON, created once (never overwritten) with mode 0600, and refused when
others may read it:

    {"format": "quicnprotochat bot key v1", "name": "helper", "owner": "alice",
     "server": "127.0.0.1:7700", "server_fingerprint": "<hex or null>", "transport": "quic",
     "identity_key": "<base64url, as /bots shows it>", "state_dir": "helper.state", "state_key": "<hex>"}

`state_dir` is relative to the key file's directory unless absolute. `qpc bot new` writes one.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quicnprotochat.client.node_client import TRANSPORTS, Transport
from quicnprotochat.client.state import StateDir
from quicnprotochat.common.bot_keys import BotKeyError, bot_key_text, parse_bot_key
from quicnprotochat.common.errors import InvalidArgument
from quicnprotochat.common.usernames import normalize_username

FORMAT = "quicnprotochat bot key v1"
FILE_MODE = 0o600


class BotKeyFileError(ValueError):
    """The key file cannot be used; the message says why (never its secret)."""


@dataclass(frozen=True)
class BotKeyFile:
    path: Path
    name: str
    owner: str
    server: str
    server_fingerprint: str | None
    transport: Transport
    identity_key: bytes
    state_dir: Path
    """Absolute."""
    state_key: str

    @property
    def key_text(self) -> str:
        return bot_key_text(self.identity_key)


def _names(name: str, owner: str) -> tuple[str, str]:
    try:
        return normalize_username(name), normalize_username(owner)
    except InvalidArgument as error:
        raise BotKeyFileError(
            f"a bot's name and its owner's username follow the username rule: {error.reason}"
        ) from None


def _new_paths(path: Path, state_dir: Path | None) -> tuple[Path, Path, Path]:
    """(key file, state dir as written in it, state dir) for a new bot, checked free."""
    path = path.absolute()
    if path.exists():
        raise BotKeyFileError(f"{path} exists: a key file is never overwritten")
    relative = state_dir or Path(f"{path.stem}.state")
    root = relative if relative.is_absolute() else path.parent / relative
    if root.exists() and any(root.iterdir()):
        raise BotKeyFileError(f"{root} is not empty: a new bot needs a state directory of its own")
    return path, relative, root


def _write_new(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        raise BotKeyFileError(f"{path} exists: a key file is never overwritten") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


async def create_bot_key_file(
    path: Path,
    name: str,
    owner: str,
    server: str,
    *,
    server_fingerprint: str | None = None,
    transport: Transport = "quic",
    state_dir: Path | None = None,
) -> BotKeyFile:
    """A new bot: its state directory (with a fresh identity key) and its key file. Refuses to overwrite."""
    name, owner = _names(name, owner)
    path, relative, root = await asyncio.to_thread(_new_paths, path, state_dir)
    state_key = secrets.token_hex(32)
    state = await StateDir(root).open(state_key)
    try:
        vault = await asyncio.to_thread(state.open_vault)
        identity_key = vault.identity_key
        vault.close()
    finally:
        await state.close()
    document = {
        "format": FORMAT,
        "name": name,
        "owner": owner,
        "server": server,
        "server_fingerprint": server_fingerprint,
        "transport": transport,
        "identity_key": bot_key_text(identity_key),
        "state_dir": str(relative),
        "state_key": state_key,
    }
    await asyncio.to_thread(_write_new, path, json.dumps(document, indent=2) + "\n")
    return BotKeyFile(path, name, owner, server, server_fingerprint, transport, identity_key, root, state_key)


def _text(document: dict[str, Any], field: str, path: Path) -> str:
    value = document.get(field)
    if not isinstance(value, str) or not value:
        raise BotKeyFileError(f"{path}: {field} is missing or not text")
    return value


def load_bot_key_file(path: Path) -> BotKeyFile:
    path = path.absolute()
    try:
        mode = path.stat().st_mode
        raw = path.read_text(encoding="utf-8")
    except OSError as error:
        raise BotKeyFileError(f"cannot read the bot key file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BotKeyFileError(
            f"{path} may be read by others (mode {stat.S_IMODE(mode):04o}); it holds the bot's key: chmod 600 it"
        )
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeError):
        raise BotKeyFileError(f"{path} is not a bot key file (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BotKeyFileError(f"{path} is not a bot key file (format is not {FORMAT!r})")
    name, owner = _names(_text(document, "name", path), _text(document, "owner", path))
    transport = _text(document, "transport", path)
    if transport not in TRANSPORTS:
        raise BotKeyFileError(f"{path}: transport must be quic or tcp")
    fingerprint = document.get("server_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise BotKeyFileError(f"{path}: server_fingerprint must be text or null")
    try:
        identity_key = parse_bot_key(_text(document, "identity_key", path))
    except BotKeyError as error:
        raise BotKeyFileError(f"{path}: identity_key: {error}") from None
    state_dir = Path(_text(document, "state_dir", path))
    return BotKeyFile(
        path,
        name,
        owner,
        _text(document, "server", path),
        fingerprint,
        transport,  # type: ignore[arg-type]  # checked against TRANSPORTS above
        identity_key,
        state_dir if state_dir.is_absolute() else path.parent / state_dir,
        _text(document, "state_key", path),
    )
