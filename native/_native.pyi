"""Type stubs of the Rust extension module ``quicnprotochat.native._native``."""

from types import TracebackType
from typing import Final, Literal

CIPHERSUITE_DEFAULT: Final[int]
"""0x0001 MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519."""
VAULT_GROUPS_IN_MEMORY: Final[int]
"""How many MLS groups a vault keeps in memory unless ``Vault.open`` is told otherwise (64)."""
CIPHERSUITE_XWING: Final[int]
"""0x004D MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519."""
ENVELOPE_VERSION: Final[int]
"""First byte of a hybrid envelope (0x01)."""
HYBRID_PUBLIC_KEY_LEN: Final[int]
"""X-Wing public key length (1216)."""
HYBRID_ENC_LEN: Final[int]
"""X-Wing encapsulation length (1120)."""
HYBRID_KEM_ID: Final[int]
"""HPKE KEM id of X-Wing (0x647A)."""

class NativeError(Exception):
    """Base class of every error raised by the native core."""

class MalformedError(NativeError):
    """Input bytes do not parse."""

class DecryptError(NativeError):
    """Decryption or message authentication failed."""

class InvalidKeyPackage(NativeError):
    """A KeyPackage failed validation."""

class WrongEpoch(NativeError):
    """An MLS message is for another epoch than the group's."""

class OpaqueError(NativeError):
    """OPAQUE failure; a wrong password and an unknown user raise the same error."""

class InvalidKeyError(NativeError):
    """A key has the wrong size or does not decode."""

class StorageError(NativeError):
    """Vault storage failure."""

class VaultKeyError(StorageError):
    """The vault cannot be decrypted with the given key (or is not a vault)."""

class GroupNotFound(NativeError):
    """Unknown group id."""

class StateError(NativeError):
    """Operation not possible in the current state (closed vault, not a member, ...)."""

class UnsupportedError(NativeError):
    """Unsupported ciphersuite or feature."""

def version() -> str: ...

# Hybrid envelopes (RFC 9180 HPKE base mode, X-Wing 0x647A, HKDF-SHA256, ChaCha20-Poly1305).

def seal_envelope(recipient_public_key: bytes, payload: bytes, info: bytes) -> bytes:
    """Return ``0x01 | enc (1120 bytes) | ciphertext``; raises InvalidKeyError."""

def envelope_info(recipient_identity_key: bytes, channel_id: bytes | None = None) -> bytes:
    """``b"quicnprotochat envelope v1" | recipient identity key (32) | channel id (empty or 16)``."""

def validate_hybrid_public_key(public_key: bytes) -> None:
    """Raise InvalidKeyError unless ``public_key`` is a well-formed X-Wing public key."""

class HybridKeyPair:
    """An X-Wing key pair whose 32-byte seed stays in Rust memory."""

    @staticmethod
    def generate() -> HybridKeyPair: ...
    @staticmethod
    def from_seed(seed: bytes) -> HybridKeyPair: ...
    @property
    def public_key(self) -> bytes: ...
    def open(self, envelope: bytes, info: bytes) -> bytes:
        """Raise MalformedError (framing) or DecryptError (authentication)."""
    def export_secret_seed(self) -> bytes:
        """The secret seed, only for callers that must persist it (prefer ``Vault``)."""

# MLS

class KeyPackageInfo:
    @property
    def identity_key(self) -> bytes:
        """Ed25519 signature key of the leaf (= basic credential identity), 32 bytes."""
    @property
    def ciphersuite(self) -> int: ...
    @property
    def is_last_resort(self) -> bool: ...
    @property
    def not_before(self) -> int:
        """Unix seconds."""
    @property
    def not_after(self) -> int:
        """Unix seconds."""
    @property
    def reference(self) -> bytes:
        """KeyPackageRef (RFC 9420 section 5.2)."""

def validate_key_package(data: bytes) -> KeyPackageInfo:
    """Parse and validate a KeyPackage, raw (TLS-encoded) or wrapped in an MLSMessage
    (signatures, lifetime, ciphersuite, credential == signature key); raise InvalidKeyPackage."""

class MlsMessageInfo:
    """The clear header of a PublicMessage or PrivateMessage (RFC 9420 section 6); unverified."""

    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int: ...
    @property
    def content_type(self) -> Literal["application", "proposal", "commit"]: ...
    @property
    def wire_format(self) -> Literal["public", "private"]: ...

def mls_message_info(message: bytes) -> MlsMessageInfo:
    """Read group id, epoch, content type and wire format of an MLSMessage carrying a
    PublicMessage or PrivateMessage, without any group state. Anything else (Welcome,
    KeyPackage, GroupInfo, garbage, trailing bytes) raises MalformedError with a reason."""

def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool: ...

class ProcessedMessage:
    @property
    def kind(self) -> Literal["application", "commit", "proposal"]: ...
    @property
    def group_id(self) -> bytes: ...
    @property
    def epoch(self) -> int:
        """Epoch of the group after processing."""
    @property
    def sender(self) -> bytes | None:
        """Identity key of the sending member."""
    @property
    def plaintext(self) -> bytes | None:
        """Application messages only."""
    @property
    def added(self) -> list[bytes]:
        """Identity keys added by a commit (or an add proposal)."""
    @property
    def removed(self) -> list[bytes]:
        """Identity keys removed by a commit (or a remove proposal)."""
    @property
    def self_removed(self) -> bool:
        """True when the commit removed this vault's member."""
    @property
    def digest(self) -> bytes:
        """SHA-256 of the message bytes: its key in the vault's journal (``forget_processed``)."""

class Vault:
    """Encrypted client state (SQLCipher): Ed25519 identity, X-Wing key, MLS groups.
    Every method runs without the GIL and in one database transaction."""

    @staticmethod
    def open(path: str, key: bytes, max_groups_in_memory: int = ...) -> Vault:
        """Open or create; ``key`` is 32 raw bytes. Raises VaultKeyError on a wrong key. At most
        ``max_groups_in_memory`` groups (>= 1, else StateError; default VAULT_GROUPS_IN_MEMORY) stay
        loaded between calls: past that the least recently used one is dropped and read from the
        file again when next used."""
    @property
    def groups_in_memory(self) -> int:
        """How many groups are loaded now (never more than ``max_groups_in_memory``)."""
    def close(self) -> None: ...
    def __enter__(self) -> Vault: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    @property
    def identity_key(self) -> bytes:
        """32-byte Ed25519 public key (the MLS basic credential)."""
    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature by the identity key."""
    def hybrid_public_key(self) -> bytes:
        """1216-byte X-Wing public key."""
    def open_envelope(self, envelope: bytes, info: bytes) -> bytes: ...
    def rotate_hybrid_key(self) -> bytes:
        """Replace the X-Wing key pair; return the new public key."""
    def create_key_package(self, last_resort: bool = False, ciphersuite: int = ...) -> bytes:
        """TLS-serialized KeyPackage; its private keys stay in the vault."""
    def create_group(self, ciphersuite: int = ...) -> bytes:
        """Return the new group's id."""
    # Commit-creating calls leave the commit pending (not applied) until merge_pending_commit;
    # meanwhile encrypt, leave_group and further commits raise StateError ("a commit is
    # pending"). Pending proposals received earlier are committed with them.
    def add_members(self, group_id: bytes, key_packages: list[bytes]) -> tuple[bytes, bytes]:
        """Return (commit, welcome); packages raw or wrapped in an MLSMessage. The commit renews no
        path (this member's leaf stays as it is: ``self_update`` renews it) unless a pending
        proposal it commits needs one (RFC 9420 section 12.4)."""
    def remove_members(self, group_id: bytes, identity_keys: list[bytes]) -> bytes:
        """Return the commit removing every leaf of these identity keys."""
    def self_update(self, group_id: bytes) -> bytes:
        """Rotate own leaf keys; return the commit."""
    def commit_pending_proposals(self, group_id: bytes) -> tuple[bytes, bytes | None]:
        """Commit received proposals (none: an empty commit); return (commit, welcome or None)."""
    def merge_pending_commit(self, group_id: bytes) -> None:
        """Apply this member's pending commit (the node accepted it); StateError if none."""
    def clear_pending_commit(self, group_id: bytes) -> None:
        """Drop this member's pending commit (the node took another); no-op if none."""
    def pending_commit(self, group_id: bytes) -> tuple[bytes, bytes | None] | None:
        """The pending commit's bytes and its Welcome, exactly as first returned (durable)."""
    def leave_group(self, group_id: bytes) -> bytes:
        """Return a proposal removing this member (a PrivateMessage); another member commits
        it (``commit_pending_proposals`` or any commit of theirs)."""
    def delete_group(self, group_id: bytes) -> None: ...
    def join_group(self, welcome: bytes) -> bytes:
        """Return the joined group's id. A local group of that id is discarded first (rejoin);
        the same Welcome bytes again return the same id (journaled until forget_processed)."""
    def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes: ...
    def process(self, message: bytes) -> ProcessedMessage:
        """Process a group message, PublicMessage or PrivateMessage (the group id is read from
        it); commits are merged, proposals kept for a later commit. Idempotent: the result is
        journaled in the same transaction, and the same bytes again return it."""
    def process_batch(self, messages: list[bytes]) -> list[ProcessedMessage | NativeError]:
        """``process`` of each message in order, all in one transaction (one durable commit): per
        message its result or the exception ``process`` would have raised (nothing of a failed
        one is kept). Raises StorageError, storing nothing, if the transaction fails."""
    def forget_processed(self, digests: list[bytes]) -> None:
        """Drop journal entries (``ProcessedMessage.digest``, or SHA-256 of a joined Welcome)
        once their result is stored. Entries never forgotten are dropped after 30 days."""
    def members(self, group_id: bytes) -> list[bytes]:
        """Identity keys in leaf order."""
    def export_secret(self, group_id: bytes, label: str, context: bytes, length: int) -> bytes:
        """The MLS exporter (RFC 9420 section 8.5) of the current epoch; raises StateError for
        a length outside 1..=255 hash lengths or an inactive group."""
    def epoch(self, group_id: bytes) -> int: ...
    def group_ciphersuite(self, group_id: bytes) -> int: ...
    def is_active(self, group_id: bytes) -> bool: ...
    def group_ids(self) -> list[bytes]: ...

# OPAQUE (RFC 9807; ristretto255, 3DH/SHA-512, Argon2id m=64 MiB t=3 p=4)

class OpaqueServer:
    @staticmethod
    def generate() -> OpaqueServer: ...
    @staticmethod
    def from_bytes(setup: bytes) -> OpaqueServer: ...
    def to_bytes(self) -> bytes:
        """SECRET serialization of the setup; persist it sealed."""
    @property
    def public_key(self) -> bytes: ...
    def registration_start(self, credential_identifier: bytes, request: bytes) -> bytes: ...
    @staticmethod
    def registration_finish(upload: bytes) -> bytes:
        """Return the password file to store."""
    def login_start(
        self, credential_identifier: bytes, request: bytes, password_file: bytes | None
    ) -> tuple[bytes, bytes]:
        """Return (KE2, secret server state); ``None`` runs the fake-record path."""
    @staticmethod
    def login_finish(state: bytes, finalization: bytes) -> bytes:
        """Return the session key; raise OpaqueError if the client did not authenticate."""

class OpaqueClientRegistration:
    @staticmethod
    def start(password: bytes) -> tuple[OpaqueClientRegistration, bytes]: ...
    def finish(self, response: bytes) -> tuple[bytes, bytes]:
        """Return (upload, export_key). Single use."""

class OpaqueClientLogin:
    @staticmethod
    def start(password: bytes) -> tuple[OpaqueClientLogin, bytes]: ...
    def finish(self, response: bytes) -> tuple[bytes, bytes]:
        """Return (finalization, session_key); raise OpaqueError on a wrong password."""

# Root key and sealed records at rest (XChaCha20-Poly1305 under HKDF-SHA256 subkeys, one per purpose)

SEALED_SCHEME: int
OPAQUE_SETUP_PURPOSE: str

class RootKey:
    """The node's root key on a locked page (mlock, MADV_DONTDUMP, zeroized on drop) inside the native module."""

    @staticmethod
    def generate() -> RootKey: ...
    @staticmethod
    def from_key_file(path: str) -> RootKey:
        """Raise InvalidKeyError when the file is missing, unreadable or not exactly 32 bytes."""
    @staticmethod
    def from_passphrase(
        passphrase: bytes | bytearray, salt: bytes, *, memory_kib: int, iterations: int, lanes: int
    ) -> RootKey:
        """Argon2id of the passphrase (runs without the GIL)."""
    def write_key_file(self, path: str) -> None:
        """Write the key to a new file, mode 0600; never overwrites."""
    @property
    def key_id(self) -> bytes:
        """8 bytes derived from the key (not the key): tells records of another root key apart."""
    @property
    def memory_protection(self) -> tuple[bool, bool, int]:
        """(locked in RAM, excluded from core dumps, address of the key's page)."""
    def seal(self, purpose: str, context: bytes, plaintext: bytes | bytearray) -> bytes: ...
    def open(self, purpose: str, context: bytes, record: bytes) -> bytearray:
        """The plaintext, in a bytearray the caller wipes; InvalidKeyError for a record of another root key,
        DecryptError for a damaged one, MalformedError/UnsupportedError for something else."""
    def reseal(self, new: RootKey, purpose: str, context: bytes, record: bytes) -> bytes:
        """Open under this key, seal under `new`; the plaintext never reaches Python."""
    def open_to_envelope(
        self, purpose: str, context: bytes, record: bytes, recipient_public_key: bytes, info: bytes
    ) -> bytes:
        """Open a record and seal its plaintext to an X-Wing public key (`seal_envelope`); the plaintext never
        reaches Python. Errors as `open`, and InvalidKeyError for a malformed recipient key."""
    def seal_opaque_server(self, server: OpaqueServer, context: bytes) -> bytes: ...
    def open_opaque_server(self, context: bytes, record: bytes) -> OpaqueServer: ...

def sealed_record_info(record: bytes) -> tuple[int, bytes]:
    """(scheme, key id) from a sealed record's header."""
