"""The simulation engine's run on screen at 100 clients, from the files its host writes.

The run folder is written by the engine's own code (launcher.shim.simpool's Pool writes pool.json
and the virtual nodes' progress/client-N.node, fedcore's ClientApp its progress files, the
ServerApp's RunDir metrics.jsonl), read back by the launcher's RunFollower, and shown by the app
at 80x24 and 160x48: the workers table and the clients summary say what the pool is doing.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedcore.client_app import ProgressFile
from fedcore.config import RunConfig
from fedcore.rundir import RunDir
from launcher.events import Event, ProcessStarted, RunStarted
from launcher.shim.simpool import Pool, SimWorker, WorkerOrder
from launcher.supervision.follow import RunFollower
from launcher.tui.clients import ClientsTable
from launcher.tui.workers import ClientsSummary, WorkersTable
from tests.test_tui import NOW, Script, cell, screen_text, settle

CLIENTS = 100
ROUND = 3
TRAINING = {3: ("worker-0", 2150.0, 21), 42: ("worker-1", 2080.0, 20)}  # client: its worker
DONE = (11, 23, 64, 90, 99)  # trained this round, waiting for the next
QUEUED = (17, 58, 71)  # sampled, waiting for a worker


def write_run_folder(run_dir: Path) -> None:
    """What the simulation host and its workers write while round 3 of 20 runs."""
    run = RunDir(run_dir)
    for r in (1, 2):
        run.append_metric("round_start", round=r, total=20)
        run.append_metric("round", round=r, total=20, accuracy=0.3 + r / 10, loss=2.0 - r / 10,
                          replies=10, seconds=12.5, best_accuracy=0.3 + r / 10)
    run.append_metric("round_start", round=ROUND, total=20)
    cfg = RunConfig(out_dir=str(run_dir))
    for client in DONE:
        ProgressFile(cfg, client).write("waiting", round=ROUND, epoch=1, epochs=1, samples=500,
                                        train_loss=1.5)
    for client in TRAINING:
        ProgressFile(cfg, client).write("training", round=ROUND, epoch=1, epochs=1, batch=5,
                                        batches=16, samples=160, train_loss=1.7)
    orders = [WorkerOrder(f"worker-{k}", "cpu", {}) for k in range(2)]
    pool = Pool(run_dir, run_dir / "pool.sock", orders, -1, {"round-timeout": 600.0}, 3, CLIENTS)
    try:
        pool.nodes_registered()
        for n, (client, (name, rate, tasks)) in enumerate(TRAINING.items()):
            pool.workers[name] = SimWorker(socket.socket(socket.AF_UNIX), name, 5000 + n, "cpu",
                                           "training", client, tasks, rate)
            pool.busy[client] = True
        pool.waiting.update(dict.fromkeys(QUEUED, 1))
        pool.write_status()
    finally:
        for worker in pool.workers.values():
            worker.sock.close()
        pool.listener.close()


def simulation_events(run_dir: Path) -> list[Event]:
    follower = RunFollower(run_dir)  # before the files: a launch reads what is written after it
    write_run_folder(run_dir)
    return [RunStarted("sim-run", "federated", "cnn", "cifar10", "iid", 20, CLIENTS, str(run_dir),
                       NOW - 60.0, dict.fromkeys(range(CLIENTS))),
            ProcessStarted("simulation", 4321, "simulation"),
            *follower.poll()]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_a_100_client_simulation_run_shows_its_workers_and_clients(
        tmp_path: Path, size: tuple[int, int]) -> None:
    # Prepare
    script = Script(simulation_events(tmp_path))

    # Execute
    async with script.app().run_test(size=size) as pilot:
        await settle(pilot, script)
        workers = pilot.app.query_one(WorkersTable)
        summary = pilot.app.query_one(ClientsSummary)
        clients = pilot.app.query_one(ClientsTable)
        rows = [line.strip("│ ").split() for line in screen_text(workers).splitlines()
                if "worker-" in line]
        line = " ".join(screen_text(summary).split())

        # Assert: each worker's client, state, speed and task count; the clients by state, the
        # round's sample (the three queued for a worker too), the queue; all 100 rows, scrolling
        assert workers.display and rows == [
            ["worker-0", "cpu", "-", "3", "training", "2,150", "21"],
            ["worker-1", "cpu", "-", "42", "training", "2,080", "20"]], rows
        assert line == ("100 clients: 93 connected, 5 waiting, 2 training | round 3 sampled (10): "
                        "3, 11, 17, 23, 42, 58, 64, 71, 90, 99 | waiting for a worker: 17, 58, 71")
        assert summary.region.bottom <= size[1] and workers.region.bottom <= clients.region.y
        assert clients.row_count == CLIENTS and clients.max_scroll_y > 0
        assert clients.outer_size.height < size[1], "the clients table must scroll, not fill"
        assert cell(clients, 3, "state").plain.strip() == "training"
        assert cell(clients, 3, "batch").plain.strip() == "5/16"
        assert cell(clients, 11, "state").plain.strip() == "waiting"
        assert cell(clients, 17, "state").plain.strip() == "connected"
