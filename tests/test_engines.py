"""Both engines on real processes: the same seed gives the same numbers, bit for bit.

On the CPU in fp32, with every client sampled each round, a run on the simulation engine (Flower's
simulation loop, fedlaunch's forked workers) and one on the Deployment Engine (a SuperLink, a
SuperNode per client) train the same clients on the same batches and aggregate them in the same
order: every round's metrics and the final weights agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.runs import SMALL, read_summary, rounds, run_cli

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


@pytest.mark.timeout(300)
def test_another_seed_gives_other_numbers_on_the_simulation_engine(tmp_path: Path) -> None:
    """The equality above is not two runs that ignore the seed."""
    first = launch("simulation", tmp_path / "a", tmp_path)
    result = run_cli([*SAME, "--engine", "simulation", "--seed", "8", "--out", str(tmp_path / "b")],
                     cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    other = [{k: r.get(k) for k in ROUND_FIELDS} for r in rounds(tmp_path / "b")]
    assert [r["loss"] for r in first] != [r["loss"] for r in other]
