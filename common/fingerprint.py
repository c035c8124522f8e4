"""Certificate fingerprints: SHA-256 of the SubjectPublicKeyInfo, lowercase hex."""

from __future__ import annotations

import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def spki_fingerprint(certificate: x509.Certificate) -> str:
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def spki_fingerprint_der(certificate_der: bytes) -> str:
    return spki_fingerprint(x509.load_der_x509_certificate(certificate_der))


def normalize_fingerprint(text: str) -> str:
    """Accepts hex with or without colons, any case; raises ValueError when it is not 32 bytes of hex."""
    cleaned = text.strip().replace(":", "").lower()
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError("a fingerprint is 64 hex digits (SHA-256 of the certificate's public key)")
    return cleaned


def fingerprints_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
