"""The endpoint record codec and rules (no I/O)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicnprotochat.common import endpoint_record
from quicnprotochat.common.endpoint_record import RecordError
from quicnprotochat.common.transcripts import login_transcript
from quicnprotochat.native import Vault, verify_ed25519

NOW = 1_900_000_000


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    opened = Vault.open(str(tmp_path / "vault.sqlite"), os.urandom(32))
    yield opened
    opened.close()


def test_round_trip_with_relay_and_canonical_addresses(vault: Vault) -> None:
    record = endpoint_record.sign_record(
        vault.sign,
        vault.identity_key,
        b"\x07" * 32,
        ["10.0.0.1:5", "[0:0:0:0:0:0:0:1]:7000"],
        "https://relay.example/",
        NOW + 60,
    )
    assert record.addresses == ("10.0.0.1:5", "[::1]:7000")
    data = endpoint_record.encode(record)
    assert endpoint_record.decode_checked(data, identity_key=vault.identity_key, now=NOW, verify=verify_ed25519) == (
        record
    )


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "[10.0.0.1]:5", "::1:5", "host:5", "10.0.0.1:+5"]
)
def test_addresses_must_be_ip_and_port(address: str) -> None:
    with pytest.raises(RecordError):
        endpoint_record.canonical_address(address)


def test_no_way_to_reach_it_and_bad_relays_are_refused(vault: Vault) -> None:
    sign = vault.sign
    with pytest.raises(RecordError, match="no address and no relay"):
        endpoint_record.sign_record(sign, vault.identity_key, b"\x07" * 32, [], None, NOW + 60)
    with pytest.raises(RecordError, match="http"):
        endpoint_record.sign_record(sign, vault.identity_key, b"\x07" * 32, [], "file:///etc/passwd", NOW + 60)


def test_a_signature_over_another_transcript_does_not_pass(vault: Vault) -> None:
    record = endpoint_record.sign_record(vault.sign, vault.identity_key, b"\x07" * 32, ["10.0.0.1:5"], None, NOW + 60)
    # The same key's signature over a login transcript is no endpoint record signature (domain separation).
    login_signature = vault.sign(login_transcript("alice", vault.identity_key, b"finish"))
    forged = endpoint_record.EndpointRecord(
        record.identity_key, record.endpoint_id, record.addresses, None, record.expires_at, login_signature
    )
    with pytest.raises(RecordError, match="not signed"):
        endpoint_record.check(forged, identity_key=vault.identity_key, now=NOW, verify=verify_ed25519)
    # Changing any signed field breaks the signature too.
    moved = endpoint_record.EndpointRecord(
        record.identity_key, record.endpoint_id, ("10.0.0.2:5",), None, record.expires_at, record.signature
    )
    with pytest.raises(RecordError, match="not signed"):
        endpoint_record.check(moved, identity_key=vault.identity_key, now=NOW, verify=verify_ed25519)
