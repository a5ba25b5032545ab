"""Both engines on real processes: the same seed gives the same numbers, bit for bit.

On the CPU in fp32, with every client sampled each round, a run on the simulation engine (Flower's
simulation loop, fedlaunch's forked workers) and one on the Deployment Engine (a SuperLink, a
SuperNode per client) train the same clients on the same batches and aggregate them in the same
order: every round's metrics and the final weights agree exactly. And a simulation-engine worker
SIGKILLed mid-task, or stopped (SIGSTOP) so that it hangs, is replaced while the run goes on.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from tests.runs import SMALL, Run, read_summary, rounds, run_cli, wait_until

pytestmark = pytest.mark.e2e

SAME = ["--clients", "2", "--workers", "2", "--rounds", "2", "--gpus", "cpu", "--precision", "fp32",
        "--fraction-train", "1.0", "--seed", "7", "--partition", "iid", "--headless", *SMALL]
ROUND_FIELDS = ("round", "accuracy", "loss", "train_loss", "train_accuracy", "replies", "failures",
                "clients", "train_images", "best_accuracy")


def launch(engine: str, out: Path, cwd: Path) -> list[dict[str, object]]:
    result = run_cli([*SAME, "--engine", engine, "--out", str(out)], cwd=cwd, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert read_summary(out)["exit_reason"] == "completed"
    return [{k: r.get(k) for k in ROUND_FIELDS} for r in rounds(out)]


@pytest.mark.slow  # two runs, about 100 s on a loaded 2-core machine
@pytest.mark.timeout(600)
def test_same_seed_same_numbers_on_both_engines(tmp_path: Path) -> None:
    # Execute: one run on each engine, the same flags
    simulated = launch("simulation", tmp_path / "sim", tmp_path)
    deployed = launch("deployment", tmp_path / "dep", tmp_path)

    # Assert: the simulation run really ran no SuperLink, and the numbers are equal, bit for bit
    assert not (tmp_path / "sim" / "logs" / "superlink.log").exists()
    assert (tmp_path / "sim" / "logs" / "simulation.log").exists()
    assert (tmp_path / "dep" / "logs" / "superlink.log").exists()
    assert [r["round"] for r in simulated] == [1, 2], simulated
    assert simulated == deployed
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.pt", map_location="cpu",
                          weights_only=False)["state_dict"] for name in ("sim", "dep")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_killed_mid_task_is_replaced_and_the_round_goes_on(tmp_path: Path) -> None:
    # Prepare: 4 clients on 2 workers, tasks long enough to be caught training
    out = tmp_path / "run"
    args = ["--clients", "4", "--workers", "2", "--rounds", "4", "--gpus", "cpu", "--headless",
            "--engine", "simulation", "--dataset", "synthetic", "--model", "cnn",
            "--limit-train", "4000", "--limit-test", "200", "--local-epochs", "2"]

    with Run(args, out, cwd=tmp_path) as run:
        run.wait_for_event("round_start", round=2, timeout=400)

        # Execute: SIGKILL the worker pool.json shows training
        def training() -> int:
            status = json.loads((out / "pool.json").read_text())
            return next((w["pid"] for w in status["workers"] if w["state"] == "training"), 0)

        victim = wait_until(training, 120, "a worker training")
        os.kill(victim, signal.SIGKILL)
        code = run.wait(400)

        # Assert: the run completes; the task failed once, later rounds are whole again
        assert code == 0, run.report()
        run.assert_no_orphans()
    tasks = [json.loads(line) for line in (out / "workers.jsonl").read_text().splitlines()]
    lost = [t for t in tasks if str(t["status"]).startswith("lost")]
    assert len(lost) == 1, tasks
    done = rounds(out)
    assert sum(r["failures"] for r in done) == 1, done
    assert done[-1]["round"] == 4 and done[-1]["replies"] == 4, done
    log = (out / "logs" / "simulation.log").read_text()
    assert "died while it ran" in log and "restarting worker-" in log, log[-2000:]
    status = json.loads((out / "pool.json").read_text())
    assert len(status["workers"]) == 2 and victim not in [w["pid"] for w in status["workers"]]


def first_worker(out: Path) -> tuple[str, int] | None:
    """(name, pid) of the first worker pool.json lists, or None."""
    status = json.loads((out / "pool.json").read_text())
    return next(((w["name"], w["pid"]) for w in status["workers"]), None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_hung_worker_is_killed_after_the_round_timeout_and_replaced(tmp_path: Path) -> None:
    # Prepare: 4 clients on 2 workers; a task takes about a second, the round timeout is 30 s
    out = tmp_path / "run"
    args = ["--clients", "4", "--workers", "2", "--rounds", "4", "--gpus", "cpu", "--headless",
            "--engine", "simulation", "--dataset", "synthetic", "--model", "cnn",
            "--limit-train", "2000", "--limit-test", "200", "--local-epochs", "2",
            "--round-timeout", "30"]

    with Run(args, out, cwd=tmp_path) as run:
        run.wait_for_event("round_start", round=2, timeout=400)

        # Execute: stop (SIGSTOP) a worker: alive, and the task it runs now or the next one it
        # is given (idle workers take tasks in turn; rounds 2-4 have 12) is never answered
        name, victim = wait_until(lambda: first_worker(out), 120, "a worker in pool.json")
        os.kill(victim, signal.SIGSTOP)
        code = run.wait(400)

        # Assert: the run completes; the hung task failed once and is named, later rounds whole
        assert code == 0, run.report()
        run.assert_no_orphans()
    tasks = [json.loads(line) for line in (out / "workers.jsonl").read_text().splitlines()]
    hung = [t for t in tasks if str(t["status"]).startswith("timeout")]
    assert [(t["worker"], t["status"]) for t in hung] == [(name, f"timeout: {name} hung")], tasks
    assert hung[0]["sent"] - hung[0]["taken"] >= 30, hung
    done = rounds(out)
    assert sum(r["failures"] for r in done) == 1, done
    assert done[-1]["round"] == 4 and done[-1]["replies"] == 4, done
    log = (out / "logs" / "simulation.log").read_text()
    assert f"{name} (pid {victim}) ran client-{hung[0]['client']}'s task for 30 s" in log, log[-2000:]
    assert "killed as hung" in log and f"restarting {name}" in log, log[-2000:]
    status = json.loads((out / "pool.json").read_text())
    assert len(status["workers"]) == 2 and victim not in [w["pid"] for w in status["workers"]]
