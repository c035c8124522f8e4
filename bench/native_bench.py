"""Native core micro-benchmark. Prints figures, asserts nothing.

Hybrid envelopes (HPKE X-Wing / HKDF-SHA256 / ChaCha20-Poly1305): seal and open per second, the native
core against pyca/cryptography (OpenSSL) in the same run, and their ratio; and the CPU time of one open.
MLS: application message encrypt and decrypt per second through the encrypted vault (each one is a
durable SQLite transaction), for both ciphersuites.

python bench/native_bench.py [--seconds 2] [--payload 256] [--dir /path/on/the/real/disk]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, MLKEM768X25519PrivateKey, MLKEM768X25519PublicKey, Suite

import quicnprotochat.native as native

INFO = b"quicnprotochat envelope v1" + bytes(48)


def rate(seconds: float, op: Callable[[], object]) -> float:
    """Operations per second of `op`, run for about `seconds`."""
    op()
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        op()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def cpu_per_op(count: int, op: Callable[[], object]) -> float:
    """Process CPU microseconds per call of `op`: steadier than a rate on a machine others share."""
    op()
    started = time.process_time()
    for _ in range(count):
        op()
    return (time.process_time() - started) / count * 1e6


def bench_envelopes(seconds: float, payload: bytes) -> None:
    seed = os.urandom(32)
    ours = native.HybridKeyPair.from_seed(seed)
    expanded = hashlib.shake_256(seed).digest(96)
    theirs = MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )
    public_bytes = ours.public_key
    their_public = MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(public_bytes[:1184]),
        x25519.X25519PublicKey.from_public_bytes(public_bytes[1184:]),
    )
    suite = Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
    envelope = native.seal_envelope(public_bytes, payload, INFO)
    ciphertext = suite.encrypt(payload, their_public, info=INFO)

    native_seal = rate(seconds, lambda: native.seal_envelope(public_bytes, payload, INFO))
    crypto_seal = rate(seconds, lambda: suite.encrypt(payload, their_public, info=INFO))
    native_open = rate(seconds, lambda: ours.open(envelope, INFO))
    crypto_open = rate(seconds, lambda: suite.decrypt(ciphertext, theirs, info=INFO))

    print(f"hybrid envelope, payload {len(payload)} bytes")
    print(f"  {'':6} {'native/s':>12} {'cryptography/s':>16} {'native/cryptography':>21}")
    print(f"  {'seal':6} {native_seal:12.0f} {crypto_seal:16.0f} {native_seal / crypto_seal:21.2f}")
    print(f"  {'open':6} {native_open:12.0f} {crypto_open:16.0f} {native_open / crypto_open:21.2f}")
    count = max(50, int(min(native_open, crypto_open) * seconds / 4))
    native_cpu = cpu_per_op(count, lambda: ours.open(envelope, INFO))
    crypto_cpu = cpu_per_op(count, lambda: suite.decrypt(ciphertext, theirs, info=INFO))
    print(f"  open, CPU us per call: native {native_cpu:.0f}, cryptography {crypto_cpu:.0f}")


def bench_mls(seconds: float, payload: bytes, directory: Path, suite: int, label: str) -> None:
    alice = native.Vault.open(str(directory / f"alice-{suite}.vault"), os.urandom(32))
    bob = native.Vault.open(str(directory / f"bob-{suite}.vault"), os.urandom(32))
    group_id = alice.create_group(ciphersuite=suite)
    _, welcome = alice.add_members(group_id, [bob.create_key_package(ciphersuite=suite)])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)

    messages: list[bytes] = []

    def encrypt() -> None:
        messages.append(alice.encrypt(group_id, payload))

    encrypt_rate = rate(seconds, encrypt)
    pending = iter(messages)
    decrypted = 0

    def decrypt() -> None:
        nonlocal decrypted
        bob.process(next(pending))
        decrypted += 1

    # Decrypt as many as were encrypted at most (each message decrypts once).
    started = time.perf_counter()
    deadline = started + seconds
    while decrypted < len(messages) and time.perf_counter() < deadline:
        decrypt()
    decrypt_rate = decrypted / (time.perf_counter() - started)
    print(f"MLS {label}, payload {len(payload)} bytes, durable vault transactions")
    print(f"  encrypt/s {encrypt_rate:10.0f}   decrypt/s {decrypt_rate:10.0f}")
    alice.close()
    bob.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--payload", type=int, default=256, help="payload size in bytes")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the vault files")
    args = parser.parse_args()
    payload = os.urandom(args.payload)
    bench_envelopes(args.seconds, payload)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench_mls(args.seconds, payload, Path(tmp), native.CIPHERSUITE_DEFAULT, "0x0001 X25519/AES-128-GCM")
        bench_mls(args.seconds, payload, Path(tmp), native.CIPHERSUITE_XWING, "0x004D X-Wing/ChaCha20-Poly1305")


if __name__ == "__main__":
    main()
