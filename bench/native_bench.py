"""Native core micro-benchmark. Prints figures, asserts nothing.

Hybrid envelopes (HPKE X-Wing / HKDF-SHA256 / ChaCha20-Poly1305): seal and open per second, the native
core against pyca/cryptography (OpenSSL) in the same run, and their ratio; and the CPU time of one open.
MLS: application message encrypt and decrypt per second through the encrypted vault (each one is a
durable SQLite transaction), for both ciphersuites.
MLS by group size (--sizes, default 2, 16, 128 and 1,000 members; suite 0x0001): CPU time of encrypt,
decrypt, commit, process-commit and add through the vault, and of the same steps in mls-rs, measured in the
same run by the mls-rs peer of the interoperability tests (built with the bench-peer profile on first use;
--no-mls-rs skips it), twice: with its groups in memory (its default; nothing written per message), and durable
like the vault (its SQLite provider on SQLCipher, WAL, synchronous=FULL, the group's state written after every
operation). Every vault call is a durable transaction; "decrypt, batches of N" is the cost per message of
`Vault.process_batch` (N messages, one transaction).

python bench/native_bench.py [--seconds 2] [--payload 256] [--dir /path/on/the/real/disk]
                             [--sizes 2,16,128,1000] [--iterations 200] [--no-mls-rs] [--only-sizes]
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
from quicnprotochat.bench.mls_rs_peer import MlsRsPeer, build_peer

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


SCALE_PAYLOAD = bytes(100)
# Operations of the group-size table, in print order, with their labels.
SCALE_OPERATIONS = {
    "encrypt": "encrypt",
    "decrypt": "decrypt",
    "encrypt_after_commits": "encrypt, 10 commits on",
    "decrypt_after_commits": "decrypt, 10 commits on",
    "commit": "commit (update path)",
    "process_commit": "process that commit",
    "add": "add one member",
    "decrypt_batch_10": "decrypt, batches of 10",
    "decrypt_batch_100": "decrypt, batches of 100",
}
BATCHES = (10, 100)


def cpu_us(count: int, op: Callable[[], object]) -> float:
    """Process CPU microseconds per call of `op` (every thread: OpenMLS seals a commit's path on several)."""
    started = time.process_time()
    for _ in range(count):
        op()
    return (time.process_time() - started) / count * 1e6


def vault_at_scale(members: int, iterations: int, directory: Path) -> dict[str, float]:
    """The steps of the mls-rs peer's `bench` (tests/interop/mls_rs_peer/src/bench.rs), through vaults."""
    alice = native.Vault.open(str(directory / "alice.vault"), os.urandom(32))
    bob = native.Vault.open(str(directory / "bob.vault"), os.urandom(32))

    def key_package(name: str) -> bytes:
        other = native.Vault.open(str(directory / f"{name}.vault"), os.urandom(32))
        try:
            return other.create_key_package()
        finally:
            other.close()

    key_packages = [bob.create_key_package()] + [key_package(f"m{i}") for i in range(members - 2)]
    group_id = alice.create_group()
    _, welcome = alice.add_members(group_id, key_packages)
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    out: dict[str, float] = {}

    def messages(suffix: str) -> None:
        sent: list[bytes] = []
        out["encrypt" + suffix] = cpu_us(iterations, lambda: sent.append(alice.encrypt(group_id, SCALE_PAYLOAD)))
        received = iter(sent)
        out["decrypt" + suffix] = cpu_us(iterations, lambda: bob.process(next(received)))

    def commit() -> bytes:
        message = alice.self_update(group_id)
        alice.merge_pending_commit(group_id)
        return message

    def batched(size: int) -> float:
        """CPU per message of decrypting them `size` at a time (one transaction per batch)."""
        count = max(iterations // size, 1)
        batches = iter([[alice.encrypt(group_id, SCALE_PAYLOAD) for _ in range(size)] for _ in range(count)])
        return cpu_us(count, lambda: bob.process_batch(next(batches))) / size

    messages("")
    for size in BATCHES:
        out[f"decrypt_batch_{size}"] = batched(size)
    commits_measured = min(max(iterations, 1), 10)
    commits: list[bytes] = []
    out["commit"] = cpu_us(commits_measured, lambda: commits.append(commit()))
    incoming = iter(commits)
    out["process_commit"] = cpu_us(commits_measured, lambda: bob.process(next(incoming)))
    for _ in range(commits_measured, 10):
        bob.process(commit())
    messages("_after_commits")

    adds = min(max(iterations, 1), 5)
    fresh = iter([key_package(f"new{i}") for i in range(adds)])
    add_commits: list[bytes] = []

    def add() -> None:
        message, _ = alice.add_members(group_id, [next(fresh)])
        alice.merge_pending_commit(group_id)
        add_commits.append(message)

    out["add"] = cpu_us(adds, add)
    for message in add_commits:
        bob.process(message)
    alice.close()
    bob.close()
    return out


def message_pair(figures: dict[str, float], suffix: str) -> float | None:
    """Encrypt plus decrypt: what one application message costs its sender and one receiver."""
    if "encrypt" + suffix not in figures:
        return None
    return figures["encrypt" + suffix] + figures["decrypt" + suffix]


def beside(value: float, their: float | None) -> str:
    return f"{their:10.0f} {value / their:8.2f}" if their else f"{'-':>10} {'-':>8}"


def bench_scale(sizes: list[int], iterations: int, directory: Path, with_mls_rs: bool) -> None:
    peer = MlsRsPeer(build_peer("bench-peer")) if with_mls_rs else None
    print(f"MLS by group size, suite 0x0001, {len(SCALE_PAYLOAD)}-byte messages: CPU microseconds per operation")
    print("  vault: this module, a durable SQLCipher transaction per call; mls-rs 0.55 in one process: in memory")
    print("  (its default: nothing written per message), and durable (SQLCipher file, state written per operation)")
    print(f"  {'members':>7} {'operation':24} {'vault':>10} {'mls-rs':>10} {'ratio':>8} {'durable':>10} {'ratio':>8}")
    try:
        for members in sizes:
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                ours = vault_at_scale(members, iterations, Path(tmp))
            theirs: dict[str, float] = {}
            durable: dict[str, float] = {}
            if peer is not None:
                theirs = peer.bench(members, iterations)
                with tempfile.TemporaryDirectory(dir=directory) as tmp:
                    durable = peer.bench(members, iterations, durable_dir=Path(tmp))
            rows = [(label, ours[key], theirs.get(key), durable.get(key)) for key, label in SCALE_OPERATIONS.items()]
            for suffix, label in (("", "encrypt + decrypt"), ("_after_commits", "both, 10 commits on")):
                value = message_pair(ours, suffix) or 0.0
                rows.append((label, value, message_pair(theirs, suffix), message_pair(durable, suffix)))
            for label, value, their, their_durable in rows:
                print(f"  {members:7d} {label:24} {value:10.0f} {beside(value, their)} {beside(value, their_durable)}")
    finally:
        if peer is not None:
            peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--payload", type=int, default=256, help="payload size in bytes")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the vault files")
    parser.add_argument("--sizes", default="2,16,128,1000", help="group sizes of the MLS table, comma-separated")
    parser.add_argument("--iterations", type=int, default=200, help="messages per size (commits: 10, adds: 5)")
    parser.add_argument("--no-mls-rs", action="store_true", help="measure the vault alone (no cargo build)")
    parser.add_argument("--only-sizes", action="store_true", help="only the MLS group-size table")
    args = parser.parse_args()
    payload = os.urandom(args.payload)
    if not args.only_sizes:
        bench_envelopes(args.seconds, payload)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            bench_mls(args.seconds, payload, Path(tmp), native.CIPHERSUITE_DEFAULT, "0x0001 X25519/AES-128-GCM")
            bench_mls(args.seconds, payload, Path(tmp), native.CIPHERSUITE_XWING, "0x004D X-Wing/ChaCha20-Poly1305")
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench_scale(sizes, args.iterations, Path(tmp), not args.no_mls_rs)


if __name__ == "__main__":
    main()
