"""The client host at its ends: peers that died before it noticed, and the final pool.json."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from launcher.shim import clienthost
from launcher.shim.endpoint import Wire
from launcher.shim.hostparts import Endpoint, Worker, owner_only_listener


def new_host(tmp_path: Path) -> clienthost.Host:
    sock = tmp_path / "pool.sock"
    args = clienthost.parse_args(["--superlink", "127.0.0.1:9", "--run-dir", str(tmp_path),
                                  "--socket", str(sock), "--partition-ids", "0-1",
                                  "--num-partitions", "2"])
    return clienthost.Host(args, owner_only_listener(sock))


def as_an_endpoint() -> None:
    """A stand-in's signals as a real endpoint's: the host's fork resets SIGINT and SIGTERM to
    their defaults, so a Ctrl+C ends it even when the tests run with SIGINT ignored (started with
    `&` from a script or by CI), a disposition that a plain child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_message_to_a_peer_that_died_is_not_a_crash(tmp_path: Path) -> None:
    # Prepare: a Ctrl+C in a terminal kills the endpoints and workers with the host; the host
    # may still hand out a queued task (or ring a node) before it notices
    host = new_host(tmp_path)
    endpoint_end, endpoint_peer = socket.socketpair()
    worker_end, worker_peer = socket.socketpair()
    endpoint_peer.close()
    worker_peer.close()
    host.endpoints[0] = Endpoint(0, 4242, endpoint_end, Wire(endpoint_end), time.time())
    worker = Worker(worker_end, Wire(worker_end), name="worker-0", ready=True)
    host.workers.append(worker)
    host.queue.append({"client": 0, "pid": 4242, "token": "t", "address": "127.0.0.1:1"})

    # Execute
    host.dispatch()
    rung = host.endpoints[0].wire.tell(op="poll")

    # Assert: no exception; the task is the dead worker's, for its death to be handled as usual
    assert worker.task is not None and worker.task["client"] == 0
    assert rung is False
    with pytest.raises(OSError):
        host.endpoints[0].wire.send(op="poll")  # send still raises: only tell forgives


def test_the_final_pool_json_keeps_every_client_and_its_restarts(tmp_path: Path) -> None:
    # Prepare: a host with two client endpoints (stand-in processes), client 0 restarted once
    host = new_host(tmp_path)
    children = {}
    for client in (0, 1):
        child = subprocess.Popen(["sleep", "60"], preexec_fn=as_an_endpoint)
        ours, _theirs = socket.socketpair()
        host.endpoints[client] = Endpoint(client, child.pid, ours, Wire(ours), time.time())
        host.by_pid[child.pid] = client
        host.selector.register(ours, selectors.EVENT_READ, ("endpoint", client))
        children[client] = child
    host.restarts[0] = 1
    host.endpoints[1].current = {"client": 1}  # stopped while its SuperNode held a task

    # Execute: a Ctrl+C reaches client 0 first; the host reaps it before it stops the others
    host.stopping = True
    children[0].send_signal(2)
    children[0].wait(10)
    host.endpoint_gone(0, -2)
    host.by_pid.pop(children[0].pid)
    host.shutdown()

    # Assert: both stopped, both listed, the restart kept, nothing shown busy
    assert all(child.poll() is not None for child in children.values())
    status = json.loads((tmp_path / "pool.json").read_text())
    assert status["clients"] == {
        "0": {"pid": children[0].pid, "restarts": 1, "busy": False},
        "1": {"pid": children[1].pid, "restarts": 0, "busy": False},
    }
    assert host.endpoints == {}
