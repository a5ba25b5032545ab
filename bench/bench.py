"""Side-by-side benchmark: bare training processes vs fedlaunch, and the local loop vs the seed's.

    python bench/bench.py [--clients 2] [--rounds 5] [--model cnn] [--batch-size 64] [--dataset synthetic]

Prints, all measured in this one run on this machine:
  P1 = fedlaunch images/s over its rounds / N bare processes' images/s (same model, batch, images)
  P3 = mean round overhead: round wall time minus the slowest client's training time
  P4 = seconds from launching fedlaunch to the first client starting to train
  P2 = --local's training images/s / the seed's PIL + DataLoader pipeline's images/s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_worker(args: argparse.Namespace, client: int) -> None:
    """One bare process: client `client`'s share, the same loop, no Flower; prints JSON timing."""
    from fedcore.models import build_model
    from fedcore.task import client_share, load_split
    from fedcore.train import (
        DeviceData,
        make_optimizer,
        pick_device,
        prepare_model,
        seeded_generator,
        train_epochs,
    )

    cfg = settings(args)
    device = pick_device()
    share = client_share(cfg, load_split(cfg, log=lambda _: None), client, args.clients)
    data = DeviceData(share, device, augment=True)
    model = prepare_model(build_model(cfg.model), device)
    started = time.time()
    images = 0
    for r in range(args.rounds):
        optimizer = make_optimizer(model, cfg, cfg.lr)
        stats = train_epochs(model, data, optimizer, epochs=cfg.local_epochs,
                             batch_size=cfg.batch_size, precision=cfg.precision,
                             generator=seeded_generator(device, cfg.seed, client, r))
        images += stats.samples
    print(json.dumps({"start": started, "end": time.time(), "images": images}), flush=True)


def settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fedcore.config import RunConfig

    return RunConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model,
                     clients=args.clients, rounds=args.rounds, local_epochs=args.local_epochs,
                     batch_size=args.batch_size, partition="iid", limit_train=args.limit_train)


def child_env(clients: int) -> dict[str, str]:
    threads = str(max(1, (os.cpu_count() or 1) // clients))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dataset", args.dataset, "--model", args.model, "--batch-size", str(args.batch_size),
             "--partition", "iid", "--local-epochs", str(args.local_epochs)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    if args.limit_train:
        flags += ["--limit-train", str(args.limit_train)]
    return flags


def measure_bare(args: argparse.Namespace) -> dict[str, float]:
    procs = [
        subprocess.Popen([sys.executable, __file__, "--bare-worker", str(i), *sys.argv[1:]],
                         stdout=subprocess.PIPE, text=True, env=child_env(args.clients))
        for i in range(args.clients)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    images = sum(r["images"] for r in results)
    return {"images": images, "seconds": wall, "images_per_second": images / wall}


def measure_fedlaunch(args: argparse.Namespace, executor: str, out: Path) -> dict[str, float]:
    launched = time.time()
    cmd = [sys.executable, "-m", "launcher.cli", "--headless", "--out", str(out),
           "--clients", str(args.clients), "--rounds", str(args.rounds), "--engine", "deployment",
           "--executor", executor, *common_flags(args)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(1))
    if done.returncode != 0:
        raise SystemExit(f"fedlaunch failed ({done.returncode}):\n{done.stdout[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [m for m in metrics if m["event"] == "round"]
    starts = [m for m in metrics if m["event"] == "round_start"]
    span = rounds[-1]["time"] - starts[0]["time"]
    images = rounds[-1]["train_images"]
    overhead = [m["seconds"] - m["client_train_seconds"] for m in rounds]
    return {
        "images": images,
        "seconds": span,
        "images_per_second": images / span,
        "whole_run_seconds": time.time() - launched,
        "mean_round_seconds": sum(m["seconds"] for m in rounds) / len(rounds),
        "mean_round_overhead": sum(overhead) / len(overhead),
        "launch_to_first_training": rounds[0]["train_started"] - launched,
    }


def measure_local_pipelines(args: argparse.Namespace) -> dict[str, float]:
    """One epoch on the whole training set: the project's device-resident loop vs the seed's."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from fedcore.augment import MEANS, STDS
    from fedcore.models import build_model
    from fedcore.task import load_split
    from fedcore.train import (
        device_data,
        make_optimizer,
        pick_device,
        prepare_model,
        seeded_generator,
        train_epochs,
    )

    cfg = settings(args)
    split = load_split(cfg, log=lambda _: None)
    device = pick_device()
    model = prepare_model(build_model(cfg.model), device)
    data = device_data(split.train, device, cfg.replace(augment="flip-crop"), train=True)
    ours = train_epochs(model, data, make_optimizer(model, cfg, cfg.lr), epochs=1,
                        batch_size=args.batch_size, precision="auto",
                        generator=seeded_generator(device, 0))

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(MEANS["cifar"], STDS["cifar"])])

    class SeedDataset(torch.utils.data.Dataset):  # the seed's pipeline: PIL images, transforms
        def __len__(self) -> int:
            return len(split.train)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return transform(Image.fromarray(split.train.images[i])), int(split.train.labels[i])

    loader = torch.utils.data.DataLoader(SeedDataset(), batch_size=args.batch_size, shuffle=True,
                                         num_workers=2)
    model = prepare_model(build_model(cfg.model), device)
    optimizer = make_optimizer(model, cfg, cfg.lr)
    criterion = torch.nn.CrossEntropyLoss()
    started, images = time.perf_counter(), 0
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += len(y)
    seed_ips = images / (time.perf_counter() - started)
    return {"ours": ours.samples / ours.seconds, "seed": seed_ips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--limit-train", type=int, default=0)
    parser.add_argument("--stock", action="store_true", help="also measure Flower's stock executor")
    parser.add_argument("--bare-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker is not None:
        bare_worker(args, args.bare_worker)
        return
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({device}); torch {torch.__version__}")
    print(f"# {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    bare = measure_bare(args)
    with tempfile.TemporaryDirectory() as tmp:
        warm = measure_fedlaunch(args, "warm", Path(tmp) / "warm")
        stock = measure_fedlaunch(args, "stock", Path(tmp) / "stock") if args.stock else None
    local = measure_local_pipelines(args)
    print(f"(a) bare x{args.clients}: {bare['images']:.0f} images in {bare['seconds']:.2f} s = "
          f"{bare['images_per_second']:.0f} images/s")
    rows = [("warm", warm)] + ([("stock", stock)] if stock else [])
    for name, r in rows:
        print(f"(b) fedlaunch --executor {name}: {r['images']:.0f} images in {r['seconds']:.2f} s of "
              f"rounds = {r['images_per_second']:.0f} images/s; mean round {r['mean_round_seconds']:.2f} s; "
              f"whole run {r['whole_run_seconds']:.1f} s")
        print(f"    P1 = {r['images_per_second'] / bare['images_per_second']:.2f}   "
              f"P3 = {r['mean_round_overhead']:.2f} s   P4 = {r['launch_to_first_training']:.1f} s")
    print(f"(c) local loop {local['ours']:.0f} images/s vs seed PIL+DataLoader {local['seed']:.0f} "
          f"images/s: P2 = {local['ours'] / local['seed']:.2f}")


if __name__ == "__main__":
    main()
