"""How a `ChatClient` is set up: `ChatConfig`, where state lives by default, and the names every part shares."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quicnprotochat.client.known_hosts import KnownHosts
from quicnprotochat.client.node_client import Transport
from quicnprotochat.common.usernames import normalize_username
from quicnprotochat.native import VAULT_GROUPS_IN_MEMORY

NOTES_NAME = "@me"
"""The self-DM notepad: local only, no MLS, nothing sent to the node."""
SELF_ALIASES = ("me", "@me")
MAX_GROUP_NAME = 64

PasswordSource = str | Callable[[], str] | None
"""The account password, or a function asked for it only when a login is needed (a no-echo prompt)."""


@dataclass
class ChatConfig:
    server: str
    """host:port of the node."""
    username: str
    state_dir: Path
    password: PasswordSource = None
    state_password: str | None = None
    """None: state is kept in clear (the client says so: `ChatClient.state_warning`)."""
    transport: Transport = "quic"
    server_fingerprint: str | None = None
    known_hosts: KnownHosts | None = None
    register: bool = False
    """Register the account on first use of this state directory (an existing account is then logged into)."""
    fresh_login: bool = False
    """Log in with the password even if a cached session token is still valid."""
    key_packages: int = 10
    key_packages_low: int = 3
    wait_ms: int = 25_000
    """peekWait timeout of the background loops (must stay below the node's QUIC idle timeout)."""
    defer_seconds: float = 60.0
    """How long an envelope for a not-yet-known group is held back before it is dropped as an error."""
    connect_timeout: float = 10.0
    receipts: bool = True
    """Send delivery and read receipts to the senders of incoming messages (False: send none)."""
    # ── Direct delivery (`direct`): off unless asked for, because publishing reveals this device's network
    # addresses to every logged-in user who looks them up (see the README). ──
    p2p: bool = False
    """Run an iroh endpoint while the client runs (`start`), publish its signed address on the node, and send
    application messages straight to peers that publish theirs; the node stays the fallback."""
    p2p_relays: str = "off"
    """"off" (direct addresses only), "default" (iroh's public relays), or comma-separated relay URLs."""
    p2p_bind: tuple[str, ...] = ()
    """Local "ip:port" addresses for the endpoint (at most one IPv4 and one IPv6); empty: every interface."""
    p2p_timeout: float = 2.0
    """How long one direct attempt may take (look-up, connection, the peer storing it) before the node is used."""
    p2p_record_ttl: int = 600
    """Lifetime of the published record, in seconds; it is published again every third of it."""
    p2p_backoff_s: float = 30.0
    """After a failed direct attempt, that peer's messages go through the node for this long."""
    p2p_resolve_every_s: float = 60.0
    """How long a peer's resolved record is used before it is looked up again (never past its expiry)."""
    p2p_max_in_flight: int = 8
    """Direct copies to one peer sent and not yet answered (pipelined on its connection, answered in order); at
    most `direct_wire.MAX_IN_FLIGHT` (16), what every receiver holds per connection."""
    vault_groups_in_memory: int = VAULT_GROUPS_IN_MEMORY
    """How many MLS groups the vault keeps loaded between operations (at least 1): past that the least recently
    used one is dropped and read from the encrypted file again when next used. A client in thousands of groups (a
    bot) holds at most this many in memory; one in fewer pays nothing for the bound."""
    bot_owner: str | None = None
    """Log in by key alone, as a bot of this account (no password; `username` is the bot's name). The first
    login waits until the owner approves the key from one of their clients. See `ChatClient.open_bot`."""


def default_state_dir(username: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "quicnprotochat" / "client" / normalize_username(username)


def key_fingerprint(identity_key: bytes) -> str:
    """A short, human-comparable fingerprint of an identity key: SHA-256, first 16 bytes, hex in groups."""
    digest = hashlib.sha256(identity_key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))
