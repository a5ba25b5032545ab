"""The run directory: config, metrics.jsonl, summary, checkpoints, partitions and curves."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
PARTITIONS = "partitions.json"
PROGRESS = "progress"
CHECKPOINTS = "checkpoints"
DEPARTED = "departed-nodes.txt"  # `ID` a client died (the server stops waiting), `+ID` it is back


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Each complete JSON line of `path`; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return
    with path.open() as fh:
        for line in fh:
            if not line.endswith("\n"):
                return
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


class RunDir:
    """One run's folder; every writer of the run goes through it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def progress_dir(self) -> Path:
        return self.path / PROGRESS

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.path / CONFIG, config)

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG).read_text())

    def write_partitions(self, stats: dict[str, Any]) -> None:
        write_json_atomic(self.path / PARTITIONS, stats)

    def append_metric(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one line to metrics.jsonl and flush it to the OS at once."""
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        return record

    def metrics(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics_path))

    def add_departed_node(self, node_id: int) -> None:
        with (self.path / DEPARTED).open("a") as fh:
            fh.write(f"{node_id}\n")

    def add_returned_node(self, node_id: int) -> None:
        """A departed node id is back (a restarted client that signs in with the same key)."""
        with (self.path / DEPARTED).open("a") as fh:
            fh.write(f"+{node_id}\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / SUMMARY, summary)

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.exists() else None

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        """Save tensors and plain values to checkpoints/<name>.pt, atomically."""
        folder = self.path / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.pt"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        path = self.path / CHECKPOINTS / f"{name}.pt"
        if not path.exists():
            return None
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state


def summarize(run: RunDir, *, mode: str, exit_reason: str, wall_seconds: float) -> dict[str, Any]:
    """summary.json's content, derived from metrics.jsonl alone."""
    unit = "epoch" if mode == "local" else "round"
    ends = [m for m in run.metrics() if m.get("event") == unit]
    start = next((m for m in reversed(run.metrics()) if m.get("event") == "start"), {})
    accuracies = [float(m["accuracy"]) for m in ends]
    train_images = int(ends[-1]["train_images"]) if ends else 0
    return {
        "mode": mode,
        f"{unit}s_completed": int(ends[-1][unit]) if ends else 0,
        f"{unit}s_planned": start.get("total"),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "final_loss": float(ends[-1]["loss"]) if ends else None,
        "wall_seconds": round(wall_seconds, 3),
        "train_images": train_images,
        "train_images_per_second": round(train_images / wall_seconds, 1) if wall_seconds > 0 else 0,
        "exit_reason": exit_reason,
        "model": start.get("model"),
        "dataset": start.get("dataset"),
    }


def plot_curves(run: RunDir) -> list[Path]:
    """accuracy.png and loss.png of the run's test accuracy and loss per round or epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [m for m in run.metrics() if m.get("event") in ("round", "epoch")]
    if not records:
        return []
    unit = records[0]["event"]
    xs = [m[unit] for m in records]
    written = []
    for key, label in (("accuracy", "test accuracy"), ("loss", "test loss")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(xs, [m[key] for m in records], marker="o", markersize=3)
        ax.set_xlabel(unit)
        ax.set_ylabel(label)
        ax.set_title(f"{run.path.name}: {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        target = run.path / f"{key}.png"
        fig.savefig(target)
        plt.close(fig)
        written.append(target)
    return written
