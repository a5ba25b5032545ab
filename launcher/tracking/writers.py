"""One writer per tracking library; each is imported only when its --track is given."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from fedcore.rundir import symlinks_in
from launcher.tracking.feed import PROJECT, Point

TENSORBOARD_DIR = "tensorboard"  # event files, in the run folder
WANDB_DIR = "wandb"  # W&B's offline runs (`wandb sync RUN/wandb/offline-run-*`)
MLFLOW_DIR = "mlruns"  # MLflow's file store, unless MLFLOW_TRACKING_URI names another

Params = dict[str, str | int | float | bool]


class Writer(Protocol):
    """Opened with the run's hyperparameters; logs points; closed with the run's exit reason."""

    def state(self) -> dict[str, Any]:
        """What --resume needs to go on with the same tracked run (kept in tracking.json)."""
        ...

    def log(self, point: Point) -> None: ...

    def close(self, reason: str) -> None: ...


class TensorBoardWriter:
    """Event files under RUN/tensorboard, written with tensorboard's own writer (no torch, no
    TensorFlow): one scalar per value, the hyperparameters for the HParams tab."""

    def __init__(self, run_dir: Path, params: Params, saved: dict[str, Any]) -> None:
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.logdir = run_dir / TENSORBOARD_DIR
        self.writer = EventFileWriter(str(self.logdir))
        if not saved:  # a resumed run's event files already hold them
            hparams = summary_v2.hparams_pb(params, trial_id=run_dir.name)
            self.writer.add_event(_event(0, hparams))
        self.writer.flush()

    def state(self) -> dict[str, Any]:
        return {"logdir": TENSORBOARD_DIR}

    def log(self, point: Point) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=f"{key}", simple_value=value) for key, value in point.values.items()]
        self.writer.add_event(_event(point.step, Summary(value=values)))
        self.writer.flush()

    def close(self, reason: str) -> None:
        self.writer.close()


def _event(step: int, summary: Any) -> Any:
    from tensorboard.compat.proto.event_pb2 import Event

    return Event(wall_time=time.time(), step=step, summary=summary)


class WandbWriter:
    """A W&B run in offline mode under RUN/wandb (WANDB_MODE=online sends it at once), the
    round or epoch as its step metric; --resume reopens the same run id."""

    def __init__(self, run_dir: Path, params: Params, saved: dict[str, Any]) -> None:
        import wandb

        self.run_dir = run_dir
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                  save_code=False, disable_git=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run_dir.name,
            dir=str(run_dir), mode="online" if os.environ.get("WANDB_MODE") == "online" else "offline",
            id=saved.get("id"), resume="allow" if saved.get("id") else None, settings=settings,
            config=params,
        )
        if saved.get("id"):  # --resume may have extended --rounds or --epochs
            self.run.config.update(params, allow_val_change=True)
        self._unit = ""
        unlink_wandb_links(run_dir)

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id}

    def log(self, point: Point) -> None:
        if point.unit != self._unit:  # every value is plotted against the round (or epoch)
            self.run.define_metric(point.unit)
            self.run.define_metric("*", step_metric=point.unit)
            self._unit = point.unit
        self.run.log({point.unit: point.step, **point.values})

    def close(self, reason: str) -> None:
        self.run.finish(exit_code=0 if reason == "completed" else 1)
        unlink_wandb_links(self.run_dir)


def unlink_wandb_links(run_dir: Path) -> None:
    """W&B links RUN/wandb/latest-run, debug*.log and each run's logs/debug-core.log to files
    elsewhere; a run folder holds only plain files (--resume and report refuse symbolic links),
    so they go as soon as W&B has made them."""
    for link in symlinks_in(run_dir / WANDB_DIR):
        link.unlink()


class MlflowWriter:
    """An MLflow run in the experiment 'fedlaunch' of a file store under RUN/mlruns (or of the
    store MLFLOW_TRACKING_URI names); --resume reopens the same run id in the same store."""

    STATUS = {"completed": "FINISHED", "failed": "FAILED"}

    def __init__(self, run_dir: Path, params: Params, saved: dict[str, Any]) -> None:
        self.uri = saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") \
            or (run_dir / MLFLOW_DIR).as_uri()
        if self.uri.startswith("file:"):  # MLflow 3 keeps its file store only when asked to
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would cross the TUI
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if saved.get("run_id"):
            self.run_id = str(saved["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(PROJECT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def log(self, point: Point) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, value, stamp, point.step) for key, value in point.values.items()])

    def close(self, reason: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS.get(reason, "KILLED"))


def open_writer(name: str, run_dir: Path, params: Params, saved: dict[str, Any]) -> Writer:
    kinds: dict[str, Any] = {"tensorboard": TensorBoardWriter, "wandb": WandbWriter,
                             "mlflow": MlflowWriter}
    writer: Writer = kinds[name](run_dir, params, saved)
    return writer
