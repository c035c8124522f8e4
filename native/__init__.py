"""The native core: MLS, OPAQUE and hybrid envelopes, implemented in Rust."""

from quicnprotochat.native._native import version

__all__ = ["version"]
