"""The run directory: config, metrics.jsonl, summary, checkpoints, partitions and curves."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fedcore.errors import UsageError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
PARTITIONS = "partitions.json"
PROGRESS = "progress"
CHECKPOINTS = "checkpoints"
DEPARTED = "departed-nodes.txt"  # `ID` a client died (the server stops waiting), `+ID` it is back


# The line a process that cannot write the run folder prints before it fails; the launcher
# makes it the run's one-line reason.
RUN_FOLDER_FAILED = "cannot write the run folder: "
# The ServerApp's line when no client connected by --startup-timeout (fedcore.server_app).
NO_CLIENTS = "fedlaunch: no client connected within"


def failed_in_folder(exc: OSError, folder: Path) -> tuple[Path, str] | None:
    """The path in `folder` that `exc` is about, and its cause; None for an error elsewhere (the
    data folder, the network)."""
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes) else ""
    if not name:
        return None
    where, base = Path(os.path.abspath(name)), Path(os.path.abspath(folder))
    if where != base and base not in where.parents:
        return None
    return where, exc.strerror or type(exc).__name__


def run_folder_failure(exc: OSError, folder: Path) -> str | None:
    """`fedlaunch: cannot write the run folder: PATH (CAUSE)` when `exc` is about a file in
    `folder`; None for an error elsewhere."""
    found = failed_in_folder(exc, folder)
    return None if found is None else f"fedlaunch: {RUN_FOLDER_FAILED}{found[0]} ({found[1]})"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file
    (the rename replaces a symlink at `path`, never writes through it)."""
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


def json_records(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects among `lines`; a line that is not UTF-8 JSON, or not an object, is skipped.

    The one JSON-lines parser of fedlaunch: metrics.jsonl, read whole or followed as it grows.
    """
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            continue
        if isinstance(record, dict):
            yield record


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines of `data` and the torn rest (a line still being written, or b"")."""
    *lines, rest = data.split(b"\n")
    return lines, rest


class FileTail:
    """The complete lines appended to a file since the last `lines()` call; a line still being
    written waits for its end. `from_end`: skip what the file holds now (an earlier launch's)."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = path
        self.offset = self._size() if from_end else 0
        self.partial = b""

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def lines(self) -> list[bytes]:
        size = self._size()
        if size <= self.offset:
            return []
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        lines, self.partial = split_lines(self.partial + data)
        return lines


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Each complete JSON line of `path`; a torn last line (a crash mid-write) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    yield from json_records(split_lines(data)[0])


def drop_torn_tail(path: Path) -> int:
    """Cut a torn last line (a crash mid-write left it without its newline) off the JSON-lines
    file `path`, so that the next record starts a line of its own; the bytes dropped (0: none)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        keep = size
        while keep > 0:  # back to the last newline, a block at a time
            start = max(0, keep - 65536)
            block = os.pread(fd, keep - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return size - keep
    finally:
        os.close(fd)


def open_append(path: Path) -> int:
    """A file descriptor appending to `path`, which must not be a symlink (O_NOFOLLOW)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def symlinks_in(folder: Path) -> list[Path]:
    """Every symbolic link inside `folder`, at any depth (links are listed, never followed)."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            path = Path(parent) / name
            if path.is_symlink():
                found.append(path)
    return found


def refuse_symlinks(folder: Path, what: str) -> None:
    """A run folder from elsewhere is not trusted: a symlink in it could make fedlaunch read or
    write files outside it. UsageError naming the first one."""
    links = symlinks_in(folder)
    if links:
        first = links[0]
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise UsageError(f"{what}: {first.relative_to(folder)} in {folder} is a symbolic link"
                         f"{more}; fedlaunch reads and writes only plain files in a run folder")


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
        """Append one line to metrics.jsonl and hand it to the OS at once (one write)."""
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self._append(self.metrics_path, json.dumps(record) + "\n")
        return record

    @staticmethod
    def _append(path: Path, text: str) -> None:
        fd = open_append(path)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def metrics(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics_path))

    def add_departed_node(self, node_id: int) -> None:
        self._append(self.path / DEPARTED, f"{node_id}\n")

    def add_returned_node(self, node_id: int) -> None:
        """A departed node id is back (a restarted client that signs in with the same key)."""
        self._append(self.path / DEPARTED, f"+{node_id}\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / SUMMARY, summary)

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.exists() else None

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        """Save tensors and plain values to checkpoints/<name>.pt, atomically: written to a
        temporary file, fsynced, renamed over the old one, and the rename fsynced too."""
        import torch  # here, not at the top: the launcher reads run folders without torch

        folder = self.path / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.pt"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        sync_folder(folder)
        return target

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """checkpoints/<name>.pt, or None when there is none; raises when it cannot be read."""
        import torch

        path = self.path / CHECKPOINTS / f"{name}.pt"
        if not path.exists():
            return None
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError(f"{path} holds no model state")
        return state

    def resume_checkpoint(self, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """last.pt to resume from; when it is damaged, best.pt with a warning; None when neither
        exists (a fresh run). Raises ValueError when both are damaged."""
        warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
        try:
            return self.load_checkpoint("last")
        except Exception as exc:  # torch raises many kinds for a truncated or foreign file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        try:
            best = self.load_checkpoint("best")
        except Exception as exc:
            raise ValueError(f"checkpoints/last.pt and best.pt in {self.path} are both damaged "
                             f"({reason})") from exc
        if best is None:
            raise ValueError(f"checkpoints/last.pt in {self.path} is damaged ({reason}) "
                             "and there is no best.pt")
        warn(f"checkpoints/last.pt is damaged ({reason}); resuming from best.pt "
             f"(round {best.get('round')})")
        return best


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def summarize(run: RunDir, *, mode: str, exit_reason: str, wall_seconds: float,
              records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """summary.json's content, derived from metrics.jsonl alone (or its `records` as read)."""
    unit = "epoch" if mode == "local" else "round"
    records = run.metrics() if records is None else records
    ends = [m for m in records if m.get("event") == unit]
    start: dict[str, Any] = next((m for m in reversed(records) if m.get("event") == "start"), {})
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
    """accuracy.png and loss.png of the run's test (and, where recorded, train) accuracy and loss."""
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
        ax.plot(xs, [m[key] for m in records], marker="o", markersize=3, label=label)
        train = [(x, m[f"train_{key}"]) for x, m in zip(xs, records, strict=True)
                 if isinstance(m.get(f"train_{key}"), (int, float))]
        if train:  # as trained: augmented batches, the model still moving during the epoch
            ax.plot(*zip(*train, strict=True), marker="o", markersize=3, linestyle="--",
                    label=f"train {key}")
            ax.legend(fontsize="small")
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
