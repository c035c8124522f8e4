"""A group member on mls-rs (another RFC 9420 implementation), run as a child process: the program in
tests/interop/mls_rs_peer/ speaks JSON lines on stdin/stdout. The interoperability tests use it as a member;
bench/native_bench.py asks it to measure mls-rs beside the vault."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
PEER_PACKAGE = REPOSITORY / "tests" / "interop" / "mls_rs_peer"
# Beside the native module's build, so that CI's cache and `cargo clean` treat both alike.
TARGET_DIR = REPOSITORY / "native" / "target" / "interop"

# MLSMessage header of a KeyPackage (version mls10, wire format mls_key_package): how KeyPackages travel between
# MLS libraries. Ours are raw; this wraps one for mls-rs.
KEY_PACKAGE_MESSAGE_HEADER = b"\x00\x01\x00\x05"


def build_peer(profile: str = "release") -> Path:
    """Builds the peer (a few minutes the first time, seconds once its dependencies are compiled). Profile
    "release" builds fast, for the tests; "bench-peer" optimises as the native module is, for measuring mls-rs."""
    subprocess.run(
        ["cargo", "build", "--profile", profile, "--quiet", "--manifest-path", str(PEER_PACKAGE / "Cargo.toml")],
        check=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(TARGET_DIR)},
        timeout=1200,
    )
    return TARGET_DIR / profile / "mls-rs-peer"


class PeerError(Exception):
    """mls-rs refused a request; the text is its reason."""


class MlsRsPeer:
    def __init__(self, binary: Path) -> None:
        self._process = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.identity_key: bytes = self.call("identity")["identity_key"]

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Sends one request; bytes (and lists of bytes) travel as hex and come back as bytes."""
        assert self._process.stdin is not None and self._process.stdout is not None

        def encode(value: Any) -> Any:
            if isinstance(value, bytes):
                return value.hex()
            if isinstance(value, list):
                return [encode(v) for v in value]
            return value

        request = {"op": op, **{k: encode(v) for k, v in fields.items()}}
        self._process.stdin.write(json.dumps(request) + "\n")
        line = self._process.stdout.readline()
        if not line:
            raise PeerError(f"the mls-rs peer exited ({self._process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise PeerError(answer["error"])
        hex_fields = ("identity_key", "key_package", "group_id", "commit", "welcome", "message", "plaintext")
        for name in (*hex_fields, "sender", "secret", "signature"):
            if name in answer:
                answer[name] = bytes.fromhex(answer[name])
        if "members" in answer:
            answer["members"] = [bytes.fromhex(m) for m in answer["members"]]
        return answer

    def key_package(self) -> bytes:
        kp: bytes = self.call("key_package")["key_package"]
        return kp

    def create_group(self) -> bytes:
        group_id: bytes = self.call("create_group")["group_id"]
        return group_id

    def join(self, welcome: bytes) -> bytes:
        group_id: bytes = self.call("join", welcome=welcome)["group_id"]
        return group_id

    def add(self, group_id: bytes, key_packages: list[bytes]) -> tuple[bytes, bytes]:
        answer = self.call("add", group_id=group_id, key_packages=key_packages)
        return answer["commit"], answer["welcome"]

    def commit(self, op: str, group_id: bytes, **fields: Any) -> bytes:
        commit: bytes = self.call(op, group_id=group_id, **fields)["commit"]
        return commit

    def merge(self, group_id: bytes) -> None:
        self.call("merge", group_id=group_id)

    def clear(self, group_id: bytes) -> None:
        self.call("clear", group_id=group_id)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 by the identity key: the peer signs in to the node as its own account."""
        signature: bytes = self.call("sign", message=message)["signature"]
        return signature

    def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes:
        message: bytes = self.call("encrypt", group_id=group_id, plaintext=plaintext)["message"]
        return message

    def process(self, message: bytes) -> dict[str, Any]:
        return self.call("process", message=message)

    def epoch(self, group_id: bytes) -> int:
        epoch: int = self.call("epoch", group_id=group_id)["epoch"]
        return epoch

    def members(self, group_id: bytes) -> list[bytes]:
        members: list[bytes] = self.call("members", group_id=group_id)["members"]
        return members

    def export_secret(self, group_id: bytes, label: str, context: bytes, length: int) -> bytes:
        secret: bytes = self.call("export_secret", group_id=group_id, label=label, context=context, length=length)[
            "secret"
        ]
        return secret

    def bench(self, members: int, iterations: int, durable_dir: Path | None = None) -> dict[str, float]:
        """mls-rs's CPU microseconds per operation in a group of `members`, all of them in the peer's process (the
        keys: encrypt, decrypt, commit, process_commit, encrypt_after_commits, decrypt_after_commits, add). With
        `durable_dir`, the two measured members keep their state in SQLCipher files there and write it after
        every operation, as the vault does."""
        directory = None if durable_dir is None else str(durable_dir)
        figures: dict[str, float] = self.call("bench", members=members, iterations=iterations, durable_dir=directory)[
            "figures"
        ]
        return figures

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)
