"""A client's two processes: the prompt SuperNode (how long it waits between polls, the node id
it records, its patient sign-in) and the warm executor (when it stops retrying)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from launcher.shim import supernode
from launcher.shim.supernode import FIRST_IDLE_WAIT, IDLE_WAIT, SHORT_WAIT, PromptTime
from tests.runs import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(supernode.time, "sleep", waits.append)
    return waits


class Bell:
    """Stands in for PromptTime's doorbell: records each idle wait, never rung."""

    def __init__(self, waits: list[float]) -> None:
        self.waits = waits

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False

    def clear(self) -> None:
        pass


def test_idle_polls_start_fast_after_a_task_and_settle(slept: list[float]) -> None:
    clock = Clock()
    prompt = PromptTime(clock)
    prompt.doorbell = Bell(slept)  # type: ignore[assignment]
    prompt.sleep(3)  # no task yet: the settled idle wait
    prompt.sleep(0.5)  # waiting for the ClientApp's reply: short, and the node counts as busy
    clock.now += 0.01
    prompt.sleep(3)  # just replied: the next round's message is due soon
    clock.now += 0.4
    prompt.sleep(3)
    clock.now += 5
    prompt.sleep(3)
    assert slept == [IDLE_WAIT, SHORT_WAIT, FIRST_IDLE_WAIT, pytest.approx(0.1025), IDLE_WAIT]


def test_other_time_functions_are_the_real_ones() -> None:
    import time

    assert PromptTime().monotonic is time.monotonic


def test_the_node_id_flower_assigns_is_written_atomically(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    monkeypatch.setattr(InMemoryNodeState, "set_node_id", InMemoryNodeState.set_node_id)
    path = tmp_path / "progress" / "client-3.node"
    supernode.record_node_id(str(path))
    state = InMemoryNodeState.__new__(InMemoryNodeState)
    state.set_node_id(1234567890123)
    assert path.read_text() == "1234567890123\n" and state.get_node_id() == 1234567890123
    state.set_node_id(42)  # a SuperNode that reconnects gets a new id
    assert path.read_text() == "42\n"
    assert [p.name for p in path.parent.iterdir()] == ["client-3.node"]


def test_the_executor_stops_retrying_once_its_supernode_is_gone() -> None:
    """Flower's runtime client retries an unreachable SuperNode forever; the executor's gives up
    when told its SuperNode (or the launcher) is gone, so it can exit instead of hanging."""
    import httpx

    from launcher.shim.executor import Executor

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executor = Executor(f"127.0.0.1:{port}", lambda *_: None, worth_retrying=lambda: False)
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        executor.acquire()
    assert time.monotonic() - started < 5


def test_a_refused_sign_in_is_retried_until_admitted(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """HTTP 412 (the key is not registered yet, or its dead node still holds it) is retried with
    one line saying why; success ends the wait; other errors are not retried."""
    import httpx
    from flwr.supernode.fleet_http_client import FleetHttpClient

    answers: list[int] = [412, 412, 200]

    def activate(self: object, request: object) -> str:
        code = answers.pop(0)
        if code != 200:
            response = httpx.Response(code, request=httpx.Request("POST", "http://x"))
            raise httpx.HTTPStatusError("refused", request=response.request, response=response)
        return "activated"

    monkeypatch.setattr(FleetHttpClient, "ActivateNode", activate)
    monkeypatch.setattr(supernode.time, "sleep", lambda _: None)
    supernode.patient_sign_in(restarted=False)
    assert FleetHttpClient.ActivateNode(object(), None) == "activated"  # type: ignore[arg-type]
    assert capsys.readouterr().err.count("does not admit this node's key") == 1

    answers[:] = [500]
    with pytest.raises(httpx.HTTPStatusError):
        FleetHttpClient.ActivateNode(object(), None)  # type: ignore[arg-type]


def test_the_launcher_shows_a_client_connected_when_its_supernode_signs_in(tmp_path: Path) -> None:
    """client-N.node written at sign-in -> `connected` (before that client's first progress);
    a file left by an earlier launch of the run (--resume) says nothing."""
    import json
    import os

    from launcher.supervision.follow import RunFollower

    progress = tmp_path / "progress"
    progress.mkdir()
    (progress / "client-0.node").write_text("5\n")
    os.utime(progress / "client-0.node", (1, 1))  # from the run's previous launch
    follower = RunFollower(tmp_path, {0: None, 1: 3})
    assert follower.poll() == []

    (progress / "client-1.json").write_text(json.dumps(
        {"client": 1, "state": "training", "round": 1, "batch": 2, "batches": 5}))
    (progress / "client-1.node").write_text("7\n")
    events = follower.poll()
    assert [(e.client, e.state, e.gpu) for e in events] == [(1, "connected", 3), (1, "training", 3)]
    assert follower.poll() == []


def test_a_stored_reply_ends_the_short_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for a ClientApp's reply ends when the node state stores it, not SHORT_WAIT later;
    without a store it lasts SHORT_WAIT, and the idle poll is not shortened by a store."""
    from types import SimpleNamespace

    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    for name in ("store_message_and_object_tree", "store_object"):  # restored after the test
        monkeypatch.setattr(InMemoryNodeState, name, getattr(InMemoryNodeState, name))
    nudge = supernode.nudge_on_replies()
    waits: list[tuple[float | None, bool]] = []  # each wait on the nudge: (its limit, woken)
    real_wait = nudge.wait

    def wait(timeout: float | None = None) -> bool:
        woken = real_wait(timeout)
        waits.append((timeout, woken))
        return woken

    monkeypatch.setattr(nudge, "wait", wait)
    prompt = PromptTime(nudge=nudge)
    state = InMemoryNodeState(ObjectStoreFactory().store())

    started = time.monotonic()
    prompt.sleep(0.5)
    assert waits == [(SHORT_WAIT, False)]  # no store: the whole SHORT_WAIT, not the 0.5 s asked
    assert time.monotonic() - started >= SHORT_WAIT * 0.9

    # What the runtime API calls with a ClientApp's reply; an empty id is refused before the
    # object tree is looked at, and even a refused reply wakes the wait (it then looks again).
    message = SimpleNamespace(metadata=SimpleNamespace(message_id=""))
    state.store_message_and_object_tree(message, None, "s")  # stored then or mid-wait
    prompt.sleep(10.0 * SHORT_WAIT)  # a short wait (< 1 s) that the store ends
    assert waits[1] == (SHORT_WAIT, True)  # woken by the store, not by the end of SHORT_WAIT
    assert not nudge.is_set()

    state.store_object(run_id=1, session_id="none", object_id="x", object_content=b"")
    assert nudge.is_set()  # even a refused object wakes the wait: it then looks again


def test_the_doorbell_ends_an_idle_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(supernode, "IDLE_WAIT", 10.0)  # as with many clients (at most 3 s)
    prompt = PromptTime()
    threading.Timer(0.05, prompt.doorbell.set).start()
    started = time.monotonic()
    prompt.sleep(3)  # the idle poll: IDLE_WAIT unless rung
    assert time.monotonic() - started < 5.0
    assert not prompt.doorbell.is_set()


def test_a_rung_node_polls_on_its_own_only_at_its_idle_wait(slept: list[float]) -> None:
    """With the doorbell, no quick polls after a task: the ring says when the next message is in."""
    clock = Clock()
    prompt = PromptTime(clock, rung=True)
    prompt.doorbell = Bell(slept)  # type: ignore[assignment]
    prompt.sleep(0.5)  # waited for the ClientApp's reply
    clock.now += 0.01
    prompt.sleep(3)
    assert slept == [SHORT_WAIT, IDLE_WAIT]


def test_sync_dependencies_run_on_the_event_loop_thread_once_inlined(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import fastapi.dependencies.utils as resolve
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    monkeypatch.setattr(resolve, "run_in_threadpool", resolve.run_in_threadpool)  # undone after
    seen: dict[str, list[int]] = {"dependency": [], "loop": []}

    def dependency() -> int:
        seen["dependency"].append(threading.get_ident())
        return 7

    app = FastAPI()

    @app.get("/x")
    async def endpoint(value: int = Depends(dependency)) -> dict[str, int]:
        seen["loop"].append(threading.get_ident())
        return {"value": value}

    with TestClient(app) as client:
        assert client.get("/x").json() == {"value": 7}
        supernode.inline_sync_dependencies()
        assert client.get("/x").json() == {"value": 7}

    assert seen["dependency"][0] != seen["loop"][0]  # FastAPI's own way: a worker thread
    assert seen["dependency"][1] == seen["loop"][1]  # inlined: the event loop's thread


def test_the_supernode_runtime_api_answers_with_inlined_dependencies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's own runtime API app and client, over HTTP on loopback, with the patch in place."""
    import threading

    import fastapi.dependencies.utils as resolve
    import httpx
    import uvicorn
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.main import create_app
    from flwr.supernode.nodestate import NodeStateFactory

    from launcher.shim import flwr_internals as fi

    monkeypatch.setattr(resolve, "run_in_threadpool", resolve.run_in_threadpool)  # undone after
    supernode.inline_sync_dependencies()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(NodeStateFactory(objectstore_factory=ObjectStoreFactory()))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "the runtime API server to start", interval=0.05)

    def client(component: str, token: str | None = None) -> object:
        interceptors = [fi.RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(fi.RuntimeTokenHttpInterceptor(token))
        return fi.RuntimeHttpClient.from_server_address(
            server_address=f"127.0.0.1:{port}", insecure=True, root_certificates=None,
            interceptors=interceptors)

    try:
        answer = client("SuperExec").AcquireTask(  # type: ignore[attr-defined]
            fi.AcquireTaskRequest(supported_task_types=[fi.TaskType.CLIENT_APP]))
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client("flwr-clientapp", "not-a-token").SendTaskHeartbeat(  # type: ignore[attr-defined]
                fi.SendTaskHeartbeatRequest())
    finally:
        server.should_exit = True
        thread.join(10)

    assert not answer.HasField("task")  # nothing pending, answered through every dependency
    assert refused.value.response.status_code == 401  # the task-token dependency still refuses
