"""Direct delivery's wire format and per-peer paths (no I/O)."""

from __future__ import annotations

import pytest

from quicnprotochat.client.chat import direct_wire as wire
from quicnprotochat.common.endpoint_record import EndpointRecord


def record(expires_at: int) -> EndpointRecord:
    return EndpointRecord(b"i" * 32, b"e" * 32, ("127.0.0.1:1",), None, expires_at, b"s" * 64)


def test_requests_round_trip_and_malformed_ones_are_refused() -> None:
    channel = b"c" * 16
    assert wire.decode_request(wire.encode_request(channel, b"sealed")) == (channel, b"sealed")
    assert wire.decode_request(wire.encode_request(b"", b"sealed")) == (b"", b"sealed")
    for bad in (b"", b"\x01", b"\x02\x00x", b"\x01\x05xxxxxxx", b"\x01\x10" + b"c" * 15, b"\x01\x00"):
        with pytest.raises(wire.WireError):
            wire.decode_request(bad)
    with pytest.raises(wire.WireError):
        wire.encode_request(b"short", b"x")


def test_a_failed_peer_goes_to_the_node_for_the_backoff_and_is_looked_up_again() -> None:
    paths = wire.PeerPaths(resolve_every_s=60, backoff_s=30)
    peer = b"p" * 32
    assert paths.should_try(peer, 0) and paths.cached_record(peer, 0) == (False, None)
    paths.resolved(peer, record(100), now=0)
    assert paths.cached_record(peer, 59) == (True, record(100))
    assert paths.cached_record(peer, 60) == (False, None)  # looked up again every minute
    paths.resolved(peer, record(20), now=10)
    assert paths.cached_record(peer, 20) == (False, None)  # never used past its expiry
    paths.resolved(peer, None, now=30)
    assert paths.cached_record(peer, 31) == (True, None)  # "publishes nothing" is remembered too
    paths.failed(peer, now=40)
    assert not paths.should_try(peer, 69) and paths.should_try(peer, 70)
    assert paths.cached_record(peer, 41) == (False, None)
    paths.succeeded(peer)
    assert paths.should_try(peer, 41)


def test_peer_paths_are_bounded() -> None:
    paths = wire.PeerPaths(max_peers=3)
    for n in range(10):
        paths.failed(bytes([n]) * 32, now=0)
    assert sum(not paths.should_try(bytes([n]) * 32, 1) for n in range(10)) == 3
