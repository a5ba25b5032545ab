"""Train accuracy: recorded per epoch and per round in metrics.jsonl, read and plotted by the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.config import RunConfig
from fedcore.local import run_local
from fedcore.rundir import RunDir, plot_curves
from launcher.report import load_run, report


def test_local_epochs_record_train_accuracy_and_the_report_reads_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "local").create()
    cfg = RunConfig(dataset="synthetic", limit_train=128, limit_test=64, epochs=2, precision="fp32")

    run_local(cfg, run)

    epochs = [m for m in run.metrics() if m["event"] == "epoch"]
    assert [0.0 <= m["train_accuracy"] <= 1.0 for m in epochs] == [True, True]
    curves = load_run(run.path)
    assert curves.train_accuracy == [pytest.approx(m["train_accuracy"]) for m in epochs]
    # The launcher draws the run's plots after it (launcher.supervision.afterwards): the same call.
    assert run.path / "accuracy.png" in plot_curves(run)
    assert (run.path / "accuracy.png").stat().st_size > 0


def test_report_plots_runs_with_and_without_train_accuracy(tmp_path: Path) -> None:
    for name, extra in (("new", {"train_accuracy": 0.5}), ("old", {})):
        folder = tmp_path / name
        folder.mkdir()
        lines = [{"event": "start", "mode": "federated", "model": "cnn", "total": 2}]
        lines += [{"event": "round", "round": r, "accuracy": 0.3 + r / 10, "loss": 1.0, "seconds": 1.0,
                   "train_images": 100 * r, **extra} for r in (1, 2)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    result = report([tmp_path / "new", tmp_path / "old"], tmp_path / "r.png")

    assert load_run(tmp_path / "new").train_accuracy == [0.5, 0.5]
    assert load_run(tmp_path / "old").train_accuracy == [None, None]
    assert result.report_png.stat().st_size > 0
