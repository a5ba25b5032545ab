"""The client host's pieces: what it knows of each endpoint and worker, and process helpers."""

from __future__ import annotations

import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from launcher.shim.endpoint import Wire


@dataclass
class Endpoint:
    client: int
    pid: int
    sock: socket.socket
    wire: Wire
    started: float
    address: str = ""
    current: dict[str, Any] | None = None  # the task this client's SuperNode is busy with


@dataclass
class Worker:
    sock: socket.socket
    wire: Wire
    name: str = "?"
    pid: int = 0
    gpu: str = ""
    ready: bool = False
    task: dict[str, Any] | None = None
    state: str = "connecting"
    tasks: int = 0
    images_per_s: float = 0.0
    since: float = field(default_factory=time.time)


def parse_ids(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """This process gets `sig` when its parent dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def preload(idle_wait: float) -> None:
    """Import and patch the SuperNode once, here, so that every forked client shares it."""
    import flwr.supernode.cli.flower_supernode  # noqa: F401
    import flwr.supernode.main  # noqa: F401  - the runtime API app, imported when it starts
    import flwr.supernode.start_client_internal as loop
    import httpx  # noqa: F401
    import uvicorn  # noqa: F401

    from fedcore.flwr_tuning import fast_object_pulls
    from launcher.shim import flwr_internals as fi
    from launcher.shim import supernode

    for name in fi.NAMES:
        getattr(fi, name)
    supernode.IDLE_WAIT = idle_wait
    loop.time = supernode.PromptTime(nudge=supernode.nudge_on_replies())  # type: ignore[attr-defined]
    fast_object_pulls("flwr.supernode.start_client_internal")
