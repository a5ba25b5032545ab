"""`flower-supernode` that notices new work promptly (its idle and reply waits are shortened) and
writes the node id the SuperLink gave it to `$FEDLAUNCH_NODE_ID_FILE`, so that the launcher can
tell the ServerApp to stop waiting for a client that dies before its first task."""

from __future__ import annotations

import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

from fedcore.flwr_tuning import fast_object_pulls
from launcher.shim import flwr_internals

IDLE_WAIT = 0.2  # stock: 3 s between polls of the SuperLink when no message came
FIRST_IDLE_WAIT = 0.02  # right after a task, when the next round's message is due soon
SHORT_WAIT = 0.05  # stock: 0.5 s between checks for a ClientApp's reply


class PromptTime(ModuleType):
    """Stands in for `time` inside flwr's SuperNode loop; every other attribute is the real one.

    Idle polls of the SuperLink start at FIRST_IDLE_WAIT after the last task and grow to
    IDLE_WAIT: the next round's message comes soon after a reply, so the client that finished
    last (the one the round waits for) sees it within tens of milliseconds, while an idle node
    settles at five polls a second.

    With a `nudge` (see `nudge_on_replies`), a short wait ends as soon as a reply or one of its
    objects is stored, instead of at the end of SHORT_WAIT; ringing the `doorbell` (the pool's
    client host does, when a round's message to this node is in the SuperLink) ends an idle wait.
    """

    def __init__(self, clock: Any = time.monotonic,
                 nudge: threading.Event | None = None, rung: bool = False) -> None:
        super().__init__("time")
        self.clock = clock
        self.nudge = nudge
        self.rung = rung  # the doorbell says when a message waits: no quick polls after a task
        self.doorbell = threading.Event()  # rung: the idle wait ends now (a message is waiting)
        self.busy_at = -1e9  # when the node last waited for a ClientApp

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def idle_wait(self) -> float:
        if self.rung:
            return IDLE_WAIT
        return min(IDLE_WAIT, max(FIRST_IDLE_WAIT, (self.clock() - self.busy_at) / 4))

    def sleep(self, seconds: float) -> None:
        if seconds >= 1:
            self.doorbell.wait(self.idle_wait())
            self.doorbell.clear()
            return
        self.busy_at = self.clock()
        if self.nudge is None:
            time.sleep(min(seconds, SHORT_WAIT))
            return
        self.nudge.wait(min(seconds, SHORT_WAIT))
        self.nudge.clear()  # a store between the wake and here costs one SHORT_WAIT at most


EARLY_REPLY_NOTE = "fedlaunch: a ClientApp reply ended the SuperNode's reply wait early"


def nudge_on_replies() -> threading.Event:
    """An event set whenever the node state stores a ClientApp's reply or one of its objects (as
    they arrive through the runtime API), for PromptTime's short waits.

    The reply comes in through `store_message_and_object_tree` (flwr 1.42, and 1.43, where it
    stores through `store_messages([...])` rather than `store_message`); the first one writes
    EARLY_REPLY_NOTE to the log, so a run shows that the wrapper fired (tests/test_e2e.py)."""
    nudge = threading.Event()
    state_class = flwr_internals.InMemoryNodeState
    store_reply, store_object = state_class.store_message_and_object_tree, state_class.store_object
    noted = threading.Event()

    def store_reply_and_nudge(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return store_reply(self, *args, **kwargs)
        finally:
            nudge.set()
            if not noted.is_set():
                noted.set()
                print(EARLY_REPLY_NOTE, file=sys.stderr, flush=True)

    def store_object_and_nudge(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return store_object(self, *args, **kwargs)
        finally:
            nudge.set()

    state_class.store_message_and_object_tree = store_reply_and_nudge  # type: ignore[method-assign]
    state_class.store_object = store_object_and_nudge  # type: ignore[method-assign]
    return nudge


def inline_sync_dependencies() -> None:
    """Run FastAPI's plain-function dependencies on the event loop thread, not in its thread pool.

    The SuperNode's runtime API resolves about twenty small dependencies per request (the state,
    the handlers, the version check, the task token...), and FastAPI hands each plain `def` one to
    a worker thread and back: about 0.9 of the 2.1 ms of CPU a SuperNode spends on a request
    (bench/runtime_api.py). Flower's are lookups in its in-memory node state under a lock held
    for microseconds, so they run inline. Endpoints still run in the pool. Only the SuperNode
    processes fedlaunch starts are patched, never the SuperLink.
    """
    import fastapi.dependencies.utils as resolve  # noqa: PLC0415

    async def inline(func: Any, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    resolve.run_in_threadpool = inline  # type: ignore[assignment]


NODE_ID_FILE = "FEDLAUNCH_NODE_ID_FILE"


def record_node_id(path: str) -> None:
    """Write every node id this SuperNode is given to `path` (write, then rename)."""
    state_class = flwr_internals.InMemoryNodeState
    set_node_id = state_class.set_node_id

    def set_and_record(self: Any, node_id: int | None) -> None:
        set_node_id(self, node_id)
        if node_id:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{node_id}\n")
            os.replace(tmp, path)

    state_class.set_node_id = set_and_record  # type: ignore[method-assign]


RESTART_PATIENCE = 75.0  # Flower marks a silent node offline after two missed 30 s heartbeats
FIRST_PATIENCE = 30.0  # the serving fedlaunch registers node keys seconds after it starts


def patient_sign_in(restarted: bool) -> None:
    """Retry a refused sign-in (HTTP 412: the SuperLink does not admit this key now) for a while.

    With SuperNode authentication the SuperLink admits a key once it is registered, which the
    serving fedlaunch does seconds after its SuperLink starts, and a node's id belongs to its key:
    a killed SuperNode's node stays online until its heartbeats are missed (up to 60 s), and the
    SuperLink refuses to activate it twice meanwhile. So a client retries for FIRST_PATIENCE
    seconds (a key never registered is refused after that) or, restarted, RESTART_PATIENCE.
    """
    import httpx  # noqa: PLC0415

    patience = RESTART_PATIENCE if restarted else FIRST_PATIENCE
    why = ("the SuperLink still holds this node's previous connection" if restarted else
           "the SuperLink does not admit this node's key (yet): is its .pub among the serving "
           "fedlaunch's --node-keys?")
    client_class = flwr_internals.FleetHttpClient
    activate = client_class.ActivateNode

    def patient(self: Any, request: Any) -> Any:
        deadline = time.monotonic() + patience
        told = False
        while True:
            try:
                return activate(self, request)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 412 or time.monotonic() > deadline:
                    raise
                if not told:
                    print(f"fedlaunch: {why}; retrying for up to {patience:.0f} s",
                          file=sys.stderr, flush=True)
                    told = True
                time.sleep(1)

    client_class.ActivateNode = patient  # type: ignore[method-assign]


def main() -> None:
    module = sys.modules.get("flwr.supernode.start_client_internal")
    if module is None:
        import flwr.supernode.start_client_internal as module  # noqa: PLC0415
    assert flwr_internals.supernode_time is not None  # the loop's `time`, which PromptTime replaces
    module.time = PromptTime(nudge=nudge_on_replies())  # type: ignore[union-attr]
    fast_object_pulls("flwr.supernode.start_client_internal")
    inline_sync_dependencies()
    path = os.environ.get(NODE_ID_FILE)
    if "--auth-supernode-private-key" in sys.argv:
        patient_sign_in(restarted=path is not None and os.path.exists(path))
    if path:
        record_node_id(path)
    flower_supernode = flwr_internals.flower_supernode
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
