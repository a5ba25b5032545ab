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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


FOUR_ON_TWO = ["--clients", "4", "--workers", "2", "--rounds", "4", "--gpus", "cpu", "--headless",
               "--engine", "simulation", "--dataset", "synthetic", "--model", "cnn",
               "--limit-test", "200", "--local-epochs", "2"]


def worker_faulted(tmp_path: Path, extra: list[str], pick: Callable[[dict[str, Any]], Any],
                   sig: int) -> tuple[Path, Any, list[dict[str, Any]], str]:
    """A 4-client, 4-round run on 2 simulation workers: once round 2 starts, the worker `pick`
    chooses from pool.json ((name, pid) or None to wait) gets `sig`. Asserts that the run then
    completes with nothing left, one failed task and a whole last round, and that pool.json ends
    with 2 workers, the victim not among them. Returns the run folder, the pick, workers.jsonl
    and the simulation log."""
    out = tmp_path / "run"
    with Run([*FOUR_ON_TWO, *extra], out, cwd=tmp_path) as run:
        run.wait_for_event("round_start", round=2, timeout=400)

        picked = wait_until(lambda: pick(json.loads((out / "pool.json").read_text())), 120,
                            "a worker to fault in pool.json")
        os.kill(picked[1], sig)
        code = run.wait(400)

        assert code == 0, run.report()
        run.assert_no_orphans()
    done = rounds(out)
    assert sum(r["failures"] for r in done) == 1, done
    assert done[-1]["round"] == 4 and done[-1]["replies"] == 4, done
    status = json.loads((out / "pool.json").read_text())
    assert len(status["workers"]) == 2 and picked[1] not in [w["pid"] for w in status["workers"]]
    tasks = [json.loads(line) for line in (out / "workers.jsonl").read_text().splitlines()]
    return out, picked, tasks, (out / "logs" / "simulation.log").read_text()


def training_worker(status: dict[str, Any]) -> tuple[str, int] | None:
    return next(((w["name"], w["pid"]) for w in status["workers"] if w["state"] == "training"), None)


def first_worker(status: dict[str, Any]) -> tuple[str, int] | None:
    return next(((w["name"], w["pid"]) for w in status["workers"]), None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_killed_mid_task_is_replaced_and_the_round_goes_on(tmp_path: Path) -> None:
    # 4 clients on 2 workers, tasks long enough to be caught training: SIGKILL the training one
    _, _, tasks, log = worker_faulted(tmp_path, ["--limit-train", "4000"], training_worker,
                                      signal.SIGKILL)

    # the task failed once (later rounds whole again: worker_faulted)
    assert len([t for t in tasks if str(t["status"]).startswith("lost")]) == 1, tasks
    assert "died while it ran" in log and "restarting worker-" in log, log[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_hung_worker_is_killed_after_the_round_timeout_and_replaced(tmp_path: Path) -> None:
    # A task takes about a second, the round timeout is 30 s. SIGSTOP a worker: alive, and the
    # task it runs now or the next one it is given (idle workers take tasks in turn; rounds 2-4
    # have 12) is never answered
    _, (name, victim), tasks, log = worker_faulted(
        tmp_path, ["--limit-train", "2000", "--round-timeout", "30"], first_worker, signal.SIGSTOP)

    # the hung task failed once and is named
    hung = [t for t in tasks if str(t["status"]).startswith("timeout")]
    assert [(t["worker"], t["status"]) for t in hung] == [(name, f"timeout: {name} hung")], tasks
    assert hung[0]["sent"] - hung[0]["taken"] >= 30, hung
    assert f"{name} (pid {victim}) ran client-{hung[0]['client']}'s task for 30 s" in log, log[-2000:]
    assert "killed as hung" in log and f"restarting {name}" in log, log[-2000:]
