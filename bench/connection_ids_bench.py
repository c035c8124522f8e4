"""What N QUIC connections ending cost the server's connection-id bookkeeping alone, aioquic's `QuicServer` against
the node's `IndexedQuicServer` (server/quic_connection_ids.py), without network or handshakes.

    python bench/connection_ids_bench.py [--connections 1000 5000] [--ids 9]

Each connection gets `--ids` ids registered the way aioquic's server registers them (item assignment), then every
connection's termination handler runs once; the CPU seconds of all terminations are printed per server class.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration

from quicnprotochat.server.quic_connection_ids import IndexedQuicServer


async def terminations_cpu(server_class: type[QuicServer], connections: int, ids: int) -> float:
    server = server_class(configuration=QuicConfiguration(is_client=False))
    # Stand-ins for connections: the bookkeeping only keys and compares them.
    protocols = [QuicConnectionProtocol.__new__(QuicConnectionProtocol) for _ in range(connections)]
    for protocol in protocols:
        for _ in range(ids):
            server._protocols[os.urandom(8)] = protocol
    started = time.process_time()
    for protocol in protocols:
        server._connection_terminated(protocol=protocol)
    elapsed = time.process_time() - started
    assert not server._protocols
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--ids", type=int, default=9, help="connection ids per connection (aioquic: 8 issued + 1)")
    args = parser.parse_args()
    for connections in args.connections:
        for server_class in (QuicServer, IndexedQuicServer):
            seconds = await terminations_cpu(server_class, connections, args.ids)
            print(
                f"{connections:>6} connections, {server_class.__name__:<17} {seconds:9.3f} s CPU for all terminations,"
                f" {1e6 * seconds / connections:9.1f} us each"
            )


if __name__ == "__main__":
    asyncio.run(main())
