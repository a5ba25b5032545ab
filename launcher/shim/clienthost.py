"""The client host: N cheap Flower clients forked from one process, and the task queue of the pool.

`python -m launcher.shim.clienthost --superlink HOST:PORT --run-dir DIR --socket PATH
--partition-ids 0-99 --num-partitions 100` imports Flower's SuperNode once, then forks one
endpoint per client (launcher.shim.endpoint: a SuperNode with `--isolation process`, its own
runtime port, node config and node id file, logging to logs/client-<id>.log). Forked children
share the parent's imported pages, so a client costs tens of MB and no torch. The host restarts
an endpoint that dies under the same partition id (`--max-restarts`), and it is the pool's
dispatcher: endpoints send it claimed task tokens, pool workers (launcher.shim.worker) connect to
its Unix socket (owner-only, peer uid checked) and get the oldest waiting task, first come first
served. Only JSON lines cross the socket: the runtime address, the token, timings; never data.

It records one line per task in workers.jsonl (which worker trained which client in which
round, and when: task created, claimed, taken, training started/ended, reply sent) and the
live pool in pool.json, both in the run folder.
"""

from __future__ import annotations

import argparse
import gc
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from fedcore.rundir import RunDir
from launcher.network.ports import free_port
from launcher.shim.endpoint import Wire
from launcher.shim.hostparts import (
    Doorbell,
    Endpoint,
    Worker,
    die_with_parent,
    owner_only_listener,
    parse_ids,
    peer_uid,
    preload,
    record_task,
    write_pool_status,
)
from launcher.supervision.departures import Departures

POLL = 0.1  # also how late a round's doorbell rings at most
STATUS_EVERY = 0.5
STOP_GRACE = 5.0
SIGN_IN_PATIENCE = 30.0  # a client still signing in after this no longer holds back the next ones


class Host:
    """Forks, watches and restarts the endpoints; hands their tasks to the workers."""

    def __init__(self, args: argparse.Namespace, listener: socket.socket) -> None:
        self.args = args
        self.run_dir = Path(args.run_dir)
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, ("listen", None))
        self.endpoints: dict[int, Endpoint] = {}  # by client
        self.stopped: dict[int, Endpoint] = {}  # gone once stopping: the final pool.json's too
        self.by_pid: dict[int, int] = {}
        self.restarts: dict[int, int] = {}
        self.failed: set[int] = set()
        self.workers: list[Worker] = []
        self.queue: deque[dict[str, Any]] = deque()
        self.stopping = False
        self.pending: deque[int] = deque()  # clients not forked yet
        self.signing_in: dict[int, float] = {}  # forked, no node id yet: client -> fork time
        self.fork_started = time.perf_counter()
        self.changed = True
        self.status_at = 0.0
        self.log_dir = self.run_dir / "logs"
        self.progress_dir = self.run_dir / "progress"
        self.departures = Departures(RunDir(self.run_dir))
        self.doorbell = Doorbell(RunDir(self.run_dir).metrics_path, self.progress_dir,
                                 enabled=args.doorbell)

    # -- endpoints ------------------------------------------------------------------------------

    def fork(self, client: int) -> None:
        ours, theirs = socket.socketpair()
        port = free_port()
        node_config = f"partition-id={client} num-partitions={self.args.num_partitions}"
        argv = ["--superlink", self.args.superlink, "--node-config",
                f"{node_config} {self.args.node_config_extra}".strip(),
                "--isolation", "process", "--host", "127.0.0.1", "--port", str(port),
                *[a.replace("{partition}", str(client)) for a in self.args.supernode_args]]
        log = self.log_dir / f"client-{client}.log"
        pid = os.fork()
        if pid == 0:  # the endpoint
            code = 1
            try:
                die_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                self.listener.close()
                ours.close()
                for other in self.endpoints.values():
                    other.sock.close()
                for worker in self.workers:
                    worker.sock.close()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                os.environ["FEDLAUNCH_NODE_ID_FILE"] = str(self.progress_dir / f"client-{client}.node")
                from launcher.shim import endpoint

                endpoint.serve(theirs, client, port, argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported in the client's log
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        wire = Wire(ours)
        self.endpoints[client] = Endpoint(client, pid, ours, wire, time.time())
        self.by_pid[pid] = client
        self.selector.register(ours, selectors.EVENT_READ, ("endpoint", client))
        self.changed = True
        if client in self.restarts:  # the first start of each is summed up in one line
            print(f"fedlaunch: client-{client} restarted: pid {pid} (runtime port {port})", flush=True)

    def start_more(self) -> None:
        """Fork the next clients while fewer than --sign-in-burst are still signing in: N
        SuperNodes activating at once swamp a SuperLink on a small machine (they give up after
        a minute of refused attempts), a few at a time do not."""
        if not self.pending:
            return
        now = time.time()
        for client, forked in list(self.signing_in.items()):
            node = self.progress_dir / f"client-{client}.node"
            try:
                signed_in = node.stat().st_mtime >= forked
            except OSError:
                signed_in = False
            if signed_in or client not in self.endpoints or now - forked > SIGN_IN_PATIENCE:
                del self.signing_in[client]
        while self.pending and len(self.signing_in) < self.args.sign_in_burst:
            client = self.pending.popleft()
            self.signing_in[client] = time.time()
            self.fork(client)
        if not self.pending:
            print(f"fedlaunch: {len(self.endpoints)} clients started in "
                  f"{time.perf_counter() - self.fork_started:.1f} s, at most "
                  f"{self.args.sign_in_burst} signing in at a time", flush=True)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            client = self.by_pid.pop(pid, None)
            if client is None:
                continue
            self.endpoint_gone(client, os.waitstatus_to_exitcode(status))

    def endpoint_gone(self, client: int, code: int) -> None:
        endpoint = self.endpoints.pop(client)
        self.selector.unregister(endpoint.sock)
        endpoint.sock.close()
        self.queue = deque(t for t in self.queue if t["client"] != client)
        if endpoint.current is not None:
            self.record(endpoint.current, status="client died")
        self.changed = True
        if self.stopping:
            endpoint.current = None
            self.stopped[client] = endpoint
            return
        self.departures.died(client)  # the ServerApp stops waiting for its node
        used = self.restarts.get(client, 0)
        if used >= self.args.max_restarts:
            self.failed.add(client)
            print(f"fedlaunch: client-{client} exited with code {code} and will not be restarted "
                  f"({used} restarts used)", flush=True)
            if not self.endpoints:
                self.stopping = True
            return
        self.restarts[client] = used + 1
        print(f"fedlaunch: client-{client} exited with code {code}; restarting it (restart "
              f"{used + 1} of {self.args.max_restarts})", flush=True)
        self.fork(client)

    def from_endpoint(self, client: int, message: dict[str, Any]) -> None:
        endpoint = self.endpoints.get(client)
        if endpoint is None:
            return
        op = message.get("op")
        if op == "hello":
            endpoint.address = str(message.get("address", ""))
        elif op == "task":
            task = {"client": client, "pid": endpoint.pid, "token": message.get("token"),
                    "address": endpoint.address,
                    "created": message.get("created"), "received": message.get("received"),
                    "acquired": message.get("acquired")}
            endpoint.current = task
            self.queue.append(task)
            self.dispatch()
        elif op == "sent" and endpoint.current is not None:
            task, endpoint.current = endpoint.current, None
            task["sent"] = message.get("time")
            if "status" in task:  # the worker said done (or died): the record is complete
                self.record(task)

    # -- workers --------------------------------------------------------------------------------

    def accept(self) -> None:
        sock, _ = self.listener.accept()
        if peer_uid(sock) != os.getuid():
            sock.close()
            return
        worker = Worker(sock, Wire(sock))
        self.workers.append(worker)
        self.selector.register(sock, selectors.EVENT_READ, ("worker", worker))
        self.changed = True

    def from_worker(self, worker: Worker, message: dict[str, Any]) -> None:
        op = message.get("op")
        self.changed = True
        if op == "hello":
            worker.name, worker.pid = str(message.get("name")), int(message.get("pid", 0))
            worker.gpu = str(message.get("gpu", ""))
            worker.state, worker.since = "idle", time.time()
        elif op == "ready":
            worker.ready, worker.state, worker.since = True, "idle", time.time()
            self.dispatch()
        elif op == "started" and worker.task is not None:
            worker.task.update(round=message.get("round"), type=message.get("type"),
                               app_start=message.get("time"))
            worker.state = "training" if message.get("type") == "train" else "evaluating"
        elif op == "done" and worker.task is not None:
            task, worker.task = worker.task, None
            task.update({k: message.get(k) for k in ("app_end", "status", "images", "seconds",
                                                         "kept_objects")})
            worker.tasks += 1
            if message.get("images") and message.get("seconds"):
                worker.images_per_s = float(message["images"]) / max(1e-6, float(message["seconds"]))
            worker.state, worker.since = "idle", time.time()
            endpoint = self.endpoints.get(task["client"])
            if endpoint is None or endpoint.current is not task:  # its reply is already sent
                self.record(task)

    def worker_gone(self, worker: Worker) -> None:
        self.selector.unregister(worker.sock)
        worker.sock.close()
        self.workers.remove(worker)
        self.changed = True
        task = worker.task
        if task is None:
            return
        endpoint = self.endpoints.get(task["client"])
        if endpoint is not None and endpoint.pid == task["pid"]:
            endpoint.wire.tell(op="lost", token=task["token"])
        task["status"] = f"lost: {worker.name} died"
        print(f"fedlaunch: {worker.name} died while it ran client-{task['client']}'s task; the "
              "task fails (or, not yet started, goes to another worker)", flush=True)

    def dispatch(self) -> None:
        for worker in self.workers:
            if not self.queue:
                return
            if not worker.ready:
                continue
            task = self.queue.popleft()
            endpoint = self.endpoints.get(task["client"])
            if endpoint is None or endpoint.pid != task["pid"]:
                continue
            task.update(worker=worker.name, taken=time.time())
            worker.ready, worker.task, worker.state = False, task, "starting"
            worker.wire.tell(op="task", token=task["token"], address=task["address"],
                             client=task["client"])
            endpoint.wire.tell(op="taken", token=task["token"])
            self.changed = True

    # -- the run folder -------------------------------------------------------------------------

    def record(self, task: dict[str, Any], **more: Any) -> None:
        record_task(self.run_dir, task, **more)

    def write_status(self) -> None:
        now = time.time()
        if not self.changed or now - self.status_at < STATUS_EVERY:
            return
        self.changed, self.status_at = False, now
        write_pool_status(self.run_dir, self.queue, self.workers, self.endpoints, self.restarts,
                          self.failed)

    # -- the loop -------------------------------------------------------------------------------

    def loop(self) -> int:
        parent = os.getppid()
        while not self.stopping:
            self.start_more()
            for key, _ in self.selector.select(POLL):
                kind, who = key.data
                if kind == "listen":
                    self.accept()
                    continue
                try:
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except OSError:
                    chunk = b""
                if kind == "worker":
                    if not chunk:
                        self.worker_gone(who)
                        continue
                    for message in who.wire.lines(chunk):
                        self.from_worker(who, message)
                elif who in self.endpoints and chunk:
                    for message in self.endpoints[who].wire.lines(chunk):
                        self.from_endpoint(who, message)
            for client in self.doorbell.due():  # this round's nodes: poll the SuperLink now
                if client in self.endpoints:
                    self.endpoints[client].wire.tell(op="poll")
            self.reap()
            self.departures.poll()  # a restarted client back under its node id (node keys)
            self.write_status()
            if os.getppid() != parent:
                print("fedlaunch: the launcher is gone; stopping", file=sys.stderr, flush=True)
                self.stopping = True
        return self.shutdown()

    def shutdown(self) -> int:
        self.stopping = True
        for endpoint in self.endpoints.values():
            try:
                os.kill(endpoint.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while self.by_pid and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.by_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap()
        # the final pool.json lists every client the host ran, with its restarts, none busy
        write_pool_status(self.run_dir, (), self.workers, {**self.stopped, **self.endpoints},
                          self.restarts, self.failed)
        return 1 if self.failed and not self.endpoints else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launcher.shim.clienthost")
    parser.add_argument("--superlink", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--partition-ids", required=True, help="A-B")
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument("--max-restarts", type=int, default=3)
    parser.add_argument("--sign-in-burst", type=int, default=8,
                        help="at most this many clients signing in to the SuperLink at a time")
    parser.add_argument("--doorbell", action="store_true",
                        help="ring each round's nodes (the ServerApp writes --run-dir's metrics)")
    parser.add_argument("--node-config-extra", default="",
                        help="more node config for every client (a join's progress-dir)")
    parser.add_argument("--idle-wait", type=float, default=0.2,
                        help="seconds between an idle SuperNode's polls of the SuperLink")
    parser.add_argument("supernode_args", nargs="*",
                        help="after --: more flower-supernode flags ({partition} is replaced)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preload(args.idle_wait, rung=args.doorbell)
    run_dir = Path(args.run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "progress").mkdir(parents=True, exist_ok=True)
    path = Path(args.socket)
    host = Host(args, owner_only_listener(path))

    def stop(_signum: int, _frame: object) -> None:
        host.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gc.freeze()  # the imported objects stay on pages every child shares
    host.pending.extend(parse_ids(args.partition_ids))
    print(f"fedlaunch: starting {len(host.pending)} clients; pool socket {path}", flush=True)
    try:
        return host.loop()
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
