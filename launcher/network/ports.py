"""TCP ports for the run's own listeners, taken below the kernel's ephemeral range.

A port the OS hands out for bind(("", 0)) comes from the same range as the source ports of
outgoing connections. Between the moment a port is chosen and the moment its listener (a
SuperNode's runtime API, the SuperLink) binds it, any of the run's own connections (24
SuperNodes polling the SuperLink) may be given it: the listener then fails with "address already
in use". Below the ephemeral range only another listener can hold a port, and free_port checks
that none does.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # below: the well-known and commonly configured ports
TRIES = 64


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for source ports of outgoing connections (Linux's default if unread)."""
    try:
        low, high = (int(word) for word in EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, below the ephemeral range where the range leaves
    room (else one the OS picks)."""
    below = ephemeral_range()[0] - 1
    if below - LOWEST >= 1_000:
        pick = random.SystemRandom()
        for _ in range(TRIES):
            port = pick.randint(LOWEST, below)
            if not port_in_use(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
