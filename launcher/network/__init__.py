"""Serving and joining across machines: addresses, TLS certificates, SuperNode keys."""
