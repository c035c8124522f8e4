"""The quicnprotochat node: Cap'n Proto NodeService over QUIC and TLS-over-TCP."""

__version__ = "0.1.0"
