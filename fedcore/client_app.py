"""The ClientApp: trains the global model on this client's share and reports progress to a file."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedcore.config import RunConfig, from_run_config
from fedcore.device import is_oom
from fedcore.errors import UsageError
from fedcore.faults import ENV as FAULT_ENV
from fedcore.faults import simulate_bad_reply
from fedcore.models import build_model
from fedcore.rundir import PROGRESS, write_json_atomic
from fedcore.task import client_share, load_split
from fedcore.train import (
    DeviceData,
    device_data,
    evaluate,
    make_optimizer,
    pick_device,
    prepare_model,
    seed_torch,
    seeded_generator,
    train_epochs,
)
from fedcore.weights import load_record, number, to_record

app = ClientApp()


@dataclass
class ClientState:
    """What a client keeps between messages when its process stays alive."""

    key: tuple[Any, ...]
    device: torch.device
    model: nn.Module
    train: DeviceData
    test: DeviceData


_STATE: dict[str, ClientState] = {}


def client_state(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientState:
    """Model and device-resident data for this client, built once per process and config."""
    cfg = own_data(cfg)
    key = (cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.limit_test, cfg.seed,
           cfg.partition, cfg.model, cfg.augment, cfg.normalize, cfg.image_size, partition_id,
           num_partitions)
    if os.environ.get("FEDLAUNCH_SHARED_DATA"):  # a pool worker: one data set, many clients
        from fedcore.shared_data import client_view

        shared, view = client_view(cfg, partition_id, num_partitions)
        return ClientState(key, shared.device, shared.model, view, shared.test)
    state = _STATE.get("client")
    if state is None or state.key != key:
        device = pick_device()
        try:
            split = load_split(cfg)
        except UsageError as exc:  # a joined machine without the run's data set
            raise ClientDataError(f"client {partition_id}: {exc}") from None
        share = client_share(cfg, split, partition_id, num_partitions)
        state = ClientState(
            key=key,
            device=device,
            model=prepare_model(build_model(cfg.model), device),
            train=device_data(share, device, cfg, train=True),
            test=device_data(split.test, device, cfg, train=False),
        )
        _STATE["client"] = state
    return state


class ClientDataError(RuntimeError):
    """This client cannot read the data set the run uses (one line: what is missing, where)."""


def own_data(cfg: RunConfig) -> RunConfig:
    """A joined client reads its own machine's data folder (FEDLAUNCH_CLIENT_DATA_DIR, set by
    `fedlaunch --join`), never the server's path from the run config."""
    mine = os.environ.get("FEDLAUNCH_CLIENT_DATA_DIR")
    return cfg if mine is None else cfg.replace(data_dir=mine)


def state_or_fail(cfg: RunConfig, partition_id: int, num_partitions: int,
                  progress: ProgressFile, server_round: int = 0) -> ClientState:
    """client_state, or this client marked failed with the one-line reason (its log, its row)."""
    try:
        return client_state(cfg, partition_id, num_partitions)
    except ClientDataError as exc:
        print(f"fedlaunch: {exc}", file=sys.stderr, flush=True)
        progress.write("failed", round=server_round, error="no data", detail=str(exc)[:300])
        raise


class ProgressFile:
    """Writes this client's state to <progress-dir>/client-<id>.json, at most a few times a second."""

    def __init__(self, cfg: RunConfig, partition_id: int, node_dir: str = "", node_id: int = 0) -> None:
        """`node_dir`: the node config's `progress-dir` (a `--join` client's own run folder)."""
        folder = node_dir or cfg.progress_dir or (str(Path(cfg.out_dir) / PROGRESS) if cfg.out_dir else "")
        self.path = Path(folder) / f"client-{partition_id}.json" if folder else None
        self.client = partition_id
        self.node_id = node_id
        # A pool worker trains any client: its GPU (the physical NVML id) goes into the record.
        worker_gpu = os.environ.get("FEDLAUNCH_WORKER_GPU")
        self.gpu: dict[str, int | None] = {} if worker_gpu is None else {
            "gpu": int(worker_gpu) if worker_gpu.isdigit() else None}

    def write(self, state: str, **fields: Any) -> None:
        if self.path is None:
            return
        try:
            write_json_atomic(self.path, {
                "client": self.client, "state": state, "pid": os.getpid(), "node_id": self.node_id,
                "time": round(time.time(), 3), **self.gpu, **fields,
            })
        except OSError:
            self.path = None  # a remote client without the run folder: progress stays local


def simulate_oom(partition_id: int) -> None:
    """Fault injection: FEDLAUNCH_SIMULATE_OOM=1,3 makes those clients fail as CUDA OOM would."""
    chosen = os.environ.get("FEDLAUNCH_SIMULATE_OOM", "")
    if str(partition_id) in chosen.split(","):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by FEDLAUNCH_SIMULATE_OOM)")


def device_memory() -> dict[str, int]:
    """Free and total memory of this process's GPU, in bytes; empty on the CPU or when CUDA,
    out of memory itself, cannot say."""
    if not torch.cuda.is_available():
        return {}
    try:
        free, total = torch.cuda.mem_get_info()
    except RuntimeError:
        return {}
    return {"memory_free": int(free), "memory_total": int(total)}


@contextmanager
def out_of_memory_named(progress: ProgressFile, server_round: int) -> Iterator[None]:
    """Wherever CUDA memory is allocated (data preload, model move, weights, training,
    evaluation, a worker's shared data): an out-of-memory, by type or by CUDA's, cuBLAS's or
    cuDNN's message, marks this client failed with "out of memory", then goes on up."""
    try:
        yield
    except Exception as exc:
        if is_oom(exc):
            progress.write("failed", round=server_round, error="out of memory",
                           detail=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300],
                           **device_memory())
        raise


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    partition_id, num_partitions = _partition(context)
    config = msg.content["config"]
    server_round = int(number(config.get("server-round", 0)))
    epochs = int(number(config.get("local-epochs", cfg.local_epochs)))
    progress = ProgressFile(cfg, partition_id, str(context.node_config.get("progress-dir", "")),
                            context.node_id)
    progress.write("training", round=server_round, epochs=epochs)  # loading the round's model

    def report(epoch: int, batch: int, batches: int, samples: int, loss: float | None) -> None:
        progress.write("training", round=server_round, epoch=epoch, epochs=epochs,
                       batch=batch, batches=batches, samples=samples, train_loss=loss)

    with out_of_memory_named(progress, server_round):
        state = state_or_fail(cfg, partition_id, num_partitions, progress, server_round)
        load_record(state.model, msg.content.array_records["arrays"])
        optimizer = make_optimizer(state.model, cfg, number(config.get("lr", cfg.lr)))
        train_started = time.time()
        simulate_oom(partition_id)
        seed_torch(cfg.seed, partition_id, server_round)  # dropout draws: the same after a restart
        stats = train_epochs(
            state.model, state.train, optimizer,
            epochs=epochs, batch_size=cfg.batch_size, precision=cfg.precision,
            generator=seeded_generator(state.device, cfg.seed, partition_id, server_round),
            proximal_mu=number(config.get("proximal-mu", 0.0)),
            progress=report,
        )
    progress.write("waiting", round=server_round, epoch=epochs, epochs=epochs,
                   samples=stats.samples, train_loss=stats.loss)
    metrics = MetricRecord({
        "train-loss": stats.loss,
        "train-accuracy": stats.accuracy,
        "num-examples": len(state.train),
        "train-seconds": stats.seconds,
        "train-started": train_started,
        "partition-id": partition_id,
    })
    content = RecordDict({"arrays": to_record(state.model), "metrics": metrics})
    if os.environ.get(FAULT_ENV):
        content = simulate_bad_reply(content, server_round)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    cfg = from_run_config(context.run_config)
    partition_id, num_partitions = _partition(context)
    progress = ProgressFile(cfg, partition_id, str(context.node_config.get("progress-dir", "")),
                            context.node_id)
    config = msg.content["config"] if "config" in msg.content else None
    server_round = int(number(config.get("server-round", 0))) if config is not None else 0
    progress.write("evaluating", round=server_round)
    with out_of_memory_named(progress, server_round):
        state = state_or_fail(cfg, partition_id, num_partitions, progress, server_round)
        load_record(state.model, msg.content.array_records["arrays"])
        loss, accuracy = evaluate(state.model, state.test, batch_size=cfg.eval_batch_size,
                                  precision=cfg.precision)
    progress.write("waiting")
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(state.test)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
