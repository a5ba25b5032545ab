"""Turns what the Flower app writes (metrics.jsonl, progress files) into launcher events."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fedcore.rundir import METRICS, PROGRESS, FileTail, json_records
from launcher.events import (
    ClientProgress,
    Event,
    LogLine,
    Notice,
    PoolStats,
    RoundFinished,
    RoundStarted,
    WorkerInfo,
)

POOL = "pool.json"  # the worker pool's state, written by the client host


class RunFollower:
    """Reads new metrics lines and changed progress files each time `poll()` is called."""

    def __init__(self, run_dir: Path, client_gpus: dict[int, int | None] | None = None,
                 log_files: dict[str, Path] | None = None) -> None:
        self.metrics_path = run_dir / METRICS
        self.progress_dir = run_dir / PROGRESS
        self.client_gpus = client_gpus or {}
        self.since = time.time()
        self._metrics = FileTail(self.metrics_path)
        self._seen: dict[str, tuple[int, int]] = {}
        self.records: list[dict[str, Any]] = []
        self.logs = LogTails(log_files or {})

    def poll(self) -> list[Event]:
        return self._poll_metrics() + self._poll_progress() + self._poll_pool() + self.logs.poll()

    def _poll_pool(self) -> list[Event]:
        """The worker pool's state, when the client host has rewritten pool.json."""
        path = self.metrics_path.parent / POOL
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(POOL) == stamp:
                return []
            self._seen[POOL] = stamp
            return [pool_event(json.loads(path.read_text()))]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _poll_metrics(self) -> list[Event]:
        events: list[Event] = []
        for record in json_records(self._metrics.lines()):
            self.records.append(record)
            event = metric_event(record)
            if event is not None:
                events.append(event)
        return events

    def _poll_progress(self) -> list[Event]:
        events: list[Event] = []
        try:
            entries = list(os.scandir(self.progress_dir))
        except FileNotFoundError:
            return events
        # A SuperNode's node-id file (written when it signs in) before the ClientApp's progress.
        entries.sort(key=lambda e: not e.name.endswith(".node"))
        for entry in entries:
            if not entry.name.endswith((".json", ".node")) or entry.name.startswith("."):
                continue
            try:
                stat = entry.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if self._seen.get(entry.name) == stamp:
                    continue
                if entry.name.endswith(".node"):
                    event = self._signed_in(entry.name, stat.st_mtime)
                else:
                    event = progress_event(json.loads(Path(entry.path).read_text()),
                                           self.client_gpus)
            except (OSError, ValueError):
                continue
            self._seen[entry.name] = stamp
            if event is not None:
                events.append(event)
        return events

    def _signed_in(self, name: str, mtime: float) -> Event | None:
        """Client N's SuperNode signed in to the SuperLink (client-N.node); it has no task yet."""
        if mtime < self.since:  # a sign-in of an earlier launch of this run
            return None
        client = int(name.removeprefix("client-").removesuffix(".node"))
        return ClientProgress(client=client, state="connected", gpu=self.client_gpus.get(client))

    def ended(self) -> dict[str, Any] | None:
        """The 'end' record the app wrote since this launch (a resumed run has older ones)."""
        for record in reversed(self.records):
            if record.get("event") == "launch":
                return None
            if record.get("event") == "end":
                return record
        return None


class LogTails:
    """Lines appended to log files that children write themselves (the pool's client endpoints
    write logs/client-<id>.log), as LogLine events for the TUI's log pane; not echoed headless,
    where a hundred clients' SuperNode lines would bury the one line per round."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.tails = {name: FileTail(path, from_end=True) for name, path in files.items()}

    def poll(self) -> list[Event]:
        return [LogLine(name, line.decode(errors="replace"), echo=False)
                for name, tail in self.tails.items() for line in tail.lines()]


def metric_event(record: dict[str, Any]) -> Event | None:
    kind = record.get("event")
    try:
        if kind == "nodes" and "round" not in record:
            connected, expected = len(record["connected"]), int(record["expected"])
            return Notice("info", f"{connected} of {expected} clients connected")
        if kind == "round_start":
            return RoundStarted(round=int(record["round"]), total=int(record["total"]))
        if kind in ("round", "epoch"):
            train_loss = record.get("train_loss")
            return RoundFinished(
                round=int(record[kind]),
                total=int(record["total"]),
                accuracy=float(record["accuracy"]),
                loss=float(record["loss"]),
                train_loss=float(train_loss) if train_loss is not None else None,
                replies=int(record.get("replies", 0)),
                seconds=float(record.get("seconds", 0.0)),
                best_accuracy=float(record.get("best_accuracy", record["accuracy"])),
                clients=tuple(int(c) for c in record.get("clients", ())),
                rejected=int(record.get("rejected") or 0),
                kept_model=str(record.get("kept_model") or ""),
            )
        if kind == "rejected":
            return Notice("warning", f"round {int(record['round'])}: rejected the reply of node "
                                     f"{int(record['node_id'])} (partition "
                                     f"{record.get('partition_id')}): {record['reason']}")
    except (KeyError, TypeError, ValueError):
        return None
    return None


def pool_event(record: dict[str, Any]) -> PoolStats:
    """pool.json (written by launcher/shim/clienthost.py) as an event."""
    workers = tuple(
        WorkerInfo(name=str(w["name"]), gpu=str(w.get("gpu", "")), state=str(w.get("state", "")),
                   client=None if w.get("client") is None else int(w["client"]),
                   images_per_s=float(w.get("images_per_s", 0.0)), tasks=int(w.get("tasks", 0)))
        for w in record.get("workers", ()))
    return PoolStats(workers=tuple(sorted(workers, key=lambda w: _numbered(w.name))),
                     queued=tuple(int(c) for c in record.get("queued", ())),
                     failed_clients=tuple(int(c) for c in record.get("failed", ())))


def _numbered(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (name, 0)


def progress_event(record: dict[str, Any], client_gpus: dict[int, int | None]) -> Event | None:
    try:
        client = int(record["client"])
        loss = record.get("train_loss")
        return ClientProgress(
            client=client,
            state=record.get("state", "training"),
            round=int(record.get("round", 0)),
            epoch=int(record.get("epoch", 0)),
            epochs=int(record.get("epochs", 0)),
            batch=int(record.get("batch", 0)),
            batches=int(record.get("batches", 0)),
            samples=int(record.get("samples", 0)),
            train_loss=float(loss) if loss is not None else None,
            gpu=record_gpu(record) if "gpu" in record else client_gpus.get(client),
            error=record.get("error"),
            detail=str(record.get("detail", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def record_gpu(record: dict[str, Any]) -> int | None:
    """The physical GPU a progress record names (a pool worker's, which trained the client)."""
    gpu = record["gpu"]
    return None if gpu is None else int(gpu)
