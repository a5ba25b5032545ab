"""End to end, real Flower processes: rounds record train accuracy, and the same seed repeats them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runs import SMALL, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two federated runs: minutes on 2 cores


def rounds(tmp_path: Path, name: str, seed: int) -> list[dict]:
    out = tmp_path / name
    result = run_cli([*SMALL, "--clients", "2", "--rounds", "2", "--gpus", "cpu", "--headless",
                      "--strategy", "fedavg-unweighted", "--augment", "flip-crop", "--seed", str(seed),
                      "--precision", "fp32", "--out", str(out)], tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["event"] == "round"]


@pytest.mark.timeout(1300)
def test_federated_rounds_repeat_with_the_same_seed_and_record_train_accuracy(tmp_path: Path) -> None:
    first = rounds(tmp_path, "a", 7)
    again = rounds(tmp_path, "b", 7)

    keys = ("accuracy", "loss", "train_loss", "train_accuracy")
    assert [[r[k] for k in keys] for r in first] == [[r[k] for k in keys] for r in again]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 for r in first)
    assert len(first) == 2
