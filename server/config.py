"""Node configuration: defaults, then a TOML file, then QPC_SERVER_* environment variables, then CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "QPC_SERVER_"
LOOPS = ("asyncio", "uvloop")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "quicnprotochat" / "node"


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    # "host:port"; an empty string turns that listener off. Port 0 picks a free port.
    quic_listen: str = "127.0.0.1:7700"
    tcp_listen: str = "127.0.0.1:7700"
    log_level: str = "info"
    # The node's asyncio event loop: "uvloop" (the default; faster, see docs/BENCHMARKS.md) or "asyncio" (the
    # standard library's).
    loop: str = "uvloop"
    allow_sealed_sender: bool = False
    # Must stay above max_wait_ms: a parked fetchWait must not look like an idle connection.
    quic_idle_timeout_s: float = 60.0
    max_payload_bytes: int = 1024 * 1024
    max_inbox_depth: int = 10_000
    max_inbox_bytes: int = 64 * 1024 * 1024
    message_ttl_seconds: int = 7 * 24 * 3600
    max_fetch_limit: int = 1000
    # One fetch/peek response carries at most this many payload bytes (or one message, when a single one is larger).
    max_fetch_bytes: int = 16 * 1024 * 1024
    max_wait_ms: int = 30_000
    max_key_packages_per_identity: int = 100
    max_endpoint_bytes: int = 4096
    # Where the node keeps its data: empty means `node.sqlite3` in data_dir; or a path, `sqlite:///path`, or
    # `postgresql://...` for several nodes sharing one database.
    store: str = ""
    session_ttl_seconds: int = 24 * 3600
    login_state_seconds: int = 60
    # Token buckets: calls per second and burst, per authenticated identity and per source address (every call);
    # failed OPAQUE login finishes per (username, source address); OPAQUE login calls per address; sealed-sender
    # enqueues per connection.
    rate_per_identity: float = 500.0
    burst_per_identity: int = 1000
    rate_per_address: float = 2000.0
    burst_per_address: int = 4000
    login_rate_per_username: float = 0.2
    login_burst_per_username: int = 10
    login_rate_per_address: float = 2.0
    login_burst_per_address: int = 30
    sealed_rate_per_connection: float = 50.0
    sealed_burst_per_connection: int = 100
    # How often expired messages, sessions and login states are swept.
    sweep_interval_s: float = 60.0
    # ── Faults, health and metrics ──
    # Free space (bytes) where the SQLite store lives under which new messages are refused with `resource_exhausted:
    # disk full`: what stays free lets receivers drain and the WAL be checkpointed.
    min_free_disk_bytes: int = 64 * 1024 * 1024
    # host:port (loopback only) for Prometheus `/metrics`; empty: no metrics endpoint.
    metrics_listen: str = ""
    # How long the node remembers an enqueue's idempotency key (and answers a retry with the first seq).
    idempotency_window_s: int = 3600
    # At most this many keys are remembered per sender; past it the oldest is forgotten first.
    max_idempotency_keys_per_sender: int = 10_000
    # Held back next to the SQLite database in a file, and given up only for deletions when the disk fills.
    disk_reserve_bytes: int = 8 * 1024 * 1024
    # Group sequencer (submitCommit): deliveries plus welcomes per call, bytes per call (message and payloads),
    # keys in a group's member set, groups an identity may create, how many epochs back a retried commit
    # still gets its first answer (older ones are answered `stale`), and proposals one epoch of a group may hold.
    max_commit_deliveries: int = 1000
    max_commit_bytes: int = 8 * 1024 * 1024
    max_group_members: int = 1000
    max_groups_per_identity: int = 1000
    group_log_epochs: int = 1000
    max_group_proposals_per_epoch: int = 100
    # ── Secrets at rest and QUIC retry ──
    # The root key that seals the TLS key and the server secrets: a file of 32 random bytes (`qpc-server init`
    # makes one), or a passphrase through Argon2id (QPC_SERVER_ROOT_PASSPHRASE, or asked on the terminal; its salt
    # lives in the data dir). Neither: secrets are kept in clear (development and tests).
    root_key_file: str = ""
    root_key_passphrase: bool = False
    # Answer new QUIC connections with a Retry (stateless address validation, against spoofed-source floods).
    # Tokens are sealed under a key that rotates every quic_retry_period_s; the previous one is still accepted.
    quic_retry: bool = False
    quic_retry_period_s: float = 60.0
    # ── What one client can make the node hold (hostile clients) ──────────────────────────────────────────────
    # Answer bytes held for one connection (unacknowledged on QUIC, unsent on TLS): past it, the node reads no
    # further calls from that connection until its client reads (one answer may pass it: a fetch is never cut).
    max_unsent_bytes_per_connection: int = 4 * 1024 * 1024
    # Calls running at once on one connection; past it the node stops reading the connection (backpressure).
    max_calls_per_connection: int = 64
    # fetchWait/peekWait calls parked at once, per connection and per identity (over all its connections).
    max_parked_per_connection: int = 16
    max_parked_per_identity: int = 64
    # Registration calls (start and finish each count) per source address and over the whole node.
    register_rate_per_address: float = 1.0
    register_burst_per_address: int = 60
    register_rate_total: float = 20.0
    register_burst_total: int = 400
    # batchEnqueue: recipients x payload bytes one call may store.
    max_batch_bytes: int = 64 * 1024 * 1024
    # Messages one sender may have queued in someone else's default inbox at once (its share of max_inbox_depth).
    max_inbox_share_per_sender: int = 1000
    # KeyPackage fetches per (caller, target identity): one account cannot drain another's one-time packages.
    key_package_rate_per_pair: float = 1 / 60
    key_package_burst_per_pair: int = 16
    # Name look-ups (resolveUser) per identity and per source address: the directory cannot be scraped.
    resolve_rate_per_identity: float = 0.1
    resolve_burst_per_identity: int = 100
    resolve_rate_per_address: float = 1.0
    resolve_burst_per_address: int = 300
    # Connections: a QUIC or TLS handshake must finish within handshake_timeout_s; a TLS connection that sends
    # nothing and has no call running for tcp_idle_timeout_s is closed (QUIC has quic_idle_timeout_s); caps on
    # connections in all, per source address, and on connections that have not authenticated a call yet.
    handshake_timeout_s: float = 10.0
    tcp_idle_timeout_s: float = 60.0
    max_connections: int = 10_000
    max_connections_per_address: int = 256
    max_unauthenticated_connections: int = 512
    # Bytes of incoming messages not yet complete (and received bytes the node has not read yet), over all
    # connections: past it the connections that have held bytes the longest are closed. At least the largest
    # message (max_message_bytes), so that one of those always fits.
    max_incoming_bytes_in_progress: int = 128 * 1024 * 1024
    # Bootstrap messages one connection may send (a client needs one); past it the connection is closed.
    max_bootstraps_per_connection: int = 16
    # ── Attachments (putBlob/getBlob): the largest blob, what one identity may keep at once, and how long a blob
    # is kept. ──
    max_blob_bytes: int = 16 * 1024 * 1024
    max_blob_bytes_per_identity: int = 256 * 1024 * 1024
    blob_ttl_seconds: int = 7 * 24 * 3600
    # ── P2P endpoint records: resolveEndpoint per identity and per source address (a record reveals network
    # addresses: they cannot be harvested in bulk). ──
    resolve_endpoint_rate_per_identity: float = 1.0
    resolve_endpoint_burst_per_identity: int = 300
    resolve_endpoint_rate_per_address: float = 5.0
    resolve_endpoint_burst_per_address: int = 1000
    # ── Bots: key login (authChallenge/authRespond) ──
    # How long an owner's clients have to answer a new bot key's approval request (unanswered: refused), pending
    # requests one owner may have at once, and unanswered challenges one key may have at once (each may be answered
    # for login_state_seconds). Failed answers count like failed OPAQUE logins, per (key, source address).
    bot_approval_timeout_s: float = 120.0
    max_pending_bot_approvals_per_owner: int = 16
    max_bot_challenges_per_key: int = 64
    # ── New connections per source address (an IPv6 client counts by its /64), TLS and QUIC together: a token
    # bucket taken before the handshake. A TCP connection past it is reset when accepted; a QUIC Initial gets a
    # CONNECTION_CLOSE (CONNECTION_REFUSED). With quic_retry, only Initials whose token proves the address count.
    # The node tracks at most connection_rate_max_addresses addresses (idle ones, then the least recent, go first).
    # With workers > 1 each worker counts its own share. ──
    connection_rate_per_address: float = 10.0
    connection_burst_per_address: int = 100
    connection_rate_max_addresses: int = 100_000
    # ── Every core: node processes serving the same ports (SO_REUSEPORT), each a node of the one PostgreSQL
    # database; a supervisor restarts a worker that dies. Worker i serves metrics on metrics_listen's port + i. ──
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.quic_listen and not self.tcp_listen:
            raise ConfigError("at least one of quic_listen and tcp_listen must be set")
        for name in ("quic_listen", "tcp_listen"):
            value = getattr(self, name)
            if value:
                parse_listen(value, name)
        if self.quic_idle_timeout_s * 1000 <= self.max_wait_ms:
            raise ConfigError("quic_idle_timeout_s must be longer than max_wait_ms")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", "float") and value <= 0:
                raise ConfigError(f"{field.name} must be positive, got {value}")
        if self.tcp_idle_timeout_s * 1000 <= self.max_wait_ms:
            raise ConfigError("tcp_idle_timeout_s must be longer than max_wait_ms")
        if self.max_incoming_bytes_in_progress < self.max_message_bytes:
            raise ConfigError(
                f"max_incoming_bytes_in_progress must be at least the largest message ({self.max_message_bytes})"
            )
        if self.max_parked_per_connection >= self.max_calls_per_connection:
            raise ConfigError("max_parked_per_connection must be below max_calls_per_connection")
        if self.loop not in LOOPS:
            raise ConfigError(f"loop must be {' or '.join(LOOPS)}, got {self.loop!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.workers > 1 and not self.store_location.startswith(POSTGRES_SCHEMES):
            raise ConfigError(
                "workers > 1 needs the PostgreSQL store (store = postgresql://...): a SQLite store is written by one "
                "process's writer thread, and its wake-ups reach only that process's waiters"
            )
        if self.metrics_listen:
            host, _ = parse_listen(self.metrics_listen, "metrics_listen")
            if not _is_loopback(host):
                raise ConfigError(f"metrics_listen must be a loopback address (127.0.0.0/8, ::1), got {host!r}")

    @property
    def store_location(self) -> str:
        return self.store or str(self.data_dir / "node.sqlite3")

    @property
    def max_message_bytes(self) -> int:
        """The largest Cap'n Proto message the node reads or writes (kj refuses to send past its own read limit):
        a call with a maximal payload, or a response with a full fetch (a message larger than max_fetch_bytes
        still travels alone, and every envelope costs a few words of framing)."""
        largest_response = max(self.max_fetch_bytes, self.max_payload_bytes) + 32 * self.max_fetch_limit
        # A submitCommit's framing: a recipient key, a channel id and pointers per delivery, a key per member.
        largest_commit = self.max_commit_bytes + 128 * self.max_commit_deliveries + 48 * self.max_group_members
        return max(self.max_payload_bytes, largest_response, largest_commit, self.max_blob_bytes) + 64 * 1024


class ConfigError(ValueError):
    pass


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_listen(value: str, what: str = "address") -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{what} must look like host:port, got {value!r}")
    return host, int(port_text)


def _coerce(name: str, type_name: str, value: Any) -> Any:
    try:
        if type_name == "Path":
            return Path(value).expanduser()
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if type_name == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if type_name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} as {type_name}") from None


def load_config(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    fields = {field.name: str(field.type) for field in dataclasses.fields(NodeConfig)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read config file {config_file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {config_file} is not valid TOML: {error}") from None
        unknown = sorted(set(document) - set(fields))
        if unknown:
            raise ConfigError(f"config file {config_file}: unknown keys {', '.join(unknown)}")
        values.update(document)
    environ = os.environ if environ is None else environ
    for name in fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    for name, value in (overrides or {}).items():
        if name not in fields:
            raise ConfigError(f"unknown setting {name}")
        if value is not None:
            values[name] = value
    coerced = {name: _coerce(name, fields[name], value) for name, value in values.items()}
    return NodeConfig(**coerced)
