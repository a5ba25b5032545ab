"""The client host's last word: the final pool.json lists every client it ran, with its restarts."""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import time
from pathlib import Path

from launcher.shim import clienthost
from launcher.shim.endpoint import Wire
from launcher.shim.hostparts import Endpoint, owner_only_listener


def test_the_final_pool_json_keeps_every_client_and_its_restarts(tmp_path: Path) -> None:
    # Prepare: a host with two client endpoints (stand-in processes), client 0 restarted once
    sock = tmp_path / "pool.sock"
    args = clienthost.parse_args(["--superlink", "127.0.0.1:9", "--run-dir", str(tmp_path),
                                  "--socket", str(sock), "--partition-ids", "0-1",
                                  "--num-partitions", "2"])
    host = clienthost.Host(args, owner_only_listener(sock))
    children = {}
    for client in (0, 1):
        child = subprocess.Popen(["sleep", "60"])
        ours, _theirs = socket.socketpair()
        host.endpoints[client] = Endpoint(client, child.pid, ours, Wire(ours), time.time())
        host.by_pid[child.pid] = client
        host.selector.register(ours, selectors.EVENT_READ, ("endpoint", client))
        children[client] = child
    host.restarts[0] = 1
    host.endpoints[1].current = {"client": 1}  # stopped while its SuperNode held a task

    # Execute
    host.shutdown()

    # Assert: both stopped, both listed, the restart kept, nothing shown busy
    assert all(child.poll() is not None for child in children.values())
    status = json.loads((tmp_path / "pool.json").read_text())
    assert status["clients"] == {
        "0": {"pid": children[0].pid, "restarts": 1, "busy": False},
        "1": {"pid": children[1].pid, "restarts": 0, "busy": False},
    }
    assert host.endpoints == {}
