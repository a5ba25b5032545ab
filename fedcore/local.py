"""The local baseline: the same model, data and training loop, without federation."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from fedcore.config import RunConfig, from_mapping
from fedcore.device import GpuUnusable
from fedcore.errors import UsageError
from fedcore.models import initial_model
from fedcore.rundir import PROGRESS, RunDir, summarize, write_json_atomic
from fedcore.task import load_split
from fedcore.train import (
    device_data,
    evaluate,
    make_optimizer,
    pick_device,
    prepare_model,
    scheduled_lr,
    seed_torch,
    seeded_generator,
    train_epochs,
)


def run_local(cfg: RunConfig, run: RunDir) -> dict[str, object]:
    """Train cfg.epochs epochs on the whole training set; a metrics line and checkpoint per epoch."""
    started = time.time()
    device = pick_device()
    split = load_split(cfg)
    train = device_data(split.train, device, cfg, train=True)
    test = device_data(split.test, device, cfg, train=False)
    torch.manual_seed(cfg.seed)
    model = prepare_model(initial_model(cfg), device)
    optimizer = make_optimizer(model, cfg, cfg.lr)
    progress_path = run.path / PROGRESS / "client-0.json"
    first_epoch, best, train_images = 1, -1.0, 0
    resumed = run.resume_checkpoint()
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        if "optimizer" in resumed:
            optimizer.load_state_dict(resumed["optimizer"])
        first_epoch = int(resumed["round"]) + 1
        best, train_images = float(resumed["best_accuracy"]), int(resumed["train_images"])
        print(f"resuming after epoch {first_epoch - 1} from {run.path}", flush=True)
    run.append_metric(
        "start", mode="local", total=cfg.epochs, first_round=first_epoch, model=cfg.model,
        dataset=cfg.dataset, partition="none", clients=1, train_size=len(split.train),
        test_size=len(split.test), device=str(device),
    )
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.time()
        run.append_metric("round_start", round=epoch, total=cfg.epochs)
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg, epoch - 1, cfg.epochs)

        def report(_: int, batch: int, batches: int, samples: int, loss: float | None,
                   epoch: int = epoch) -> None:
            write_json_atomic(progress_path, {
                "client": 0, "state": "training", "round": epoch, "epoch": 1, "epochs": 1,
                "batch": batch, "batches": batches, "samples": samples, "train_loss": loss,
                "time": round(time.time(), 3),
            })

        seed_torch(cfg.seed, epoch)  # dropout: the same draws for this epoch in any process
        stats = train_epochs(
            model, train, optimizer, epochs=1, batch_size=cfg.batch_size,
            precision=cfg.precision, generator=seeded_generator(device, cfg.seed, epoch),
            progress=report,
        )
        loss, accuracy = evaluate(model, test, batch_size=cfg.eval_batch_size, precision=cfg.precision)
        train_images += stats.samples
        best = max(best, accuracy)
        state = {"round": epoch, "state_dict": model.state_dict(), "accuracy": accuracy,
                 "best_accuracy": best, "train_images": train_images,
                 "optimizer": optimizer.state_dict()}
        run.save_checkpoint("last", state)
        if accuracy >= best:
            run.save_checkpoint("best", state)
        run.append_metric(
            "epoch", epoch=epoch, total=cfg.epochs, accuracy=accuracy, loss=loss,
            train_loss=stats.loss, train_accuracy=stats.accuracy, replies=1, failures=0,
            seconds=round(time.time() - epoch_started, 3), train_images=train_images,
            best_accuracy=best, client_train_seconds=stats.seconds,
        )
        print(f"epoch {epoch}/{cfg.epochs}: accuracy {accuracy:.4f} loss {loss:.4f} "
              f"train loss {stats.loss:.4f} train accuracy {stats.accuracy:.4f} "
              f"({stats.samples / stats.seconds:.0f} images/s)",
              flush=True)
    run.append_metric("end", exit_reason="completed")
    summary = summarize(run, mode="local", exit_reason="completed", wall_seconds=time.time() - started)
    run.write_summary(summary)  # the launcher's background step draws the plots
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m fedcore.local RUN_DIR`: train with RUN_DIR/config.json (written by the launcher)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fedcore.local RUN_DIR", file=sys.stderr)
        return 2
    run = RunDir(Path(args[0]))
    try:
        values = {k: v for k, v in run.read_config().items() if k != "mode"}
        run_local(from_mapping(values, str(run.path / "config.json")), run)
    except UsageError as exc:
        print(f"fedlaunch: {exc}", file=sys.stderr)
        return 2
    except GpuUnusable as exc:  # pinned to a GPU torch cannot use: stop, never train on the CPU
        print(f"fedlaunch: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
