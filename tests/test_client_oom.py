"""An out-of-memory anywhere a client allocates GPU memory is named in its progress file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcore import client_app, shared_data
from fedcore.config import RunConfig
from fedcore.models import build_model
from fedcore.weights import to_record

TINY = {"dataset": "synthetic", "limit_train": 64, "limit_test": 32, "batch_size": 16,
        "precision": "fp32", "eval_batch_size": 32, "clients": 2}

# (where, the function that allocates there, what CUDA raises, the handler, a worker's shared data)
PHASES = [
    ("preload", client_app, "device_data",
     torch.AcceleratorError("CUDA error: out of memory\nCompile with TORCH_USE_CUDA_DSA"), "train", False),
    ("model move", client_app, "prepare_model",
     torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), "train", False),
    ("load", client_app, "load_record",
     RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "train",
     False),
    ("train", client_app, "train_epochs", RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "train",
     False),
    ("evaluate", client_app, "evaluate",
     torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB"), "evaluate", False),
    ("shared data", shared_data, "device_data",
     torch.AcceleratorError("CUDA error: out of memory"), "train", True),
]


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    client_app._STATE.clear()
    shared_data._SHARED.clear()
    yield
    client_app._STATE.clear()
    shared_data._SHARED.clear()


def message(cfg: RunConfig, kind: str) -> tuple[Message, Context]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 2
    arrays = to_record(build_model(cfg.model))
    msg = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(
        {"server-round": 2, "lr": cfg.lr, "local-epochs": 1})}), dst_node_id=7, message_type=kind)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 2},
                      state=RecordDict(), run_config=cfg.to_run_config())
    return msg, context


@pytest.mark.parametrize(("where", "module", "name", "error", "kind", "pooled"), PHASES,
                         ids=[p[0] for p in PHASES])
def test_an_out_of_memory_is_named_wherever_the_client_allocates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, module: Any, name: str,
        error: Exception, kind: str, pooled: bool) -> None:
    cfg = RunConfig(**{**TINY, "out_dir": str(tmp_path)})  # type: ignore[arg-type]
    if pooled:
        monkeypatch.setenv("FEDLAUNCH_SHARED_DATA", "1")

    def out_of_memory(*_: Any, **__: Any) -> Any:
        raise error

    msg, context = message(cfg, kind)
    monkeypatch.setattr(module, name, out_of_memory)
    handler = client_app.train if kind == "train" else client_app.evaluate_handler

    with pytest.raises(type(error)):
        handler(msg, context)

    record = json.loads((tmp_path / "progress" / "client-1.json").read_text())
    assert (record["state"], record["error"], record["round"]) == ("failed", "out of memory", 2), where
    assert record["detail"] == str(error).splitlines()[0]


def test_an_error_that_is_not_out_of_memory_is_not_called_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig(**{**TINY, "out_dir": str(tmp_path)})  # type: ignore[arg-type]
    msg, context = message(cfg, "train")

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(client_app, "train_epochs", broken)

    with pytest.raises(RuntimeError):
        client_app.train(msg, context)

    record = json.loads((tmp_path / "progress" / "client-1.json").read_text())
    assert record["state"] == "training" and "error" not in record
