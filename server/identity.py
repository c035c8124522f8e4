"""The node's long-term TLS identity: a key and self-signed certificate made on first run, reused after."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quicnprotochat.common.fingerprint import spki_fingerprint

KEY_FILE = "node-key.pem"
CERT_FILE = "node-cert.pem"
# Clients pin the key, not the certificate's dates: a long validity only spares operators a pointless renewal.
VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class NodeIdentity:
    key_path: Path
    cert_path: Path
    certificate: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return spki_fingerprint(self.certificate)


class IdentityError(RuntimeError):
    pass


def ensure_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def load_identity(data_dir: Path) -> NodeIdentity | None:
    key_path, cert_path = data_dir / KEY_FILE, data_dir / CERT_FILE
    if not key_path.exists() and not cert_path.exists():
        return None
    if not key_path.exists() or not cert_path.exists():
        raise IdentityError(f"{data_dir} holds only half of the node identity ({KEY_FILE} and {CERT_FILE} go together)")
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        raise IdentityError(f"the node identity in {data_dir} cannot be read") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise IdentityError(f"the key and certificate in {data_dir} do not belong together")
    return NodeIdentity(key_path, cert_path, certificate)


def load_or_create_identity(data_dir: Path) -> tuple[NodeIdentity, bool]:
    """The node's identity, created when the data dir has none; the flag says whether it was just created."""
    ensure_data_dir(data_dir)
    existing = load_identity(data_dir)
    if existing is not None:
        return existing, False
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path, cert_path = data_dir / KEY_FILE, data_dir / CERT_FILE
    write_private_file(key_path, key_pem)
    write_private_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return NodeIdentity(key_path, cert_path, certificate), True


def write_private_file(path: Path, data: bytes) -> None:
    """Writes a file readable by the node's user only, atomically, so a crash never leaves half a key."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
