"""The grid of a sweep: axes from the command line, one cell per combination, seeds outermost."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedcore.errors import UsageError

# Settings whose values may hold commas, so they are never split into an axis.
NOT_AXES = frozenset({"data-dir", "weights"})
_SEEDS = re.compile(r"(\d+)(?:-(\d+))?")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its folder name and the settings that make it differ from the rest."""

    name: str
    settings: tuple[tuple[str, str], ...]  # (config key, value as given on the command line)

    @property
    def seed(self) -> str:
        return dict(self.settings).get("seed", "")

    def group(self) -> tuple[tuple[str, str], ...]:
        """The settings other than the seed: cells of one group differ only in their seed."""
        return tuple((k, v) for k, v in self.settings if k != "seed")

    def flags(self) -> list[str]:
        return [part for key, value in self.settings for part in (f"--{key}", value)]


def parse_seeds(text: str) -> list[str]:
    """`0-2`, `0,1,2` or a mix such as `0-2,7`; each seed once, in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        match = _SEEDS.fullmatch(part.strip())
        if not match:
            raise UsageError(f"bad --seeds {text!r}: use a range like 0-2 or a list like 0,1,5")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise UsageError(f"bad --seeds {text!r}: the range {part.strip()} runs backwards")
        seeds.extend(range(first, last + 1))
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise UsageError(f"bad --seeds {text!r}: seed {twice[0]} listed twice")
    return [str(s) for s in seeds]


def split_axis(flag: str, text: str) -> list[str]:
    """A flag's comma list as an axis: every value once, none empty."""
    values = [v.strip() for v in text.split(",")]
    if any(not v for v in values):
        raise UsageError(f"bad --{flag} {text!r}: an empty value in the comma list")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise UsageError(f"bad --{flag} {text!r}: {twice[0]} listed twice")
    return values


def cell_name(settings: Sequence[tuple[str, str]]) -> str:
    """A folder name that reads as the cell's settings: `partition-dirichlet0.5_seed-0`."""
    return "_".join(f"{key}-{_UNSAFE.sub('', value) or 'x'}" for key, value in settings)


def build_grid(axes: Mapping[str, list[str]], seeds: list[str]) -> list[Cell]:
    """Every combination of the axes, seeds outermost: each seed's full row runs before the next
    seed's, so a sweep cut short has one seed of every cell rather than every seed of one."""
    keys = list(axes)
    cells = []
    for seed in seeds or [""]:
        for values in itertools.product(*(axes[k] for k in keys)):
            settings = list(zip(keys, values, strict=True))
            if seed:
                settings.append(("seed", seed))
            cells.append(Cell(cell_name(settings), tuple(settings)))
    names = [c.name for c in cells]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UsageError(f"two cells would share the folder {clash[0]}; give values that differ "
                         "in letters or digits")
    return cells
