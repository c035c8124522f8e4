"""The node's long-term TLS identity: a key and self-signed certificate made on first run, reused after. With a
root key, the private key is kept sealed (`node-key.sealed`) and never written in clear."""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from quicnprotochat.common.fingerprint import spki_fingerprint
from quicnprotochat.native import InvalidKeyError, NativeError, RootKey, sealed_record_info

KEY_FILE = "node-key.pem"  # the key in clear: a node without a root key, or one not yet started with one
SEALED_KEY_FILE = "node-key.sealed"  # the key sealed under the root key
CERT_FILE = "node-cert.pem"
TLS_KEY_PURPOSE = "tls-private-key"
TLS_KEY_CONTEXT = b"data-dir/" + SEALED_KEY_FILE.encode()
# Clients pin the key, not the certificate's dates: a long validity only spares operators a pointless renewal.
VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class NodeIdentity:
    """The certificate, and the private key as an OpenSSL object (aioquic takes it as is). `key_file` hands ssl,
    which loads keys from paths only, a file that exists in memory only."""

    cert_path: Path
    certificate: x509.Certificate
    private_key: PrivateKeyTypes
    sealed: bool
    _pem: Callable[[], bytearray]

    @property
    def fingerprint(self) -> str:
        return spki_fingerprint(self.certificate)

    @contextmanager
    def key_file(self) -> Iterator[str]:
        """A path to the key in PEM that names a memfd (never a file on disk), valid inside the context."""
        pem = self._pem()
        fd = os.memfd_create("qpc-node-key", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            yield f"/proc/self/fd/{fd}"
        finally:
            wipe(pem)
            os.close(fd)


class IdentityError(RuntimeError):
    pass


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def ensure_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def identity_files(data_dir: Path) -> tuple[Path, Path, Path]:
    """(clear key, sealed key, certificate)."""
    return data_dir / KEY_FILE, data_dir / SEALED_KEY_FILE, data_dir / CERT_FILE


def load_identity(data_dir: Path, root: RootKey | None = None) -> NodeIdentity | None:
    """The identity in `data_dir`, read and checked, writing nothing. A sealed key needs `root` (and wins over a
    clear one left by an interrupted first sealed start)."""
    key_path, sealed_path, cert_path = identity_files(data_dir)
    if not key_path.exists() and not sealed_path.exists() and not cert_path.exists():
        return None
    if not cert_path.exists() or not (key_path.exists() or sealed_path.exists()):
        raise IdentityError(
            f"{data_dir} holds only half of the node identity ({CERT_FILE} goes with {KEY_FILE} or {SEALED_KEY_FILE})"
        )
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise IdentityError(f"the node certificate in {data_dir} cannot be read") from None
    sealed = sealed_path.exists()
    if sealed:
        if root is None:
            raise IdentityError(
                f"the node key in {data_dir} is sealed: give the root key (--root-key-file or --root-passphrase)"
            )
        record = sealed_path.read_bytes()
        pem_source = functools.partial(open_sealed_key, root, record, sealed_path)
    else:
        pem_source = functools.partial(_read_clear_key, key_path)
    pem = pem_source()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise IdentityError(f"the node key in {data_dir} cannot be read") from None
    finally:
        wipe(pem)
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise IdentityError(f"the key and certificate in {data_dir} do not belong together")
    return NodeIdentity(cert_path, certificate, key, sealed, pem_source)


def open_sealed_key(root: RootKey, record: bytes, path: Path) -> bytearray:
    try:
        return root.open(TLS_KEY_PURPOSE, TLS_KEY_CONTEXT, record)
    except InvalidKeyError:
        raise IdentityError(f"{path} is sealed under another root key") from None
    except NativeError:
        raise IdentityError(f"{path} cannot be opened: damaged or tampered with") from None


def _read_clear_key(path: Path) -> bytearray:
    with open(path, "rb") as handle:
        buffer = bytearray(os.fstat(handle.fileno()).st_size)
        handle.readinto(buffer)
    return buffer


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_or_create_identity(data_dir: Path, root: RootKey | None = None) -> tuple[NodeIdentity, bool]:
    """The node's identity, created when the data dir has none (sealed when there is a root key); the flag says
    whether it was just created. A clear key is sealed once a root key is given (`seal_identity`)."""
    ensure_data_dir(data_dir)
    existing = load_identity(data_dir, root)
    if existing is not None:
        return seal_identity(data_dir, existing, root), False
    return create_identity(data_dir, root), True


def create_identity(data_dir: Path, root: RootKey | None) -> NodeIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quicnprotochat node")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, sealed_path, cert_path = identity_files(data_dir)
    pem = bytearray(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    try:
        if root is None:
            write_private_file(key_path, pem)
        else:
            write_private_file(sealed_path, root.seal(TLS_KEY_PURPOSE, TLS_KEY_CONTEXT, pem))
    finally:
        wipe(pem)
    write_private_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    identity = load_identity(data_dir, root)
    assert identity is not None
    return identity


def seal_identity(data_dir: Path, identity: NodeIdentity, root: RootKey | None) -> NodeIdentity:
    """Seals a clear key under `root` and removes the clear file (overwritten first). The sealed file is complete
    before the clear one goes, so a crash in between leaves both, and the next start finishes the job."""
    key_path, sealed_path, _ = identity_files(data_dir)
    if root is None:
        return identity
    if not identity.sealed:
        pem = identity._pem()
        try:
            write_private_file(sealed_path, root.seal(TLS_KEY_PURPOSE, TLS_KEY_CONTEXT, pem))
        finally:
            wipe(pem)
    if key_path.exists():
        shred(key_path)
    sealed = load_identity(data_dir, root)
    assert sealed is not None
    return sealed


def shred(path: Path) -> None:
    """Overwrites a file with zeros, syncs, then removes it. (A copy-on-write or flash file system may still keep
    the old blocks; docs/THREAT_MODEL.md says so.)"""
    size = path.stat().st_size
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes | bytearray) -> None:
    """Writes a file readable by the node's user only, atomically, so a crash never leaves half a key."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def rekey_identity(data_dir: Path, old: RootKey, new: RootKey) -> bool:
    """Moves the sealed key to `new` (a clear one is sealed under it); the file is replaced atomically, so an
    interruption leaves it under the old key or the new one. False when it was already under `new`."""
    key_path, sealed_path, _ = identity_files(data_dir)
    if sealed_path.exists():
        record = sealed_path.read_bytes()
        if sealed_record_info(record)[1] == new.key_id:
            moved = False
        else:
            try:
                resealed = old.reseal(new, TLS_KEY_PURPOSE, TLS_KEY_CONTEXT, record)
            except NativeError:
                raise IdentityError(f"{sealed_path} opens under neither the old nor the new root key") from None
            write_private_file(sealed_path, resealed)
            moved = True
    elif key_path.exists():
        pem = _read_clear_key(key_path)
        try:
            write_private_file(sealed_path, new.seal(TLS_KEY_PURPOSE, TLS_KEY_CONTEXT, pem))
        finally:
            wipe(pem)
        moved = True
    else:
        return False
    if key_path.exists():
        shred(key_path)
    return moved


def identity_root_key_id(data_dir: Path) -> bytes | None:
    """The root key id the sealed node key is under, None when it is not sealed."""
    _, sealed_path, _ = identity_files(data_dir)
    if not sealed_path.exists():
        return None
    try:
        return sealed_record_info(sealed_path.read_bytes())[1]
    except NativeError:
        raise IdentityError(f"{sealed_path} is not a sealed record") from None


def read_certificate(data_dir: Path) -> tuple[Path, str] | None:
    """(certificate path, fingerprint) without touching the private key: enough for `info` and `health`."""
    cert_path = data_dir / CERT_FILE
    if not cert_path.exists():
        return None
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise IdentityError(f"the node certificate in {data_dir} cannot be read") from None
    return cert_path, spki_fingerprint(certificate)
