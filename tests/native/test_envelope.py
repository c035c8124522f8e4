"""Hybrid envelope v1 against an independent HPKE implementation (pyca/cryptography, OpenSSL)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, MLKEM768X25519PrivateKey, MLKEM768X25519PublicKey, Suite

import quicnprotochat.native as native

SUITE = Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
INFO = b"quicnprotochat envelope v1" + bytes(32) + bytes(16)


def xwing_private_from_seed(seed: bytes) -> MLKEM768X25519PrivateKey:
    """X-Wing key expansion (draft-connolly-cfrg-xwing-kem): SHAKE256(seed, 96) = d | z | sk_X."""
    expanded = hashlib.shake_256(seed).digest(96)
    return MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


def public_from_bytes(data: bytes) -> MLKEM768X25519PublicKey:
    return MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(data[:1184]),
        x25519.X25519PublicKey.from_public_bytes(data[1184:]),
    )


def test_constants() -> None:
    assert native.HYBRID_PUBLIC_KEY_LEN == 1216
    assert native.HYBRID_ENC_LEN == 1120
    assert native.ENVELOPE_VERSION == 1
    assert native.HYBRID_KEM_ID == 0x647A


def test_envelope_info_layout() -> None:
    identity = bytes(range(32))
    channel = bytes(range(16))
    assert native.envelope_info(identity) == b"quicnprotochat envelope v1" + identity
    assert native.envelope_info(identity, channel) == b"quicnprotochat envelope v1" + identity + channel
    with pytest.raises(native.InvalidKeyError):
        native.envelope_info(identity[:31])
    with pytest.raises(native.MalformedError):
        native.envelope_info(identity, channel[:15])


def test_native_seal_opened_by_cryptography() -> None:
    seed = os.urandom(32)
    recipient = native.HybridKeyPair.from_seed(seed)
    payload = b"sealed natively" * 10
    envelope = native.seal_envelope(recipient.public_key, payload, INFO)
    assert envelope[0] == 0x01
    assert len(envelope) == 1 + 1120 + len(payload) + 16
    private = xwing_private_from_seed(seed)
    assert SUITE.decrypt(envelope[1:], private, info=INFO) == payload
    with pytest.raises(Exception):  # noqa: B017 - any failure of the independent implementation
        SUITE.decrypt(envelope[1:], private, info=INFO + b"x")


def test_cryptography_seal_opened_natively() -> None:
    recipient = native.HybridKeyPair.generate()
    public = public_from_bytes(recipient.public_key)
    payload = b"sealed by OpenSSL"
    ciphertext = SUITE.encrypt(payload, public, info=INFO)
    assert len(ciphertext) == 1120 + len(payload) + 16
    assert recipient.open(b"\x01" + ciphertext, INFO) == payload
    with pytest.raises(native.DecryptError):
        recipient.open(b"\x01" + ciphertext, b"other info")


def test_seed_expansion_matches_independent_implementation() -> None:
    seed = os.urandom(32)
    ours = native.HybridKeyPair.from_seed(seed)
    theirs = xwing_private_from_seed(seed)
    ciphertext = SUITE.encrypt(b"x", theirs.public_key(), info=b"")
    assert ours.open(b"\x01" + ciphertext, b"") == b"x"
    assert ours.export_secret_seed() == seed


def test_tampered_envelopes_rejected() -> None:
    recipient = native.HybridKeyPair.generate()
    envelope = native.seal_envelope(recipient.public_key, b"payload", INFO)
    assert recipient.open(envelope, INFO) == b"payload"
    for index in (1, 600, 1120, 1121, len(envelope) - 1):
        tampered = bytearray(envelope)
        tampered[index] ^= 0x80
        with pytest.raises(native.DecryptError):
            recipient.open(bytes(tampered), INFO)
    with pytest.raises(native.MalformedError):
        recipient.open(b"\x02" + envelope[1:], INFO)
    with pytest.raises(native.MalformedError):
        recipient.open(envelope[:200], INFO)
    with pytest.raises(native.DecryptError):
        native.HybridKeyPair.generate().open(envelope, INFO)
    with pytest.raises(native.InvalidKeyError):
        native.seal_envelope(b"\x00" * 100, b"payload", INFO)
    with pytest.raises(native.InvalidKeyError):
        native.HybridKeyPair.from_seed(b"short")


def test_vault_hybrid_key_persists_and_opens(tmp_path: Path) -> None:
    path = str(tmp_path / "v.db")
    key = os.urandom(32)
    with native.Vault.open(path, key) as vault:
        public = vault.hybrid_public_key()
        assert len(public) == 1216
    vault = native.Vault.open(path, key)
    assert vault.hybrid_public_key() == public
    ciphertext = SUITE.encrypt(b"to the vault", public_from_bytes(public), info=INFO)
    assert vault.open_envelope(b"\x01" + ciphertext, INFO) == b"to the vault"
    new_public = vault.rotate_hybrid_key()
    assert new_public != public
    with pytest.raises(native.DecryptError):
        vault.open_envelope(b"\x01" + ciphertext, INFO)
    vault.close()
    assert native.Vault.open(path, key).hybrid_public_key() == new_public
