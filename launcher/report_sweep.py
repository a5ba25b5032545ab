"""`fedlaunch report SWEEP_DIR`: mean ± sd over seeds per cell of a sweep, as Markdown, CSV, PNG."""

from __future__ import annotations

import argparse
import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcore.rundir import read_jsonl, refuse_symlinks
from launcher.sweep.queue import cell_finished
from launcher.sweep.state import SWEEP_JSON, SweepState, load_sweep

REPORT_MD = "sweep-report.md"
REPORT_CSV = "sweep-report.csv"
CURVES_PNG = "sweep-curves.png"


@dataclass(frozen=True)
class CellCurve:
    """One cell's test accuracy per round, from its metrics.jsonl (the last record per round)."""

    name: str
    rounds: list[int]
    accuracy: list[float]
    completed: bool

    @property
    def best(self) -> float:
        return max(self.accuracy)

    @property
    def final(self) -> float:
        return self.accuracy[-1]


@dataclass(frozen=True)
class GroupRow:
    """One line of the sweep's table: the cells that differ only in their seed."""

    settings: tuple[tuple[str, str], ...]
    cells: int
    curves: list[CellCurve]
    published: tuple[float, float] | None

    def stats(self, which: str) -> tuple[float | None, float | None]:
        """(mean, sd) in percent of the best or final accuracy over the seeds that ran; sd needs two."""
        values = [100 * (c.best if which == "best" else c.final) for c in self.curves]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    def rounds_text(self) -> str:
        done = sorted({c.rounds[-1] for c in self.curves})
        return "-" if not done else str(done[0]) if len(done) == 1 else f"{done[0]}-{done[-1]}"


def is_sweep_report(argv: list[str]) -> bool:
    """`report` of one folder that holds a sweep.json (a run folder has none)."""
    folders = [a for i, a in enumerate(argv) if not a.startswith("-")
               and not (i and argv[i - 1] == "--out")]
    return len(folders) == 1 and (Path(folders[0]) / SWEEP_JSON).is_file()


def cell_curve(run_dir: Path, name: str) -> CellCurve | None:
    """The cell's rounds so far, or None before its first round (or before it started)."""
    if not run_dir.is_dir():
        return None
    refuse_symlinks(run_dir, "report")
    by_round: dict[int, float] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        accuracy, number = record.get("accuracy"), record.get("round")
        if record.get("event") == "round" and isinstance(accuracy, int | float) \
                and isinstance(number, int) and not isinstance(accuracy, bool):
            by_round[number] = float(accuracy)
    if not by_round:
        return None
    rounds = sorted(by_round)
    return CellCurve(name, rounds, [by_round[r] for r in rounds], cell_finished(run_dir))


def published_for(state: SweepState, settings: dict[str, str]) -> tuple[float, float] | None:
    table = state.published
    if not table:
        return None
    setting = table["setting"]
    value = settings.get(setting, state.fixed.get(setting, table.get("profile_value")))
    pair = table["values"].get(value) if value is not None else None
    return (float(pair[0]), float(pair[1])) if pair else None


def sweep_rows(state: SweepState) -> list[GroupRow]:
    groups: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for cell in state.cells:
        groups.setdefault(cell.cell().group(), []).append(cell)
    rows = []
    for key, cells in groups.items():
        curves = [c for c in (cell_curve(state.cell_dir(x), x.name) for x in cells) if c]
        rows.append(GroupRow(key, len(cells), curves, published_for(state, dict(key))))
    return rows


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def setting_names(state: SweepState) -> list[str]:
    return list(state.axes) or ["profile"]


def group_label(state: SweepState, row: GroupRow) -> list[str]:
    return [v for _, v in row.settings] or [state.profile or "-"]


def markdown_table(state: SweepState, rows: list[GroupRow]) -> str:
    metric = state.published["metric"] if state.published else "best"
    head = [*setting_names(state), "seeds run", "rounds", "best acc %", "final acc %",
            f"published ({metric}) %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        done = sum(c.completed for c in row.curves)
        seeds = f"{len(row.curves)} of {row.cells}"
        if done < len(row.curves):
            seeds += f" ({done} complete)"
        published = _pm(*row.published) if row.published else "-"
        cells = [*group_label(state, row), seeds, row.rounds_text(), _pm(*row.stats("best")),
                 _pm(*row.stats("final")), published]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(state: SweepState, rows: list[GroupRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*setting_names(state), "seeds_run", "cells", "complete", "rounds",
                     "best_mean", "best_sd", "final_mean", "final_sd",
                     "published_mean", "published_sd"])

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    for row in rows:
        pub = row.published or (None, None)
        writer.writerow([*group_label(state, row), len(row.curves), row.cells,
                         sum(c.completed for c in row.curves), row.rounds_text(),
                         *map(num, row.stats("best")), *map(num, row.stats("final")),
                         *map(num, pub)])
    return out.getvalue()


def plot_sweep(state: SweepState, rows: list[GroupRow], out: Path) -> Path:
    """Test accuracy per round: the mean over seeds of each group, with a band of ± one sd."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in rows:
        if not row.curves:
            continue
        last = max(c.rounds[-1] for c in row.curves)
        xs, means, sds = [], [], []
        for r in range(1, last + 1):
            values = [100 * a for c in row.curves
                      for n, a in zip(c.rounds, c.accuracy, strict=True) if n == r]
            if values:
                xs.append(r)
                means.append(statistics.fmean(values))
                sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        label = " ".join(group_label(state, row)) + f" (n={len(row.curves)})"
        line, = ax.plot(xs, means, label=label)
        ax.fill_between(xs, [m - s for m, s in zip(means, sds, strict=True)],
                        [m + s for m, s in zip(means, sds, strict=True)],
                        color=line.get_color(), alpha=0.2)
        if row.published:
            ax.axhline(row.published[0], color=line.get_color(), linestyle=":", alpha=0.8)
    ax.set(xlabel="round", ylabel="test accuracy (%)",
           title="mean over seeds, band ± 1 sd; dotted: published")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def sweep_report(folder: Path, out: Path | None = None) -> tuple[str, list[Path]]:
    """Write the Markdown table, the CSV and the curves; return the table and the paths."""
    state = load_sweep(folder.expanduser().resolve())
    rows = sweep_rows(state)
    target = (out or state.path).expanduser().resolve()
    target.mkdir(parents=True, exist_ok=True)
    table = markdown_table(state, rows)
    source = f"\n\nPublished: {state.published['source']}." if state.published else ""
    md = target / REPORT_MD
    md.write_text(f"# Sweep {state.path.name}\n\n{table}{source}\n")
    csv_path = target / REPORT_CSV
    csv_path.write_text(csv_table(state, rows))
    png = plot_sweep(state, rows, target / CURVES_PNG)
    return table, [md, csv_path, png]


def sweep_report_main(argv: list[str]) -> int:
    from launcher.arguments import Parser

    parser = Parser(prog="fedlaunch report", description="A sweep's table: mean ± sd over seeds of "
                    "the best and final test accuracy of each cell, beside the published figure.")
    parser.add_argument("sweep", metavar="SWEEP_DIR")
    parser.add_argument("--out", help="folder for the Markdown, CSV and PNG (default: SWEEP_DIR)")
    args: argparse.Namespace = parser.parse_args(argv)
    table, paths = sweep_report(Path(args.sweep), Path(args.out) if args.out else None)
    print(table)
    for path in paths:
        print(f"wrote {path}")
    return 0
