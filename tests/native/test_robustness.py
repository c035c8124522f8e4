"""Garbage and truncated inputs raise NativeError subclasses (never a panic); a vault is usable
from several threads at once."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path

import pytest

import quicnprotochat.native as native


def mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = [b"", data[:1], data[: len(data) // 2], data[:-1], data + b"\x00", os.urandom(len(data))]
    for _ in range(count):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        out.append(bytes(mutated))
    return out


def test_parsers_reject_garbage_without_panicking(tmp_path: Path) -> None:
    rng = random.Random(1234)
    alice = native.Vault.open(str(tmp_path / "a.vault"), os.urandom(32))
    bob = native.Vault.open(str(tmp_path / "b.vault"), os.urandom(32))
    group_id = alice.create_group()
    key_package = bob.create_key_package()
    commit, welcome = alice.add_members(group_id, [key_package])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    message = alice.encrypt(group_id, b"payload")
    hybrid = native.HybridKeyPair.generate()
    envelope = native.seal_envelope(hybrid.public_key, b"payload", b"")
    server = native.OpaqueServer.generate()
    _, request = native.OpaqueClientRegistration.start(b"pw")

    for bad in mutations(key_package, rng, 60):
        if bad == key_package:
            continue
        with pytest.raises(native.NativeError):
            native.validate_key_package(bad)
    for bad in mutations(message, rng, 60):
        if bad == message:
            continue
        with pytest.raises(native.NativeError):
            bob.process(bad)
    for bad in mutations(welcome, rng, 20):
        with pytest.raises(native.NativeError):
            bob.join_group(bad)
    for bad in mutations(envelope, rng, 40):
        if bad == envelope:
            continue
        with pytest.raises(native.NativeError):
            hybrid.open(bad, b"")
    for bad in mutations(request, rng, 20):
        # A random 32-byte string can be a valid ristretto255 point; then a response is fine.
        with contextlib.suppress(native.NativeError):
            server.registration_start(b"user", bad)
    for bad in (b"", os.urandom(10), os.urandom(2000)):
        with pytest.raises(native.NativeError):
            native.OpaqueServer.login_finish(bad, bad)
        with pytest.raises(native.NativeError):
            server.login_start(b"user", bad, None)
    # After all of that the genuine message still decrypts.
    assert bob.process(message).plaintext == b"payload"
    assert commit


def test_vault_shared_between_threads(tmp_path: Path) -> None:
    alice = native.Vault.open(str(tmp_path / "a.vault"), os.urandom(32))
    bob = native.Vault.open(str(tmp_path / "b.vault"), os.urandom(32))
    group_id = alice.create_group()
    _, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    ciphertexts: list[bytes] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sender(n: int) -> None:
        try:
            for i in range(25):
                ct = alice.encrypt(group_id, f"{n}-{i}".encode())
                with lock:
                    ciphertexts.append(ct)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    received = {bob.process(ct).plaintext for ct in ciphertexts}
    assert received == {f"{n}-{i}".encode() for n in range(4) for i in range(25)}
