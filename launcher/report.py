"""`fedlaunch report`: curves of several runs side by side, partition heatmaps, a summary table."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from fedcore.errors import UsageError
from fedcore.rundir import read_jsonl, refuse_symlinks

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PARTITIONS = "partitions.json"
REPORT_PNG = "report.png"
PARTITIONS_PNG = "partitions.png"
HEADERS = ("run", "mode", "model", "rounds/epochs", "final acc", "best acc", "wall s", "images/s")


@dataclass(frozen=True)
class RunCurves:
    """One run folder as the report reads it."""

    path: Path
    mode: str
    model: str
    images: list[float]  # training images seen at the end of each round or epoch
    accuracy: list[float]
    loss: list[float]
    summary: dict[str, Any]
    partitions: dict[str, Any] | None = None
    train_accuracy: list[float | None] | None = None  # per round or epoch, where recorded
    label: str = ""  # how the legend, the table and file names call it (see run_labels)

    @property
    def name(self) -> str:
        return self.label or self.path.resolve().name

    @property
    def unit(self) -> str:
        return "epoch" if self.mode == "local" else "round"


@dataclass(frozen=True)
class ReportRow:
    """One line of the table: the values a user compares across runs."""

    run: str
    mode: str
    model: str
    completed: int
    final_accuracy: float | None
    best_accuracy: float | None
    wall_seconds: float | None
    images_per_second: float | None

    def cells(self) -> tuple[str, ...]:
        def num(value: float | None, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        return (self.run, self.mode, self.model, str(self.completed), num(self.final_accuracy, 4),
                num(self.best_accuracy, 4), num(self.wall_seconds, 1), num(self.images_per_second, 0))


@dataclass(frozen=True)
class ReportResult:
    """What `report` wrote and the table it computed."""

    report_png: Path
    partition_pngs: list[Path] = field(default_factory=list)
    rows: list[ReportRow] = field(default_factory=list)


def _read_json(path: Path, run_dir: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path.name} in {run_dir} ({exc.strerror})") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        reason = str(exc).splitlines()[0][:120]
        raise UsageError(f"{path.name} in {run_dir} is not valid UTF-8 JSON ({reason})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path.name} in {run_dir} is not a JSON object")
    return data


def _read_metrics(path: Path, run_dir: Path) -> list[dict[str, Any]]:
    """Every complete JSON object line (a torn or foreign line is skipped); a file that is not
    UTF-8 text is a UsageError, not a run with no rounds."""
    try:
        path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {METRICS} in {run_dir} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{METRICS} in {run_dir} is not UTF-8 text (byte {exc.start}); "
                         "it is not a fedlaunch metrics file") from None
    return list(read_jsonl(path))


def _number(record: dict[str, Any], key: str, default: float | None, where: str) -> float:
    """A record's numeric field; a string, a list or a bool there is a UsageError naming it."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: a '{record.get('event')}' record has {key}={value!r}, "
                         "not a number; is this a fedlaunch run folder?")
    return float(value)


def load_run(run_dir: Path) -> RunCurves:
    """Read one run folder; a folder without metrics.jsonl is a UsageError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"not a fedlaunch run folder: {run_dir} (no such folder)")
    refuse_symlinks(run_dir, "report")
    metrics_path = run_dir / METRICS
    if not metrics_path.is_file():
        raise UsageError(f"not a fedlaunch run folder: {run_dir} (no {METRICS})")
    records = _read_metrics(metrics_path, run_dir)
    summary = _read_json(run_dir / SUMMARY, run_dir) or {}
    declared = summary.get("mode") or next((r["mode"] for r in records if r.get("mode")), None)
    has_epochs = any(r.get("event") == "epoch" for r in records)
    mode = str(declared or ("local" if has_epochs else "federated"))
    unit = "epoch" if mode == "local" else "round"
    ends = [r for r in records if r.get("event") == unit and "accuracy" in r]
    if not ends and any(r.get("event") in ("round", "epoch") for r in records):
        unit = "epoch" if has_epochs else "round"
        ends = [r for r in records if r.get("event") == unit and "accuracy" in r]
    model = summary.get("model") or next((r["model"] for r in records if r.get("model")), "?")
    where = str(metrics_path)
    for n, r in enumerate(ends):
        for key, default in (("accuracy", None), ("loss", float("nan")), ("seconds", 0.0),
                             ("train_images", 0.0), (unit, float(n + 1))):
            _number(r, key, default, where)
    images = [_number(r, "train_images", _number(r, unit, n + 1, where), where)
              for n, r in enumerate(ends)]
    partitions = _read_json(run_dir / PARTITIONS, run_dir) if mode == "federated" else None
    return RunCurves(
        path=run_dir, mode=mode, model=str(model), images=images,
        accuracy=[_number(r, "accuracy", None, where) for r in ends],
        loss=[_number(r, "loss", float("nan"), where) for r in ends],
        summary={**_derived_summary(ends, unit), **summary}, partitions=partitions,
        train_accuracy=[_optional_number(r, "train_accuracy") for r in ends],
    )


def _optional_number(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _derived_summary(ends: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    """What summary.json would say, from metrics.jsonl alone (a run killed before writing it)."""
    if not ends:
        return {f"{unit}s_completed": 0}
    wall = sum(float(r.get("seconds", 0.0)) for r in ends)
    images = float(ends[-1].get("train_images", 0))
    return {
        f"{unit}s_completed": int(ends[-1].get(unit, len(ends))),
        "final_accuracy": float(ends[-1]["accuracy"]),
        "best_accuracy": max(float(r["accuracy"]) for r in ends),
        "wall_seconds": wall,
        "train_images": images,
        "train_images_per_second": images / wall if wall > 0 else None,
    }


def table_row(run: RunCurves) -> ReportRow:
    s = run.summary

    def number(key: str) -> float | None:
        value = s.get(key)
        return float(value) if isinstance(value, int | float) else None

    return ReportRow(
        run=run.name, mode=run.mode, model=run.model,
        completed=int(number(f"{run.unit}s_completed") or 0),
        final_accuracy=number("final_accuracy"), best_accuracy=number("best_accuracy"),
        wall_seconds=number("wall_seconds"), images_per_second=number("train_images_per_second"),
    )


def plot_curves(runs: list[RunCurves], out: Path) -> Path:
    """Test accuracy and loss of every run against training images seen, side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    accuracy_ax, loss_ax = fig.subplots(1, 2, sharex=True)
    for run in runs:
        label = f"{run.name} ({run.mode})"
        style = {"marker": "o" if len(run.images) <= 30 else None, "markersize": 3, "label": label}
        line, = accuracy_ax.plot(run.images, run.accuracy, **style)
        loss_ax.plot(run.images, run.loss, **style)
        train = [(x, a) for x, a in zip(run.images, run.train_accuracy or [], strict=False) if a is not None]
        if train:  # dashed, in the run's colour: accuracy on its training batches, as trained
            accuracy_ax.plot(*zip(*train, strict=True), linestyle="--", color=line.get_color(),
                             alpha=0.7, label=f"{run.name} train")
    accuracy_ax.set(title="test accuracy (dashed: train)", xlabel="training images seen",
                    ylabel="accuracy")
    loss_ax.set(title="test loss", xlabel="training images seen", ylabel="loss")
    for ax in (accuracy_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 4))
    accuracy_ax.legend(fontsize="small", loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def run_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each path (name, then parent/name, ...) that tell the runs
    apart: `a/run` and `b/run` rather than `run` twice."""
    parts = [Path(p).resolve().parts for p in paths]
    labels = []
    for i, own in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i and q != own]
        depth = 1
        while depth < len(own) and any(q[-depth:] == own[-depth:] for q in others):
            depth += 1
        labels.append("/".join(own[-depth:]).lstrip("/") or "/")
    return labels


def png_path(out: Path) -> Path:
    """The file matplotlib writes for `out`: a name without a known image suffix gets `.png`."""
    if out.suffix.lower() in (".png", ".svg", ".pdf"):
        return out
    return out.with_name(out.name + ".png")


def partitions_path(report_png: Path, run: RunCurves) -> Path:
    """Beside the report: `report-partitions-<label>.png`, the label's slashes as dashes."""
    safe = run.name.replace("/", "-").replace("\\", "-")
    return report_png.with_name(f"{report_png.stem}-partitions-{safe}.png")


def plot_partitions(run: RunCurves, out: Path) -> Path | None:
    """A clients x classes heatmap of sample counts from partitions.json, written to `out`."""
    stats = run.partitions
    counts = stats.get("label_counts") if stats else None
    if not stats or not isinstance(counts, list) or not counts:
        return None
    whole = [isinstance(row, list) and all(type(v) is int for v in row) for row in counts]
    if not all(whole) or len({len(row) for row in counts}) != 1:
        raise UsageError(f"{PARTITIONS} in {run.path}: label_counts is not a table of whole "
                         "numbers; is this a fedlaunch run folder?")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clients = stats.get("clients") or []
    first = clients[0].get("labels") if clients and isinstance(clients[0], dict) else None
    classes = list(first) if isinstance(first, dict) else [str(c) for c in range(len(counts[0]))]
    rows, cols = len(counts), len(classes)
    fig = Figure(figsize=(max(6.0, 0.75 * cols + 2), max(3.0, 0.4 * rows + 1.8)), dpi=110,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xticks(range(cols), classes, rotation=45, ha="right")
    ax.set_yticks(range(rows), [f"client {k}" for k in range(rows)])
    ax.set_title(f"{run.name}: samples per class ({stats.get('spec') or 'partition'})")
    if rows * cols <= 400:
        top = max((max(row) for row in counts if row), default=0)
        for y, row in enumerate(counts):
            for x, value in enumerate(row):
                colour = "black" if value > top * 0.6 else "white"
                ax.text(x, y, str(value), ha="center", va="center", fontsize=7, color=colour)
    fig.savefig(out)
    return out


def report(run_dirs: list[Path], out: Path | None = None, into_runs: bool = False) -> ReportResult:
    """Write the curves to `out` (default ./report.png) and a partition heatmap per federated run
    beside it; the run folders read stay unchanged unless `into_runs` puts each heatmap in its
    run as partitions.png. Returns the paths written and the table."""
    if not run_dirs:
        raise UsageError("fedlaunch report needs at least one run folder")
    loaded = [load_run(Path(d)) for d in run_dirs]
    runs = [replace(r, label=label) for r, label in zip(loaded, run_labels([r.path for r in loaded]),
                                                          strict=True)]
    target = Path(out) if out is not None else Path(REPORT_PNG)
    if target.is_dir():
        target = target / REPORT_PNG
    report_png = plot_curves(runs, png_path(target))
    partition_pngs = []
    for run in runs:
        if run.mode == "federated":
            where = run.path / PARTITIONS_PNG if into_runs else partitions_path(report_png, run)
            written = plot_partitions(run, where)
            if written:
                partition_pngs.append(written)
    return ReportResult(report_png, partition_pngs, [table_row(r) for r in runs])


def format_table(rows: list[ReportRow]) -> str:
    """Plain-text columns: text left-aligned, numbers right-aligned."""
    cells = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    lines = []
    for line in cells:
        pairs = enumerate(zip(line, widths, strict=True))
        parts = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def print_table(rows: list[ReportRow], stream: TextIO | None = None) -> None:
    print(format_table(rows), file=stream or sys.stdout)
