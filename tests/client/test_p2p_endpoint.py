"""The relay setting of direct delivery, and binding the endpoint with it (no relay is contacted: relays off, or a
relay URL on loopback where nothing listens)."""

from __future__ import annotations

import pytest

from quicnprotochat.client.chat.errors import ChatError
from quicnprotochat.client.chat.p2p_endpoint import P2PEndpoint, relay_mode


def test_relay_settings() -> None:
    assert relay_mode("off").relay_map().is_empty()
    assert not relay_mode("default").relay_map().is_empty()
    own = relay_mode("https://relay.example.org/, http://127.0.0.1:3340")
    assert sorted(own.relay_map().urls()) == ["http://127.0.0.1:3340/", "https://relay.example.org/"]
    for bad in ("", "ftp://relay.example.org", "relay.example.org", "on"):
        with pytest.raises(ChatError, match="p2p relays"):
            relay_mode(bad)


async def test_an_endpoint_on_loopback_publishes_only_loopback_addresses() -> None:
    endpoint = await P2PEndpoint.bind("off", ["127.0.0.1:0", "[::1]:0"])
    try:
        addresses = endpoint.addresses()
        assert addresses and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addresses), addresses
        assert endpoint.relay_url() is None and len(endpoint.endpoint_id) == 32
    finally:
        await endpoint.close()
    with pytest.raises(ChatError, match="p2p relays"):
        await P2PEndpoint.bind("nonsense", ["127.0.0.1:0"])


async def test_a_bad_bind_address_is_a_clear_error() -> None:
    with pytest.raises(ChatError, match="cannot start the direct-delivery endpoint"):
        await P2PEndpoint.bind("off", ["not an address"])
