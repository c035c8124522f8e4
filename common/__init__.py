"""Code both the node and the client need: schema loading, errors, the QUIC/Cap'n Proto bridge."""
