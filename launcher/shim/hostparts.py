"""The client host's pieces: what it knows of each endpoint and worker, its doorbell, what it
writes to the run folder (workers.jsonl, pool.json), and process helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.rundir import FileTail, json_records
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


class Doorbell:
    """Which endpoints to ring: those whose nodes a round's messages just went to.

    The ServerApp writes a `sent` record (the round's node ids) to metrics.jsonl once its messages
    are in the SuperLink. A rung SuperNode looks for messages on its own only every --idle-wait
    seconds (planning/pool.py: 10 s, to spare the SuperLink), so it is the ring that starts its
    round. SuperNodes joined from other machines are not rung and poll as Flower's do.
    """

    def __init__(self, metrics: Path, progress: Path, enabled: bool = True) -> None:
        self.metrics = FileTail(metrics, from_end=True)  # a resumed run's records are not ours
        self.progress = progress
        self.enabled = enabled

    def due(self) -> list[int]:
        """The clients to ring now (reads what was appended since the last call)."""
        if not self.enabled:
            return []
        nodes: set[int] = set()
        for record in json_records(self.metrics.lines()):
            if record.get("event") == "sent":
                try:
                    nodes.update(int(n) for n in record.get("nodes", ()))
                except (TypeError, ValueError):
                    continue
        return self.clients_of(nodes) if nodes else []

    def clients_of(self, nodes: set[int]) -> list[int]:
        clients = []
        for path in self.progress.glob("client-*.node"):
            try:
                if int(path.read_text()) in nodes:
                    clients.append(int(path.name.removeprefix("client-").removesuffix(".node")))
            except (OSError, ValueError):
                continue
        return sorted(clients)


def record_task(run_dir: Path, task: dict[str, Any], **more: Any) -> None:
    """One line of workers.jsonl for a finished task (once; its token and address left out)."""
    if task.get("_recorded"):
        return
    task["_recorded"] = True
    line = {k: v for k, v in {**task, **more}.items()
            if k not in ("token", "address", "pid") and not k.startswith("_")}
    line.setdefault("status", "unknown")
    with (run_dir / "workers.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def write_pool_status(run_dir: Path, queue: Iterable[dict[str, Any]], workers: list[Worker],
                      endpoints: dict[int, Endpoint], restarts: dict[int, int],
                      failed: set[int]) -> None:
    """pool.json: the live pool, for the launcher's view (written, then renamed)."""
    now = time.time()
    status = {
        "time": now, "host_pid": os.getpid(), "queued": [t["client"] for t in queue],
        "workers": [{"name": w.name, "pid": w.pid, "gpu": w.gpu, "state": w.state,
                     "client": w.task["client"] if w.task else None, "since": w.since,
                     "tasks": w.tasks, "images_per_s": round(w.images_per_s, 1)}
                    for w in workers],
        "clients": {str(c): {"pid": e.pid, "restarts": restarts.get(c, 0),
                             "busy": e.current is not None}
                    for c, e in endpoints.items()},
        "failed": sorted(failed),
    }
    write_pool_json(run_dir, status)


def write_pool_json(run_dir: Path, status: dict[str, Any]) -> None:
    """pool.json, written whole, then renamed (the launcher never reads half of one)."""
    tmp = run_dir / ".pool.json.tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, run_dir / "pool.json")


def train_figures(reply: Any, config: Any) -> dict[str, float]:
    """Images trained and training seconds, from a train reply's metrics."""
    try:
        metrics = reply.content["metrics"]
        epochs = int(config.get("local-epochs", 1)) if config is not None else 1
        return {"images": float(metrics["num-examples"]) * epochs,
                "seconds": float(metrics["train-seconds"])}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def owner_only_listener(path: Path) -> socket.socket:
    """The pool's Unix socket at `path`, created mode 0600 (the host checks each peer's uid too)."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


def connect_to_host(path: str, host: str, patience: float, pause: float,
                    wanted: Callable[[], bool] = lambda: True) -> socket.socket:
    """A worker's connection to its host's Unix socket, retried while the host (re)starts, for up
    to `patience` s and while `wanted()` holds; else the worker ends with one line naming `host`."""
    deadline = time.monotonic() + patience
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() > deadline or not wanted():
                raise SystemExit(f"fedlaunch: cannot reach the {host} at {path}: {exc}") from None
            time.sleep(pause)


def parse_ids(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


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


def preload(idle_wait: float, rung: bool = False) -> None:
    """Import and patch the SuperNode once, here, so that every forked client shares it."""
    import flwr.supernode.main  # noqa: F401  - the runtime API app, imported when it starts
    import flwr.supernode.start_client_internal as loop
    import httpx  # noqa: F401
    import uvicorn  # noqa: F401

    from fedcore.flwr_tuning import fast_object_pulls
    from launcher.shim import flwr_internals as fi
    from launcher.shim import supernode

    for name in fi.NAMES:  # the SuperNode CLI's module among them
        getattr(fi, name)
    supernode.IDLE_WAIT = idle_wait
    loop.time = supernode.PromptTime(  # type: ignore[attr-defined]
        nudge=supernode.nudge_on_replies(), rung=rung)
    fast_object_pulls("flwr.supernode.start_client_internal")
    supernode.inline_sync_dependencies()
