"""The simulation engine's worker pool and the Flower Backend that hands it each ClientApp task.

Flower's simulation loop (flwr.server.superlink.fleet.vce) runs `num_workers` threads; each takes
a message for a virtual node, its Context, and calls the backend's `process_message`. Here that
sends both, as Flower protobufs, to an idle worker process (launcher.shim.simworker) and waits for
the reply and the updated Context, which Flower keeps per node. A worker that dies mid-task is
replaced (up to --max-restarts each) and its task fails with one error reply, as Flower's own
backends do; the round goes on. A worker that has not answered a task in --round-timeout seconds
(the longest a round waits for any reply) is taken as hung: it is killed and goes the same way.
The pool writes workers.jsonl (one line per task) and pool.json (the live pool) in the run folder,
like the Deployment Engine's client host.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.config import from_run_config
from launcher.shim import simwire
from launcher.shim.hostparts import owner_only_listener, peer_uid, record_task, write_pool_json
from launcher.shim.simworker import order_worker

STATUS_EVERY = 0.5
READY_PATIENCE = 600.0  # a worker loading a large data set on a loaded machine


class WorkerLost(RuntimeError):
    """The worker running a task died: the task fails, the round goes on."""


@dataclass
class SimWorker:
    sock: socket.socket
    name: str
    pid: int
    gpu: str
    state: str = "idle"
    client: int | None = None
    tasks: int = 0
    images_per_s: float = 0.0
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class WorkerOrder:
    """How to start worker `name`: its GPU (as the plan shows it) and its environment."""

    name: str
    gpu: str
    env: dict[str, str]


class Pool:
    """K workers forked by the zygote, connected to this host's socket."""

    def __init__(self, run_dir: Path, socket_path: Path, orders: list[WorkerOrder], zygote_fd: int,
                 run_config: dict[str, Any], max_restarts: int, clients: int) -> None:
        self.run_dir = run_dir
        self.clients = clients
        self.socket_path = socket_path
        self.orders = {o.name: o for o in orders}
        self.zygote_fd = zygote_fd
        self.run_config = run_config
        self.max_restarts = max_restarts
        self.round_timeout = from_run_config(run_config).round_timeout
        self.restarts: dict[str, int] = {}
        self.listener = owner_only_listener(socket_path)
        self.idle: queue.Queue[SimWorker] = queue.Queue()
        self.workers: dict[str, SimWorker] = {}
        self.waiting: dict[int, int] = {}  # client -> tasks of it waiting for a worker
        self.busy: dict[int, bool] = {}  # client -> a task of it runs now
        self.nodes_written: set[int] = set()
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.stopping = threading.Event()
        self.failed = ""

    @property
    def size(self) -> int:
        return len(self.orders)

    # -- workers --------------------------------------------------------------------------------

    def start(self) -> None:
        for order in self.orders.values():
            self.order(order)
        threading.Thread(target=self.accept_loop, name="pool-accept", daemon=True).start()
        threading.Thread(target=self.status_loop, name="pool-status", daemon=True).start()

    def order(self, order: WorkerOrder) -> None:
        order_worker(self.zygote_fd, order.name, str(self.socket_path), order.gpu, order.env,
                     self.run_config)

    def accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if peer_uid(sock) != os.getuid():
                sock.close()
                continue
            try:
                header, _ = simwire.recv_frame(sock)
            except (simwire.Closed, OSError):
                sock.close()
                continue
            worker = SimWorker(sock, str(header.get("name")), int(header.get("pid", 0)),
                               str(header.get("gpu", "")))
            with self.lock:
                self.workers[worker.name] = worker
            self.changed.set()
            self.idle.put(worker)

    def wait_ready(self) -> None:
        """Until every worker has said hello (Flower's `build`)."""
        deadline = time.monotonic() + READY_PATIENCE
        while len(self.workers) < self.size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.size - len(self.workers)} worker(s) did not start in "
                                   f"{READY_PATIENCE:.0f} s (see logs/simulation.log)")
            time.sleep(0.05)
        print(f"fedlaunch: {self.size} workers ready", flush=True)

    def lost(self, worker: SimWorker, task: dict[str, Any], hung: bool = False) -> None:
        """`worker` died (or was killed as `hung`) with `task`: record it, and start its
        replacement if restarts are left."""
        worker.sock.close()
        with self.lock:
            self.workers.pop(worker.name, None)
        self.changed.set()
        status = (f"timeout: {worker.name} hung" if hung else f"lost: {worker.name} died")
        record_task(self.run_dir, task, status=status, sent=time.time())
        if self.stopping.is_set():
            return
        used = self.restarts.get(worker.name, 0)
        if hung:
            print(f"fedlaunch: {worker.name} (pid {worker.pid}) ran client-{task['client']}'s "
                  f"task for {self.round_timeout:g} s (--round-timeout) without an answer: "
                  f"killed as hung; the task fails", flush=True)
        else:
            print(f"fedlaunch: {worker.name} (pid {worker.pid}) died while it ran "
                  f"client-{task['client']}'s task; the task fails", flush=True)
        if used >= self.max_restarts:
            print(f"fedlaunch: {worker.name} will not be restarted ({used} restarts used)",
                  flush=True)
            self.orders.pop(worker.name, None)
            if not self.orders:
                self.failed = "every worker died"
                print("fedlaunch: no worker is left; the run cannot go on", file=sys.stderr,
                      flush=True)
                os._exit(1)
            return
        self.restarts[worker.name] = used + 1
        print(f"fedlaunch: restarting {worker.name} (restart {used + 1} of {self.max_restarts})",
              flush=True)
        self.order(self.orders[worker.name])

    # -- tasks ----------------------------------------------------------------------------------

    def run(self, message: Any, context: Any) -> tuple[Any, Any]:
        """Run one ClientApp task on the next idle worker; the reply and the updated Context."""
        client = int(context.node_config.get("partition-id", -1))
        self.note_node(client, int(context.node_id))
        kind = str(message.metadata.message_type)
        config = message.content["config"] if "config" in message.content else None
        round_ = int(config.get("server-round", 0)) if config is not None else 0
        group = str(message.metadata.group_id)
        round_ = round_ or (int(group) if group.isdigit() else 0)
        task: dict[str, Any] = {"client": client, "round": round_, "type": kind,
                                "created": time.time()}
        packed = simwire.pack_message(message), simwire.pack_state(context, message)
        with self.lock:
            self.waiting[client] = self.waiting.get(client, 0) + 1
            self.busy[client] = True
        self.changed.set()
        worker = self.idle.get()
        with self.lock:
            self.waiting[client] -= 1
            if not self.waiting[client]:
                del self.waiting[client]
        task.update(worker=worker.name, taken=time.time())
        worker.state = "training" if kind == "train" else "evaluating"
        worker.client, worker.since = client, time.time()
        self.changed.set()
        deadline = time.monotonic() + self.round_timeout  # a hung worker: killed at it
        try:
            simwire.send_frame(worker.sock, {"op": "task", "client": client,
                                             **simwire.context_header(context)}, *packed,
                               deadline=deadline)
            header, parts = simwire.recv_frame(worker.sock, deadline)
        except TimeoutError as exc:
            self.busy[client] = False
            kill(worker.pid)
            self.lost(worker, task, hung=True)
            raise WorkerLost(f"{worker.name} hung on client-{client}'s task: killed after "
                             f"{self.round_timeout:g} s") from exc
        except (simwire.Closed, OSError) as exc:
            self.busy[client] = False
            self.lost(worker, task)
            raise WorkerLost(f"{worker.name} died while it ran client-{client}'s task") from exc
        task.update({k: header.get(k) for k in ("app_start", "app_end", "images", "seconds")})
        worker.tasks += 1
        if header.get("images") and header.get("seconds"):
            worker.images_per_s = float(header["images"]) / max(1e-6, float(header["seconds"]))
        worker.state, worker.client, worker.since = "idle", None, time.time()
        self.busy[client] = False
        self.changed.set()
        if header.get("op") != "reply" or len(parts) != 2:
            record_task(self.run_dir, task, status="failed", sent=time.time())
            self.idle.put(worker)
            raise RuntimeError(f"client-{client}'s ClientApp failed: {header.get('reason', '?')}")
        reply = simwire.unpack_message(parts[0])
        # the node's new state; the rest as Flower gave it (it refuses a changed run config)
        updated = simwire.with_state(simwire.context_header(context), parts[1], context.run_config)
        record_task(self.run_dir, task, status=header.get("status", "completed"), sent=time.time())
        self.idle.put(worker)
        return reply, updated

    def nodes_registered(self) -> None:
        """progress/client-N.node for every virtual node (the screen shows them connected);
        each gets its node id on its first task (note_node)."""
        folder = self.run_dir / "progress"
        folder.mkdir(parents=True, exist_ok=True)
        for client in range(self.clients):
            (folder / f"client-{client}.node").touch()

    def note_node(self, client: int, node_id: int) -> None:
        """progress/client-N.node: client N's virtual node id, as a SuperNode writes its own."""
        if client in self.nodes_written or client < 0:
            return
        self.nodes_written.add(client)
        path = self.run_dir / "progress" / f"client-{client}.node"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(node_id))
        except OSError:
            pass

    # -- pool.json ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.lock:
            workers = list(self.workers.values())
            queued = [c for c, n in self.waiting.items() for _ in range(n)]
            clients = {str(c): {"pid": os.getpid(), "restarts": 0, "busy": self.busy.get(c, False)}
                       for c in range(self.clients)}
        return {
            "time": time.time(), "host_pid": os.getpid(), "engine": "simulation",
            "queued": queued,
            "workers": [{"name": w.name, "pid": w.pid, "gpu": w.gpu, "state": w.state,
                         "client": w.client, "since": w.since, "tasks": w.tasks,
                         "images_per_s": round(w.images_per_s, 1)} for w in workers],
            "clients": clients, "failed": [],
        }

    def status_loop(self) -> None:
        while not self.stopping.is_set():
            if self.changed.wait(1.0):
                self.changed.clear()
                self.write_status()
                time.sleep(STATUS_EVERY)

    def write_status(self) -> None:
        try:
            write_pool_json(self.run_dir, self.status())
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            workers = list(self.workers.values())
            for worker in workers:
                worker.state, worker.client = "stopped", None
        self.write_status()
        for worker in workers:
            worker.sock.close()
        try:
            os.close(self.zygote_fd)
        except OSError:
            pass
        self.socket_path.unlink(missing_ok=True)


def kill(pid: int) -> None:
    """SIGKILL a worker (a stopped one too); it may have died on its own meanwhile."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class PoolBackend:
    """Flower's Backend interface (build, num_workers, is_worker_idle, process_message,
    terminate) over a Pool. Duck-typed: Flower's loop calls only these."""

    pool: Pool  # set by the subclass simhost installs

    def __init__(self, backend_config: dict[str, Any]) -> None:
        self.backend_config = backend_config

    @property
    def num_workers(self) -> int:
        return self.pool.size

    def is_worker_idle(self) -> bool:
        return not self.pool.idle.empty()

    def build(self, app_fn: Any) -> None:
        self.pool.wait_ready()
        self.pool.nodes_registered()  # Flower has registered every virtual node by now

    def process_message(self, message: Any, context: Any) -> tuple[Any, Any]:
        return self.pool.run(message, context)

    def terminate(self) -> None:
        self.pool.stop()
