"""End to end on the CPU: real Flower processes started by fedlaunch, and the app under plain `flwr run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.network.ports import free_port
from launcher.shim.supernode import EARLY_REPLY_NOTE
from tests.runs import (
    BIN,
    ROOT,
    SMALL,
    Processes,
    Run,
    assert_round_records,
    processes_mentioning,
    read_metrics,
    read_summary,
    rounds,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ["simulation", "deployment"])
def test_federated_run_completes_and_leaves_nothing_running(tmp_path: Path, engine: str) -> None:
    # Prepare
    out = tmp_path / "run"
    args = ["--clients", "3", "--rounds", "2", *SMALL, "--gpus", "cpu", "--headless",
            "--engine", engine]

    # Execute
    with Run(args, out, cwd=tmp_path) as run:
        code = run.wait(150)

        # Assert: exit code, what the user sees, and the run folder
        assert code == 0, run.report()
        run.assert_no_orphans()
    assert "round 2/2" in run.stdout and "exit 0" in run.stdout, run.stdout[-2000:]
    records = read_metrics(out)
    events = [r["event"] for r in records]
    assert "start" in events and events[-1] == "end", events
    assert records[-1]["exit_reason"] == "completed"
    assert_round_records(rounds(out), [1, 2], replies=3)
    assert [r["round"] for r in records if r["event"] == "round_start"] == [1, 2]
    logs = {p.name for p in (out / "logs").iterdir()}
    if engine == "deployment":
        assert {"superlink.log", "server.log", "client-0.log", "client-1.log", "client-2.log"} <= logs
        assert "round 2/2" in (out / "logs" / "server.log").read_text()
        # the SuperNode's early-reply hook fired on a real reply (launcher/shim/supernode.py)
        assert EARLY_REPLY_NOTE in (out / "logs" / "client-0.log").read_text()
    else:  # one process: the ServerApp, the virtual nodes, and the workers it forked
        assert "superlink.log" not in logs and "server.log" not in logs, logs
        assert "round 2/2" in (out / "logs" / "simulation.log").read_text()
        assert "engine: simulation" not in run.stdout  # --dry-run says it, not a run
        tasks = [json.loads(line) for line in (out / "workers.jsonl").read_text().splitlines()]
        assert sorted((t["round"], t["client"]) for t in tasks) == [
            (r, c) for r in (1, 2) for c in range(3)], tasks
        assert all(t["status"] == "completed" and t["worker"] in ("worker-0", "worker-1")
                   for t in tasks), tasks
        pool = json.loads((out / "pool.json").read_text())
        assert sorted(pool["clients"], key=int) == ["0", "1", "2"], pool
        assert sum(w["tasks"] for w in pool["workers"]) == 6, pool
    summary = read_summary(out)
    assert summary["mode"] == "federated"
    assert summary["exit_reason"] == "completed"
    assert summary["rounds_completed"] == 2
    assert summary["final_accuracy"] == rounds(out)[-1]["accuracy"]
    assert summary["best_accuracy"] == max(r["accuracy"] for r in rounds(out))
    assert summary["train_images"] > 0 and summary["train_images_per_second"] > 0
    assert summary["wall_seconds"] > 0
    assert (out / "config.json").exists() and (out / "checkpoints" / "last.pt").exists()
    partitions = (out / "partitions.json").read_text()
    assert '"num_clients": 3' in partitions


@pytest.mark.timeout(180)
def test_round_1_waits_out_the_clients_start_up_not_the_round_timeout(tmp_path: Path) -> None:
    """A --round-timeout shorter than the clients' start-up: each SuperNode signs in while its
    warm executor still imports torch, and the first task loads the app and the data. Round 1
    waits for a node's first reply until --startup-timeout, so no reply of it is lost."""
    # Prepare
    out = tmp_path / "run"
    args = ["--clients", "2", "--rounds", "1", *SMALL, "--gpus", "cpu", "--headless",
            "--engine", "deployment", "--round-timeout", "1"]

    # Execute
    with Run(args, out, cwd=tmp_path) as run:
        code = run.wait(150)

        # Assert
        assert code == 0, run.report()
        run.assert_no_orphans()
    assert_round_records(rounds(out), [1], replies=2)
    server = (out / "logs" / "server.log").read_text()
    assert "round timeout" not in server, server[-3000:]


@pytest.mark.timeout(120)
def test_local_baseline_runs_its_epochs(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "local"

    # Execute
    with Run(["--local", "--epochs", "2", *SMALL, "--gpus", "cpu", "--headless"], out,
             cwd=tmp_path) as run:
        code = run.wait(100)

        # Assert
        assert code == 0, run.report()
        run.assert_no_orphans()
    summary = read_summary(out)
    assert summary["mode"] == "local"
    assert summary["exit_reason"] == "completed"
    assert summary["epochs_completed"] == 2
    assert_round_records(rounds(out, "epoch"), [1, 2], unit="epoch")
    assert (out / "logs" / "local.log").exists()


@pytest.mark.timeout(240)
def test_the_repository_is_a_flower_app_for_plain_flwr_run(tmp_path: Path) -> None:
    """SuperLink, two stock SuperNodes and `flwr run <repo> --stream`, all started by hand."""
    # Prepare
    port = free_port()
    homes = {name: tmp_path / "flwr" / name for name in ("superlink", "node-0", "node-1", "submit")}
    for home in homes.values():
        home.mkdir(parents=True)
    (homes["submit"] / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    out = tmp_path / "out"
    procs = Processes(tmp_path)
    try:
        link = procs.start("superlink", [
            str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation",
        ], {"FLWR_HOME": str(homes["superlink"])})
        wait_for_port(port, abort=lambda: None if link.poll() is None else procs.log("superlink"))
        for i in range(2):
            procs.start(f"node-{i}", [
                str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--node-config", f"partition-id={i} num-partitions=2",
                "--host", "127.0.0.1", "--port", str(free_port()),
            ], {"FLWR_HOME": str(homes[f"node-{i}"])})
        config = (f'rounds=2 clients=2 dataset="synthetic" model="cnn" limit-train=600 '
                  f'limit-test=200 round-timeout=60.0 out-dir="{out}"')

        # Execute
        submit = procs.start("submit", [
            str(BIN / "flwr"), "run", str(ROOT), "local", "--run-config", config, "--stream",
        ], {"FLWR_HOME": str(homes["submit"])}, cwd=ROOT)
        wait_until(lambda: len(rounds(out)) >= 2, 200, "2 rounds in metrics.jsonl",
                   interval=0.5, abort=lambda: None if submit.poll() is None or len(rounds(out)) >= 2
                   else f"flwr run exited {submit.returncode}: {procs.log('submit')[-3000:]}")
        procs.record()

        # Assert
        assert_round_records(rounds(out), [1, 2], replies=2)
        wait_until(lambda: (out / "summary.json").exists(), 30, "summary.json")
        summary = read_summary(out)
        assert summary["exit_reason"] == "completed" and summary["rounds_completed"] == 2
    finally:
        procs.kill_all()
    wait_until(lambda: not processes_mentioning(str(tmp_path)), 10, "every process to end")
