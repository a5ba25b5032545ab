"""Determinism on CPU, fp32: the same seed gives the same numbers, also with dropout and after a
client restart; another seed gives other numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcore import client_app
from fedcore.config import RunConfig
from fedcore.local import run_local
from fedcore.models import build_model
from fedcore.rundir import RunDir
from fedcore.weights import to_record

TINY = {"dataset": "synthetic", "limit_train": 96, "limit_test": 64, "batch_size": 32,
        "precision": "fp32", "eval_batch_size": 64}


def local_curve(tmp_path: Path, name: str, **changes: object) -> list[tuple[float, ...]]:
    cfg = RunConfig(**{**TINY, "epochs": 2, **changes})  # type: ignore[arg-type]
    run = RunDir(tmp_path / name).create()
    run_local(cfg, run)
    return [(m["accuracy"], m["loss"], m["train_loss"], m["train_accuracy"])
            for m in run.metrics() if m["event"] == "epoch"]


def test_local_runs_repeat_epoch_by_epoch_and_another_seed_differs(tmp_path: Path) -> None:
    first = local_curve(tmp_path, "a", seed=3)
    again = local_curve(tmp_path, "b", seed=3)
    other = local_curve(tmp_path, "c", seed=4)

    assert len(first) == 2
    assert first == again
    assert first != other


def test_local_run_with_dropout_repeats(tmp_path: Path) -> None:
    # MobileNetV2's classifier has Dropout(0.2): its draws come from torch's global generator.
    kwargs = {"model": "mobilenetv2", "limit_train": 32, "limit_test": 32, "batch_size": 16,
              "epochs": 1, "seed": 5}

    assert local_curve(tmp_path, "a", **kwargs) == local_curve(tmp_path, "b", **kwargs)


def client_reply(cfg: RunConfig, server_round: int, partition: int) -> tuple[np.ndarray, dict]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, server_round
    torch.manual_seed(0)
    arrays = to_record(build_model(cfg.model))
    msg = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(
        {"server-round": server_round, "lr": cfg.lr, "local-epochs": 1})}),
        dst_node_id=7, message_type="train")
    context = Context(run_id=1, node_id=7, node_config={"partition-id": partition, "num-partitions": 2},
                      state=RecordDict(), run_config=cfg.to_run_config())
    reply = client_app.train(msg, context)
    metrics = {k: v for k, v in reply.content["metrics"].items() if k in ("train-loss", "train-accuracy")}
    return reply.content["arrays"]["weights"].numpy(), metrics


@pytest.mark.parametrize("model", ["cnn", pytest.param("mobilenetv2", marks=pytest.mark.slow)])
def test_a_restarted_client_trains_a_round_exactly_as_before(model: str) -> None:
    cfg = RunConfig(**{**TINY, "model": model, "limit_train": 64, "clients": 2,  # type: ignore[arg-type]
                       "batch_size": 16, "seed": 1})
    torch.manual_seed(123)  # whatever the process did before must not matter

    before = client_reply(cfg, 2, 1)
    client_app._STATE.clear()  # a new process: model and data built again
    torch.manual_seed(456)
    after = client_reply(cfg, 2, 1)
    other_round = client_reply(cfg, 3, 1)

    assert np.array_equal(before[0], after[0]) and before[1] == after[1]
    assert not np.array_equal(before[0], other_round[0])
    client_app._STATE.clear()
