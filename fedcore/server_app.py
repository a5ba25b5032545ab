"""The ServerApp: drives the rounds with a Flower strategy and evaluates the global model centrally."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedcore.config import RunConfig, from_run_config
from fedcore.flwr_tuning import fast_object_pulls
from fedcore.models import initial_model
from fedcore.partition import parse_partition, partition_indices, partition_stats
from fedcore.replies import Rejected, check_replies, not_finite
from fedcore.rundir import DEPARTED, NO_CLIENTS, RunDir, run_folder_failure, summarize
from fedcore.strategies import make_strategy
from fedcore.task import load_split
from fedcore.train import DeviceData, device_data, evaluate, pick_device, prepare_model, scheduled_lr
from fedcore.weights import load_record, number, to_record

app = ServerApp()
OUT_DIR_ENV = "FEDLAUNCH_OUT_DIR"  # set by the launcher on the warm ServerApp (launcher.planning.plan)
POLL_START, POLL_MAX = 0.02, 0.05


@app.main()
def main(grid: Grid, context: Context) -> None:
    fast_object_pulls("flwr.superlink.grid.http_grid")  # objects pulled over HTTP from the SuperLink
    serve(grid, context)


def serve(grid: Grid, context: Context) -> None:
    """The run, on whichever engine's Grid (the simulation engine's is in memory: nothing to tune)."""
    cfg = from_run_config(context.run_config)
    if own := os.environ.get(OUT_DIR_ENV):  # the launcher's run folder, whatever was submitted
        cfg = cfg.replace(out_dir=own)
    out = cfg.out_dir or str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    try:
        run = RunDir(out).create()
        if not (run.path / "config.json").exists():
            run.write_config({"mode": "federated", **cfg.to_json()})
        run_federated(grid, cfg, run)
    except OSError as exc:
        if (line := run_folder_failure(exc, Path(out))) is not None:
            print(line, file=sys.stderr, flush=True)  # the launcher's reason for the failure
        raise


def run_federated(grid: Grid, cfg: RunConfig, run: RunDir) -> None:
    """Rounds cfg.rounds of training, with a checkpoint and a metrics line after each."""
    started = time.time()
    device = pick_device()
    split = load_split(cfg, log=lambda text: log(INFO, text))
    parts = partition_indices(
        split.train.labels, cfg.clients, parse_partition(cfg.partition), cfg.seed,
        num_classes=len(split.classes),
    )
    run.write_partitions(partition_stats(split.train.labels, parts, split.classes,
                                         spec=parse_partition(cfg.partition)))
    sizes = [len(part) for part in parts]  # the most images each client can say it trained on
    test = device_data(split.test, device, cfg, train=False)
    torch.manual_seed(cfg.seed)
    model = prepare_model(initial_model(cfg), device)

    first_round, train_images, best = 1, 0, -1.0
    resumed = run.resume_checkpoint(warn=lambda text: log(WARNING, text))
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        first_round = int(resumed["round"]) + 1
        train_images = int(resumed["train_images"])
        best = float(resumed["best_accuracy"])
        log(INFO, "resuming after round %d from %s", first_round - 1, run.path)
    arrays = to_record(model)
    strategy = make_strategy(cfg.strategy, cfg.fraction_train)
    run.append_metric(
        "start", mode="federated", total=cfg.rounds, first_round=first_round,
        model=cfg.model, dataset=cfg.dataset, partition=cfg.partition, clients=cfg.clients,
        train_size=len(split.train), test_size=len(split.test), device=str(device),
    )
    wait_for_nodes(grid, cfg.clients, cfg.startup_timeout, run)

    departed = run.path / DEPARTED
    trained: Trained | None = None  # the last round, aggregated; its evaluation still to do
    heard: set[int] = set()  # nodes that have replied in this run: started up, warm
    for server_round in range(first_round, cfg.rounds + 1):
        round_started = time.time()
        run.append_metric("round_start", round=server_round, total=cfg.rounds)
        config = ConfigRecord({
            "lr": scheduled_lr(cfg, server_round - 1, cfg.rounds),
            "local-epochs": cfg.local_epochs,
        })
        wait_for_a_live_node(grid, departed, cfg.round_timeout)
        gone = departed_nodes(departed)  # dead clients' nodes linger until heartbeats are missed
        messages = [m for m in strategy.configure_train(server_round, arrays, config, grid)
                    if m.metadata.dst_node_id not in gone]
        run.append_metric("nodes", connected=sorted(m.metadata.dst_node_id for m in messages),
                          expected=cfg.clients, round=server_round)
        pending = push(grid, messages)
        # in the SuperLink now: the pool's client host rings these nodes (launcher.shim.hostparts)
        run.append_metric("sent", round=server_round, nodes=sorted(set(pending.values())))
        if trained is not None:  # evaluated while the clients train this round
            best, train_images = finish(trained, round_started, model, test, cfg, run, best,
                                        train_images)
        heard -= departed_nodes(departed)  # a restarted client starts up again
        replies = collect(grid, pending, cfg.round_timeout, departed,
                          starting=set(pending.values()) - heard, startup=cfg.startup_timeout)
        heard.update(int(m.metadata.src_node_id) for m in replies)
        collected = time.time()
        for failed in (m for m in replies if m.has_error()):
            log(WARNING, "round %d: a client failed: %s", server_round, failed.error.reason)
        ok, rejected = check_replies(replies, arrays, sizes)
        for bad in rejected:
            log(WARNING, "round %d: rejected the reply of node %d (partition %s): %s",
                server_round, bad.node_id, bad.partition_id, bad.reason)
            run.append_metric("rejected", round=server_round, **bad.as_record())
        arrays, train_metrics, kept = aggregate(strategy, server_round, ok, arrays)
        trained = Trained(server_round, arrays, ok, len(messages), train_metrics, round_started,
                          collected, time.time(), rejected, kept)
    if trained is not None:
        finish(trained, None, model, test, cfg, run, best, train_images)

    run.append_metric("end", exit_reason="completed")
    run.write_summary(summarize(run, mode="federated", exit_reason="completed",
                                wall_seconds=time.time() - started))
    # The plots are drawn by the launcher's background step once the run is down.


@dataclass
class Trained:
    """A round whose replies are in and aggregated, before its central evaluation."""

    round: int
    arrays: ArrayRecord
    ok: list[Message]
    sent: int
    train_metrics: MetricRecord | None
    started: float
    collected: float
    aggregated: float
    rejected: list[Rejected]
    kept_model: str  # why the round's aggregate was not taken; "" when it was


def aggregate(strategy: FedAvg, server_round: int, ok: list[Message],
              arrays: ArrayRecord) -> tuple[ArrayRecord, MetricRecord | None, str]:
    """The strategy's new global model from the checked replies, or the previous one when there
    are none, or when the aggregate holds a NaN or an infinity (then with the reason)."""
    new_arrays, train_metrics = strategy.aggregate_train(server_round, ok)
    if new_arrays is None:
        return arrays, train_metrics, ""
    bad = not_finite(new_arrays)
    if bad is None:
        return new_arrays, train_metrics, ""
    kept = f"the aggregate is not finite (array {bad}); kept the previous model"
    log(WARNING, "round %d: %s", server_round, kept)
    return arrays, None, kept


def finish(t: Trained, next_started: float | None, model: torch.nn.Module, test: DeviceData,
           cfg: RunConfig, run: RunDir, best: float, train_images: int) -> tuple[float, int]:
    """Evaluate round `t`'s global model, checkpoint it and write its metrics line.

    The next round's messages went out before this (at `next_started`), so the clients train
    while the server evaluates; the round's `seconds` run until then, or, for the last round,
    until its evaluation ends. Returns the new best accuracy and training-image count.
    """
    load_record(model, t.arrays)
    evaluating = time.time()
    loss, accuracy = evaluate(model, test, batch_size=cfg.eval_batch_size, precision=cfg.precision)
    evaluated = time.time()
    train_images += sum(int(number(m.content["metrics"]["num-examples"])) for m in t.ok) * cfg.local_epochs
    best = max(best, accuracy)
    state = {
        "round": t.round, "state_dict": model.state_dict(), "accuracy": accuracy,
        "best_accuracy": best, "train_images": train_images,
    }
    run.save_checkpoint("last", state)
    if accuracy >= best:
        run.save_checkpoint("best", state)
    metrics = [m.content["metrics"] for m in t.ok]
    run.append_metric(
        "round", round=t.round, total=cfg.rounds, accuracy=accuracy, loss=loss,
        train_loss=t.train_metrics.get("train-loss") if t.train_metrics else None,
        train_accuracy=t.train_metrics.get("train-accuracy") if t.train_metrics else None,
        replies=len(t.ok), failures=t.sent - len(t.ok) - len(t.rejected),
        rejected=len(t.rejected), rejections=[r.as_record() for r in t.rejected],
        kept_model=t.kept_model or None,
        clients=[int(number(m["partition-id"])) for m in metrics],
        # per client, in the order of `clients`: --track logs them
        client_train_loss=[number(m["train-loss"]) if "train-loss" in m else None for m in metrics],
        client_examples=[int(number(m["num-examples"])) for m in metrics],
        seconds=round((next_started or time.time()) - t.started, 3), train_images=train_images,
        best_accuracy=best,
        client_train_seconds=max((number(m.get("train-seconds", 0.0)) for m in metrics), default=0.0),
        collect_seconds=round(t.collected - t.started, 3),
        aggregate_seconds=round(t.aggregated - t.collected, 3),
        evaluate_seconds=round(evaluated - evaluating, 3),
        train_started=min((number(m.get("train-started", 0.0)) for m in metrics), default=None),
    )
    log(INFO, "round %d/%d: accuracy %.4f loss %.4f (%d replies)",
        t.round, cfg.rounds, accuracy, loss, len(t.ok))
    return best, train_images


def wait_for_nodes(grid: Grid, expected: int, timeout: float, run: RunDir) -> None:
    """Wait until `expected` SuperNodes are connected; at `timeout` (--startup-timeout) go on with
    those there, or, when none came, stop the run with NO_CLIENTS's one line.

    Each change in who is connected is a `nodes` line in metrics.jsonl, so the launcher can show
    every node, on this machine or another.
    """
    deadline = time.monotonic() + timeout
    seen: list[int] | None = None
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            if not nodes:
                line = f"{NO_CLIENTS} {timeout:.0f} s (--startup-timeout) of {expected} expected"
                print(line, file=sys.stderr, flush=True)  # the launcher's reason for the failure
                raise RuntimeError(line)
            log(WARNING, "going on with %d of %d clients connected", len(nodes), expected)
            break
        if nodes != seen:
            log(INFO, "waiting for clients: %d of %d connected", len(nodes), expected)
            run.append_metric("nodes", connected=nodes, expected=expected)
            seen = nodes
        time.sleep(0.1)
    run.append_metric("nodes", connected=nodes, expected=expected)


def wait_for_a_live_node(grid: Grid, departed: Path, timeout: float) -> None:
    """When every connected node belongs to a client that died, wait (up to `timeout`) for one
    to come back rather than run rounds that nobody trains."""
    deadline = time.monotonic() + timeout
    told = False
    while not set(grid.get_node_ids()) - departed_nodes(departed):
        if time.monotonic() > deadline:
            log(WARNING, "no client came back in %.0f s; going on", timeout)
            return
        if not told:
            log(WARNING, "every client has left; waiting up to %.0f s for one to come back", timeout)
            told = True
        time.sleep(0.2)


def push(grid: Grid, messages: list[Message]) -> dict[str, int]:
    """Send `messages`; the id of each one sent, with the node it went to."""
    ids = grid.push_messages(messages)
    return {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True) if mid}


def collect(grid: Grid, pending: dict[str, int], timeout: float, departed: Path | None = None,
            starting: Collection[int] = (), startup: float = 0.0) -> list[Message]:
    """Pull each reply to the `pending` messages as soon as it lands, until all are in or past
    their deadline: `timeout` (--round-timeout) after now, or, for a node in `starting` (not
    heard from yet in this run: its first task waits on its start-up, torch and the data),
    `startup` (--startup-timeout) when that is longer. A reply stored by the deadline is taken:
    the last pull comes after it, however late this process got the CPU.

    Node ids listed in `departed` (the launcher writes those of clients that died) are not
    waited for: their replies will never come.
    """
    pending = dict(pending)
    replies: list[Message] = []
    allowed = {mid: max(timeout, startup) if node in starting else timeout
               for mid, node in pending.items()}
    started = time.monotonic()
    due = {mid: started + seconds for mid, seconds in allowed.items()}
    delay = POLL_START
    while pending:
        pulled = time.monotonic()  # a reply stored before this is in what the pull returns
        got = list(grid.pull_messages(list(pending)))
        replies.extend(got)
        for reply in got:
            pending.pop(reply.metadata.reply_to_message_id, None)
        gone = departed_nodes(departed) & set(pending.values())
        if gone:
            log(WARNING, "not waiting for %d client(s) that left: node %s", len(gone),
                ", ".join(map(str, sorted(gone))))
            pending = {mid: node for mid, node in pending.items() if node not in gone}
        if late := [mid for mid in pending if pulled >= due[mid]]:
            log(WARNING, "round timeout: %d client(s) did not reply in %.0f s", len(late),
                max(allowed[mid] for mid in late))
            for mid in late:
                del pending[mid]
        delay = POLL_START if got else min(POLL_MAX, delay * 1.5)
        if pending:
            next_due = min(due[mid] for mid in pending) - time.monotonic()
            time.sleep(max(0.0, min(delay, next_due)))
    return replies


def departed_nodes(path: Path | None) -> set[int]:
    """Node ids of clients that died and are not back, from the launcher's departed-nodes file:
    a line `ID` when a client dies, `+ID` when its restart signs in again under the same id."""
    if path is None:
        return set()
    try:
        words = path.read_text().split()
    except OSError:
        return set()
    gone: set[int] = set()
    for word in words:
        if word.isdigit():
            gone.add(int(word))
        elif word.startswith("+") and word[1:].isdigit():
            gone.discard(int(word[1:]))
    return gone


torch.backends.cudnn.benchmark = True
