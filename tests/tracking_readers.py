"""Read a tracked run back with each library's own reader (tests of --track)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedcore.rundir import read_jsonl

BIN = Path(sys.executable).parent


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, by TensorBoard's EventAccumulator (every event file in the folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag} logged twice at a step: {steps}"
        out[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    return out


def tensorboard_hparams(run_dir: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    content = acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    info = metadata.parse_session_start_info_plugin_data(content)
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the offline runs' .wandb files, by `wandb leet inspect --json` (W&B's own
    reader of its transaction log), oldest run first."""
    records: list[dict[str, Any]] = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        out = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, timeout=120, check=True,
                             stdin=subprocess.DEVNULL).stdout
        records.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
    return records


def wandb_history(records: list[dict[str, Any]], unit: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for record in records:
        if record.get("type") == "history":
            item = record["history"]["item"]
            for key, value in item.items():
                if not key.startswith("_") and key != unit:
                    assert int(item[unit]) not in out.get(key, {}), f"{key} logged twice"
                    out.setdefault(key, {})[int(item[unit])] = value
    return out


def mlflow_run(run_dir: Path) -> tuple[Any, Any]:
    """(MlflowClient, its one run) of the file store RUN/mlruns."""
    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("fedlaunch")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def mlflow_history(client: Any, run: Any) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
        out[key] = {m.step: m.value for m in history}
    return out


def expected(run_dir: Path) -> tuple[str, dict[str, dict[int, float]]]:
    """What metrics.jsonl says each tracker must hold: the unit and key -> step -> value."""
    out: dict[str, dict[int, float]] = {}
    unit = "round"
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        if record.get("event") not in ("round", "epoch"):
            continue
        unit = record["event"]
        step = int(record[unit])
        for key in ("accuracy", "loss", "train_accuracy", "train_loss", "seconds", "replies"):
            if isinstance(record.get(key), int | float):
                out.setdefault(key, {})[step] = float(record[key])
        out.setdefault("rejected", {})[step] = float(record.get("rejected", 0))
        for client, loss, examples in zip(record.get("clients", []), record.get("client_train_loss", []),
                                          record.get("client_examples", []), strict=False):
            out.setdefault(f"client-{client}/train_loss", {})[step] = float(loss)
            out.setdefault(f"client-{client}/examples", {})[step] = float(examples)
    return unit, out
