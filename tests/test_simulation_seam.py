"""The simulation engine's hold on Flower: the backend seam and the protobuf wire, on Flower's real
code (no torch, no processes): fails when a flwr upgrade moves what launcher.shim.simhost relies on."""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from launcher.shim import flwr_internals as fi
from launcher.shim import simwire


def test_start_vce_still_imports_its_backend_where_the_seam_expects_it() -> None:
    assert fi.backend_seam_intact(), (
        f"{'.'.join(fi.BACKEND_IMPORT[:2])} no longer does `{fi.BACKEND_IMPORT[2]}`: the simulation "
        "engine cannot supply its backend; update launcher/shim/flwr_internals.py")


def test_a_closed_peer_is_closed_not_a_hang() -> None:
    ours, theirs = socket.socketpair()
    ours.close()
    with theirs, pytest.raises(simwire.Closed):
        simwire.recv_frame(theirs)


def test_a_peer_that_neither_reads_nor_answers_times_out_at_the_deadline() -> None:
    """A stopped worker fills the socket's buffer (send) or never answers (receive): both end at
    the task's deadline with TimeoutError, and the socket is blocking again afterwards."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            simwire.send_frame(ours, {"op": "task"}, b"x" * 10_000_000, deadline=started + 0.3)
        with pytest.raises(TimeoutError):
            simwire.recv_frame(theirs, time.monotonic() + 0.3)
        assert 0.5 <= time.monotonic() - started < 5
        assert ours.gettimeout() is None and theirs.gettimeout() is None


@pytest.mark.timeout(120)
def test_flowers_simulation_loop_runs_the_installed_backend_and_keeps_each_nodes_state() -> None:
    """Flower's own run_simulation, 3 virtual nodes, 2 rounds, with an in-process backend installed
    through the seam: every task reaches it, Ray is never imported, and the Context state a node's
    ClientApp keeps is handed back to it on its next task."""
    calls: list[int] = []
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        count = int(context.state["seen"]["count"]) + 1 if "seen" in context.state else 1
        context.state["seen"] = MetricRecord({"count": count})
        return Message(RecordDict({"metrics": MetricRecord({
            "count": count, "partition-id": int(context.node_config["partition-id"])})}),
            reply_to=msg)

    counts: list[list[int]] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        while len(nodes := sorted(grid.get_node_ids())) < 3:  # registered once the loop starts
            time.sleep(0.05)
        for _ in range(2):
            messages = [Message(RecordDict({"config": ConfigRecord({"lr": 0.5})}), dst_node_id=n,
                                message_type="train") for n in nodes]
            replies = list(grid.send_and_receive(messages, timeout=60))
            counts.append(sorted(int(r.content["metrics"]["count"]) for r in replies))

    class InProcess:
        def __init__(self, backend_config: dict[str, Any]) -> None:
            self.app: ClientApp | None = None

        num_workers = 2

        def is_worker_idle(self) -> bool:
            return True

        def build(self, app_fn: Any) -> None:
            self.app = app_fn()

        def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
            calls.append(int(context.node_config["partition-id"]))
            # through a socket both ways, as the workers get them
            given = context
            ours, theirs = socket.socketpair()
            with ours, theirs:
                simwire.send_frame(ours, {"op": "task", **simwire.context_header(context)},
                                   simwire.pack_message(message), simwire.pack_state(context, message))
                header, parts = simwire.recv_frame(theirs)
                assert header["op"] == "task" and header["node_config"]["partition-id"] in (0, 1, 2)
                message = simwire.unpack_message(parts[0])
                context = simwire.with_state(header, parts[1], {"mine": 1})
                assert message.content["config"]["lr"] == 0.5
                assert self.app is not None
                reply = self.app(message=message, context=context)
                simwire.send_frame(theirs, {"op": "reply"}, simwire.pack_message(reply),
                                   simwire.pack_state(context, message))
                _, back = simwire.recv_frame(ours)
            return (simwire.unpack_message(back[0]),
                    simwire.with_state(simwire.context_header(given), back[1], given.run_config))

        def terminate(self) -> None:
            pass

    from flwr.simulation import run_simulation

    saved = sys.modules.get(fi.RAYBACKEND_MODULE)
    try:
        fi.install_simulation_backend(InProcess)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=3,
                       backend_name="fedlaunch")
    finally:
        if saved is None:
            sys.modules.pop(fi.RAYBACKEND_MODULE, None)
        else:
            sys.modules[fi.RAYBACKEND_MODULE] = saved
    assert sorted(calls) == [0, 0, 1, 1, 2, 2]
    assert counts == [[1, 1, 1], [2, 2, 2]]  # each node's state came back to it
    assert "ray" not in sys.modules
