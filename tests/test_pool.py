"""The worker pool on real processes: many Flower clients (forked SuperNodes) served by 2 workers.

24 clients, 2 workers, a quarter sampled: each round gets 6 replies, only the workers and the
server side hold torch (read in /proc/<pid>/maps), workers.jsonl names the worker of every task,
and SIGINT leaves nothing behind. A worker killed mid-task is restarted and the run goes on; a
client endpoint killed is restarted under its partition id.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.runs import Run, alive, cmdline, read_summary, rounds, wait_until

pytestmark = pytest.mark.e2e

POOL = ["--engine", "deployment", "--dataset", "synthetic", "--model", "cnn", "--limit-test", "200",
        "--gpus", "cpu", "--headless", "--round-timeout", "120"]


def holds_torch(proc: psutil.Process) -> bool:
    """Whether the process has torch's shared library mapped."""
    try:
        return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def pool_kind(proc: psutil.Process, host_pids: set[int]) -> str:
    """worker, clienthost, endpoint (forked by the host), server-side (the ServerApp), or other."""
    argv = cmdline(proc)
    try:
        parent = proc.ppid()
    except psutil.Error:
        parent = 0
    if "launcher.shim.worker" in argv:
        return "worker"
    if "launcher.shim.clienthost" in argv:
        return "endpoint" if parent in host_pids else "clienthost"
    if "launcher.shim.serverhost" in argv:
        return "server-side"
    return "other"


def workers_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "workers.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pool_status(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "pool.json").read_text()))
    except (OSError, ValueError):
        return {}


@pytest.mark.timeout(300)
def test_ctrl_c_in_a_terminal_stops_the_pool_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl+C reaches every process of the group at once: the client endpoints die
    with it while the host may still ring or hand them tasks. The host must not crash on them."""
    out = tmp_path / "run"
    args = ["--clients", "8", "--workers", "2", "--fraction-train", "0.5", "--rounds", "50",
            "--limit-train", "1600", *POOL]

    with Run(args, out, cwd=tmp_path) as run:
        run.wait_for_event("round", 2, timeout=240)
        run.send_group(signal.SIGINT)
        code = run.wait(120)

        assert code == 130, run.report()
        run.assert_no_orphans()
    clients_log = (out / "logs" / "clients.log").read_text()
    assert "Traceback" not in clients_log, clients_log[-3000:]
    final = pool_status(out)
    assert sorted(final["clients"], key=int) == [str(c) for c in range(8)], final
    assert read_summary(out)["exit_reason"] == "interrupted"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_24_clients_on_2_workers_a_quarter_sampled(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    args = ["--clients", "24", "--workers", "2", "--fraction-train", "0.25", "--rounds", "4",
            "--limit-train", "2400", *POOL]

    # Execute: three rounds, a look at every process's memory maps, then Ctrl+C
    with Run(args, out, cwd=tmp_path) as run:
        run.wait_for_event("round", 3, timeout=600)
        tree = [p for p in run.snapshot() if alive(p)]
        hosts = {p.pid for p in tree if "launcher.shim.clienthost" in cmdline(p)}
        kinds = {p.pid: pool_kind(p, hosts) for p in tree}
        torch_holders = {kinds[p.pid] for p in tree if holds_torch(p)}
        endpoints = sum(1 for k in kinds.values() if k == "endpoint")
        run.send(signal.SIGINT)
        code = run.wait(120)

        # Assert
        assert code == 130, run.report()
        run.assert_no_orphans()
    assert endpoints == 24, kinds
    assert torch_holders <= {"worker", "server-side"}, (torch_holders, kinds)
    assert "worker" in torch_holders
    done = rounds(out)
    assert [r["round"] for r in done[:3]] == [1, 2, 3], done
    assert all(r["replies"] == 6 for r in done[:3]), [r["replies"] for r in done]
    tasks = [t for t in workers_log(out) if t.get("type") == "train" and t.get("round") in (1, 2, 3)]
    for round_ in (1, 2, 3):
        mine = [t for t in tasks if t["round"] == round_]
        assert len(mine) == 6 and len({t["client"] for t in mine}) == 6, mine
        assert all(t["status"] == "completed" and t["worker"] in ("worker-0", "worker-1")
                   for t in mine), mine
        assert all(t["created"] <= t["app_start"] <= t["app_end"] <= t["sent"] for t in mine), mine
        # a worker pulls the round's model once; its later tasks of the round pull only the head
        firsts = len({t["worker"] for t in mine})
        kept = sorted(t["kept_objects"] for t in mine)
        assert kept[:firsts] == [0] * firsts and all(k >= 4 for k in kept[firsts:]), mine
    assert {t["worker"] for t in tasks} == {"worker-0", "worker-1"}, tasks
    assert read_summary(out)["exit_reason"] == "interrupted"
    headless_round_lines = [line for line in run.stdout.splitlines() if line.startswith("round ")]
    assert len(headless_round_lines) >= 3, run.stdout[-2000:]
    per_client = [line for line in run.stdout.splitlines()
                  if line.startswith("clients    | fedlaunch: client-")]
    assert not per_client, f"one line per client on the headless stream: {per_client[:5]}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_killed_mid_task_and_a_client_killed_are_restarted(tmp_path: Path) -> None:
    # Prepare: 8 clients, 2 workers, half sampled; training long enough to be caught at it
    out = tmp_path / "run"
    args = ["--clients", "8", "--workers", "2", "--fraction-train", "0.5", "--rounds", "4",
            "--limit-train", "8000", "--local-epochs", "6", *POOL]

    with Run(args, out, cwd=tmp_path) as run:
        run.wait_for_event("round", 1, timeout=600)

        # Execute: SIGKILL a worker while it trains a client
        def training() -> dict[str, Any] | None:
            status = pool_status(out)  # rewritten at most every 0.5 s: take only a fresh one
            if time.time() - float(status.get("time", 0)) > 0.3:
                return None
            return next((w for w in status.get("workers", [])
                         if w.get("state") == "training" and w.get("pid")), None)

        victim = wait_until(training, 300, "a worker training", interval=0.05, abort=run.exited)
        os.kill(int(victim["pid"]), signal.SIGKILL)
        # ... and SIGKILL one client endpoint (a forked SuperNode) that is idle
        status = pool_status(out)
        idle = next(c for c, info in status["clients"].items() if not info["busy"])
        os.kill(int(status["clients"][idle]["pid"]), signal.SIGKILL)
        code = run.wait(600)

        # Assert: the run completes; both come back under their names
        assert code == 0, run.report()
        run.assert_no_orphans()
    summary = read_summary(out)
    assert summary["rounds_completed"] == 4, summary
    assert summary["restarts"].get(victim["name"]) == 1, summary
    lost = [t for t in workers_log(out) if str(t.get("status", "")).startswith("lost")]
    assert lost and lost[0]["worker"] == victim["name"], workers_log(out)
    assert pool_status(out)["clients"][idle]["restarts"] == 1, pool_status(out)
    assert f"client-{idle} exited" in (out / "logs" / "clients.log").read_text()
