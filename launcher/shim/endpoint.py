"""One cheap client endpoint: a SuperNode (`--isolation process`) plus a claimer thread, in a process
forked from the client host, that hands each of its tasks to the host for a pool worker to run.

The SuperNode is Flower's own (`flower_supernode()`, with the prompt-poll patches of
`launcher.shim.supernode`). The claimer replaces Flower's SuperExec: woken when the SuperNode
creates a task (no polling), it claims it through the runtime API (AcquireTask), tells the host
`{"op": "task", "token": ...}` over its socket, and heartbeats the token until a worker has taken
it. If the worker dies mid-task the host says `lost`: the token is expired at once, so the
SuperNode answers the server with Flower's own "ClientApp stopped responding" error reply instead
of hanging until Flower's 60 s heartbeat window ends.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from launcher.shim import flwr_internals as fi

ACQUIRE_FALLBACK = 5.0  # seconds between AcquireTask calls when no task creation woke the claimer
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
SECRET_FLAG = "--superexec-auth-secret-file"
WAIT_HEARTBEAT = 10.0  # heartbeat a claimed, not yet taken token this often (Flower allows 30 s)


class Wire:
    """JSON lines over a connected socket; `send` is safe from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._buffer = b""

    def send(self, **message: Any) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self.sock.sendall(data)

    def tell(self, **message: Any) -> bool:
        """`send` to a peer that may have died: False then, and its death is handled where it
        is noticed (the host's reaper, or the worker's socket closing)."""
        try:
            self.send(**message)
        except OSError:
            return False
        return True

    def lines(self, chunk: bytes) -> list[dict[str, Any]]:
        """Messages completed by `chunk` (bytes just read from the socket)."""
        self._buffer += chunk
        *done, self._buffer = self._buffer.split(b"\n")
        out = []
        for line in done:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out


class Claimer:
    """Claims this SuperNode's tasks and keeps each alive until a worker takes it."""

    def __init__(self, address: str, wire: Wire, secret: bytes | None = None) -> None:
        self.address = address
        self.wire = wire
        self.secret = secret  # the run's SuperExec secret: AcquireTask is signed with it
        self.wake = threading.Event()
        self.state: Any = None  # the SuperNode's NodeState, captured when it creates a task
        self.created = 0.0  # when the SuperNode last created a task (its message began to arrive)
        self.received = 0.0  # when that message's objects were all in the SuperNode
        self.waiting: dict[str, float] = {}  # claimed tokens no worker has taken -> last heartbeat
        self.lock = threading.Lock()
        self._acquirer: Any = None

    def client(self, component: str, token: str | None = None) -> Any:
        interceptors: list[Any] = [fi.RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(fi.RuntimeTokenHttpInterceptor(token))
        if component == "SuperExec" and self.secret is not None:  # as flower-superexec signs it
            interceptors.append(fi.SuperExecAuthHttpInterceptor(
                master_secret=self.secret, protected_methods={ACQUIRE_METHOD}))
        return fi.RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=interceptors, retry_invoker=fi.make_simple_http_retry_invoker())

    def acquire(self) -> str | None:
        if self._acquirer is None:
            self._acquirer = self.client("SuperExec")
        request = fi.AcquireTaskRequest(supported_task_types=[fi.TaskType.CLIENT_APP])
        res = self._acquirer.AcquireTask(request)
        return res.token if res.HasField("task") and res.token else None

    def run(self) -> None:
        """The claimer thread: claim, hand over, heartbeat what waits."""
        while True:
            self.wake.wait(ACQUIRE_FALLBACK)
            self.wake.clear()
            try:
                token = self.acquire()
            except Exception as exc:  # noqa: BLE001 - the runtime API may not be up yet
                print(f"fedlaunch: claimer: runtime API {self.address}: {exc}", file=sys.stderr,
                      flush=True)
                time.sleep(ACQUIRE_FALLBACK)
                continue
            if token is not None:
                with self.lock:
                    self.waiting[token] = time.monotonic()
                # claimed by the fallback poll while its message is still arriving: no `received`
                received = self.received if self.received >= self.created else None
                self.wire.send(op="task", token=token, created=self.created, received=received,
                               acquired=time.time())
            self.heartbeat_waiting()

    def heartbeat_waiting(self) -> None:
        now = time.monotonic()
        with self.lock:
            due = [t for t, last in self.waiting.items() if now - last >= WAIT_HEARTBEAT]
        for token in due:
            client = self.client("flwr-clientapp", token)
            try:
                alive = client.SendTaskHeartbeat(fi.SendTaskHeartbeatRequest()).success
            except Exception:  # noqa: BLE001 - a finished task's token is refused
                alive = False
            finally:
                client.close()
            with self.lock:
                if token in self.waiting:
                    if alive:
                        self.waiting[token] = now
                    else:
                        del self.waiting[token]

    def taken(self, token: str) -> None:
        """A worker has the task: its heartbeats keep it alive from now on."""
        with self.lock:
            self.waiting.pop(token, None)

    def lost(self, token: str) -> None:
        """The worker that had this task died: expire the token now (see the module docstring)."""
        with self.lock:
            self.waiting.pop(token, None)
        expire_token(self.state, token)
        self.wake.set()  # a task expired before it started goes back to pending: claim it again


def expire_token(state: Any, token: str) -> bool:
    """Make Flower's next token clean-up treat `token` as past its heartbeat window."""
    if state is None:
        return False
    with state.lock_task_store:
        task_id = state.task_token_to_task_id.get(token)
        record = state.task_token_store.get(task_id) if task_id is not None else None
        if record is None:
            return False
        record.active_until = record.active_until - datetime.timedelta(days=1)
    return True  # the SuperNode's next look for a reply (every 50 ms) runs Flower's clean-up


def watch_tasks(claimer: Claimer) -> None:
    """Wake the claimer once the SuperNode holds a new task's whole message, and remember the
    node state.

    Flower creates the task before it pulls the message's objects (the model's arrays) from the
    SuperLink. Woken at creation, a worker would pull from the SuperNode while those are still
    arriving and back off between tries; woken after, it pulls everything at once.
    """
    state_class = fi.InMemoryNodeState
    create_task = state_class.create_task
    module = sys.modules["flwr.supernode.start_client_internal"]
    pull_and_store = fi.pull_and_store_message

    def create_and_note(self: Any, *args: Any, **kwargs: Any) -> Any:
        claimer.state = self
        claimer.created = time.time()
        return create_task(self, *args, **kwargs)

    def pull_and_wake(*args: Any, **kwargs: Any) -> Any:
        before = claimer.created
        try:
            return pull_and_store(*args, **kwargs)
        finally:
            if claimer.created != before:  # a task was created: its message is in, or failed
                claimer.received = time.time()
                claimer.wake.set()

    state_class.create_task = create_and_note  # type: ignore[method-assign]
    module._pull_and_store_message = pull_and_wake  # type: ignore[attr-defined]


def report_replies(wire: Wire) -> None:
    """Tell the host when the SuperNode has handed a reply to the SuperLink."""
    module = sys.modules["flwr.supernode.start_client_internal"]
    push = fi.push_messages

    def push_and_report(*args: Any, **kwargs: Any) -> None:
        push(*args, **kwargs)
        wire.send(op="sent", time=time.time())

    module._push_messages = push_and_report  # type: ignore[attr-defined]


def listen(claimer: Claimer, wire: Wire, ring: Callable[[], None]) -> None:
    """The host's orders: `taken` and `lost` tokens, and `poll` (a message waits at the SuperLink:
    `ring` ends the SuperNode's idle wait). The host gone: this endpoint ends."""
    while True:
        try:
            chunk = wire.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            os._exit(0)  # noqa: SLF001 - the host is gone; the SuperNode goes with it
        for message in wire.lines(chunk):
            if message.get("op") == "taken":
                claimer.taken(str(message.get("token", "")))
            elif message.get("op") == "lost":
                claimer.lost(str(message.get("token", "")))
            elif message.get("op") == "poll":
                ring()


def serve(sock: socket.socket, client: int, port: int, argv: list[str]) -> None:
    """In the forked child: start the claimer and the host listener, then run the SuperNode."""
    from launcher.shim import supernode

    wire = Wire(sock)
    address = f"127.0.0.1:{port}"
    secret = None
    if SECRET_FLAG in argv:  # the SuperNode's runtime API checks it; the claimer signs with it
        with open(argv[argv.index(SECRET_FLAG) + 1], "rb") as fh:
            secret = fh.read()
    claimer = Claimer(address, wire, secret)
    watch_tasks(claimer)
    report_replies(wire)
    path = os.environ.get(supernode.NODE_ID_FILE)
    if "--auth-supernode-private-key" in argv:
        supernode.patient_sign_in(restarted=path is not None and os.path.exists(path))
    if path:
        supernode.record_node_id(path)
    wire.send(op="hello", client=client, pid=os.getpid(), address=address)
    threading.Thread(target=claimer.run, name="claimer", daemon=True).start()
    prompt = sys.modules["flwr.supernode.start_client_internal"].time  # hostparts.preload's
    ring = prompt.doorbell.set if isinstance(prompt, supernode.PromptTime) else (lambda: None)
    threading.Thread(target=listen, args=(claimer, wire, ring), name="host", daemon=True).start()
    sys.argv = ["flower-supernode", *argv]
    fi.flower_supernode()
