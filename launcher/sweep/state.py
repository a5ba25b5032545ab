"""sweep.json: the grid, each cell's state and folder; written atomically after every change."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcore.errors import UsageError
from fedcore.rundir import write_json_atomic
from launcher.sweep.grid import Cell

SWEEP_JSON = "sweep.json"
VERSION = 1
STATES = ("pending", "running", "done", "stopped", "failed")


@dataclass
class CellState:
    """What the sweep knows of one cell; `round`/`accuracy` are its last finished round."""

    name: str
    settings: dict[str, str]
    state: str = "pending"
    exit_code: int | None = None
    round: int = 0
    total: int | None = None
    accuracy: float | None = None
    best_accuracy: float | None = None
    gpus: str | None = None  # the --gpus the cell ran with (NVML ids, or cpu)
    attempts: int = 0

    @property
    def folder(self) -> str:
        return self.name

    def cell(self) -> Cell:
        return Cell(self.name, tuple(self.settings.items()))


@dataclass
class SweepState:
    """The whole sweep: how it was asked for, and every cell."""

    path: Path
    profile: str | None
    fixed: dict[str, str]  # settings given once, the same for every cell
    axes: dict[str, list[str]]
    seeds: list[str]
    gpus: str | None
    max_parallel: int | None
    published: dict[str, Any] | None
    cells: list[CellState] = field(default_factory=list)

    def save(self) -> None:
        data = {
            "version": VERSION, "profile": self.profile, "fixed": self.fixed, "axes": self.axes,
            "seeds": self.seeds, "gpus": self.gpus, "max_parallel": self.max_parallel,
            "published": self.published,
            "cells": [{**asdict(c), "folder": c.folder} for c in self.cells],
        }
        write_json_atomic(self.path / SWEEP_JSON, data)

    def cell_dir(self, cell: CellState) -> Path:
        return self.path / cell.folder

    def counts(self) -> dict[str, int]:
        return {s: sum(c.state == s for c in self.cells) for s in STATES}


def _text_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"'{what}' is not a table of strings")
    return dict(value)


def load_sweep(folder: Path) -> SweepState:
    """Read DIR/sweep.json; anything else is one UsageError naming the folder."""
    path = folder / SWEEP_JSON
    if not path.is_file():
        raise UsageError(f"--resume {folder}: not a sweep folder (no {SWEEP_JSON})")
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} sweep file")
        axes = data["axes"]
        if not isinstance(axes, dict) or not all(
                isinstance(v, list) and all(isinstance(x, str) for x in v) for v in axes.values()):
            raise ValueError("'axes' is not a table of string lists")
        cells = []
        for raw in data["cells"]:
            known = {k: raw[k] for k in CellState.__dataclass_fields__ if k in raw}
            cell = CellState(**{**known, "settings": _text_map(raw["settings"], "settings")})
            if cell.state not in STATES or cell.name != Path(cell.name).name:
                raise ValueError(f"cell {cell.name!r} has state {cell.state!r}")
            cells.append(cell)
        return SweepState(
            path=folder, profile=data.get("profile"), fixed=_text_map(data["fixed"], "fixed"),
            axes=axes, seeds=[str(s) for s in data["seeds"]], gpus=data.get("gpus"),
            max_parallel=data.get("max_parallel"), published=data.get("published"), cells=cells)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a readable sweep file ({exc})") from None
