"""A pool worker: one warm process (torch, CUDA, the data set on its device) that trains any client.

`python -m launcher.shim.worker --socket PATH --name worker-0` connects to the client host's
Unix socket (launcher.shim.clienthost), says it is ready, and for each task it is given
(a client's runtime address and task token) does what the warm executor does for its own
SuperNode: pull the task input from that client's SuperNode with a token-bound client, send
heartbeats, run the ClientApp in-process, push the reply. The ClientApp, told by
FEDLAUNCH_SHARED_DATA=1, loads the data set once per worker and trains each task on the client's
partition by index (fedcore.shared_data). The worker is pinned to its GPU by the launcher
(CUDA_VISIBLE_DEVICES), like the per-client executors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.shim.endpoint import Wire
from launcher.shim.executor import Executor, fast_object_pulls
from launcher.shim.hostparts import connect_to_host, train_figures

CONNECT_PATIENCE = 120.0  # the client host may start after the workers (or restart)
SHARED_DATA = "FEDLAUNCH_SHARED_DATA"


class PoolRunner(Executor):
    """The warm executor, run against whichever SuperNode each task comes from."""

    def __init__(self, log: Callable[..., None], wire: Wire,
                 worth_retrying: Callable[[], bool]) -> None:
        super().__init__("127.0.0.1:1", log, worth_retrying=worth_retrying)
        self.wire = wire
        self.outcome: dict[str, Any] = {}

    def run(self, address: str, token: str) -> dict[str, Any]:
        """Run one task of the SuperNode at `address`; what happened, for the host."""
        self.address = address
        self.outcome = {"status": "failed"}
        self.run_task(token)
        return self.outcome

    def _app(self, run: Any, fab: Any) -> Any:
        app = super()._app(run, fab)

        def timed(message: Any, context: Any) -> Any:
            kind = str(message.metadata.message_type)
            config = message.content["config"] if "config" in message.content else None
            group = str(message.metadata.group_id)
            round_ = int(config.get("server-round", 0)) if config is not None else 0
            round_ = round_ or (int(group) if group.isdigit() else 0)
            self.wire.send(op="started", time=time.time(), round=round_, type=kind,
                           client=int(context.node_config.get("partition-id", -1)))
            reply = app(message=message, context=context)
            self.outcome = {"status": "completed" if not reply.has_error() else "error",
                            "app_end": time.time(), **train_figures(reply, config)}
            return reply

        return timed


class ObjectCache:
    """The objects of the last message this worker pulled, by id, so the next task skips them.

    Flower's objects are content-addressed (an object's id is the SHA-256 of its bytes), and a
    round's messages to different clients share all but their head: the same model, config and
    records. So a worker's second task of a round pulls one object from its SuperNode instead of
    the whole tree, the model's arrays included. Only the last message's objects are kept (one
    model's worth of bytes).
    """

    def __init__(self) -> None:
        self.contents: dict[str, bytes] = {}
        self.hits = 0  # objects the current task took from here instead of pulling

    def around(self, pull_and_inflate: Callable[..., Any]) -> Callable[..., Any]:
        """Flower's `pull_and_inflate_object_from_tree`, pulling only what is not kept here."""

        def pull_and_inflate_kept(object_tree: Any, pull_object_fn: Callable[[str], bytes],
                                  *args: Any, **kwargs: Any) -> Any:
            kept, seen = self.contents, {}

            def pull(object_id: str) -> bytes:  # called from Flower's pulling threads
                content = kept.get(object_id)
                seen[object_id] = pull_object_fn(object_id) if content is None else content
                return seen[object_id]

            try:
                return pull_and_inflate(object_tree, pull, *args, **kwargs)
            finally:
                self.contents = seen
                self.hits = sum(1 for object_id in seen if object_id in kept)

        return pull_and_inflate_kept


def keep_pulled_objects() -> ObjectCache:
    """Give this worker's task input pulls an ObjectCache."""
    module = sys.modules["flwr.supernode.runtime.run_clientapp"]
    cache = ObjectCache()
    module.pull_and_inflate_object_from_tree = cache.around(  # type: ignore[attr-defined]
        module.pull_and_inflate_object_from_tree)
    return cache


def next_task(wire: Wire, stopping: Callable[[], bool], parent: int) -> dict[str, Any] | None:
    """Wait for the host's next order; None once stopped, the host gone, or the launcher gone."""
    wire.sock.settimeout(1.0)
    pending: list[dict[str, Any]] = []
    while not pending:
        if stopping() or os.getppid() != parent:
            return None
        try:
            chunk = wire.sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        pending = [m for m in wire.lines(chunk) if m.get("op") == "task"]
    return pending[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.shim.worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    os.environ[SHARED_DATA] = "1"
    parent = os.getppid()
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    import torch  # noqa: F401  - warm up before the first task
    import torchvision  # noqa: F401
    from flwr.common import log

    from fedcore.device import check_pinned_gpu

    if (why := check_pinned_gpu()) is not None:  # stop at once: never train on the CPU in silence
        print(f"fedlaunch: error: {args.name}: {why}", file=sys.stderr, flush=True)
        return 2
    fast_object_pulls()
    cache = keep_pulled_objects()
    stop = {"now": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher stops its children with SIGTERM
    gpu = os.environ.get("FEDLAUNCH_WORKER_GPU", "cpu")  # the physical (NVML) id, as the plan shows
    while not stop["now"]:
        wire = Wire(connect_to_host(args.socket, "client host", CONNECT_PATIENCE, 0.2,
                                    lambda: os.getppid() == parent))
        wire.send(op="hello", name=args.name, pid=os.getpid(), gpu=gpu)
        runner = PoolRunner(log, wire, worth_retrying=lambda: not stop["now"]
                            and os.getppid() == parent)
        print(f"fedlaunch: {args.name} pid {os.getpid()} ready ({Path(args.socket).name})",
              flush=True)
        while True:
            wire.send(op="ready")
            task = next_task(wire, lambda: stop["now"], parent)
            if task is None:
                break
            cache.hits = 0
            try:
                outcome = runner.run(str(task["address"]), str(task["token"]))
                outcome["kept_objects"] = cache.hits
            except Exception as exc:  # noqa: BLE001 - the task fails; this worker goes on
                outcome = {"status": f"failed: {type(exc).__name__}"}
                print(f"fedlaunch: {args.name}: client-{task.get('client')}'s task failed: {exc}"
                      + (" (its task token expired: this worker was starved of CPU past Flower's "
                         "heartbeat window)" if "401" in str(exc) else ""), flush=True)
            wire.send(op="done", **outcome)
        wire.sock.close()
        if os.getppid() != parent:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
