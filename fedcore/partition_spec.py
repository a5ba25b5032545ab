"""Partition specs as plain data (`iid`, `dirichlet:ALPHA`, `classes:K`): checked without numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedcore.errors import UsageError

PARTITION_KINDS = ("iid", "dirichlet", "classes")
DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: kind "iid", "dirichlet" (with alpha) or "classes" (with classes_per_client)."""

    kind: str
    alpha: float | None = None
    classes_per_client: int | None = None

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "classes":
            return f"classes:{self.classes_per_client}"
        return self.kind


def bad_spec(spec: str) -> UsageError:
    return UsageError(f"bad --partition {spec!r}: use iid, dirichlet:ALPHA (ALPHA > 0) or classes:K")


def parse_partition(spec: str) -> PartitionSpec:
    """Parse "iid", "dirichlet" (alpha 0.5), "dirichlet:ALPHA" or "classes:K"."""
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind == "iid" and not sep:
        return PartitionSpec("iid")
    if kind == "dirichlet":
        if not sep:
            return PartitionSpec("dirichlet", alpha=DEFAULT_ALPHA)
        try:
            alpha = float(arg)
        except ValueError:
            raise bad_spec(spec) from None
        if not (alpha > 0 and math.isfinite(alpha)):
            raise bad_spec(spec)
        return PartitionSpec("dirichlet", alpha=alpha)
    if kind == "classes" and sep:
        try:
            k = int(arg)
        except ValueError:
            raise bad_spec(spec) from None
        if k < 1:
            raise bad_spec(spec)
        return PartitionSpec("classes", classes_per_client=k)
    raise bad_spec(spec)
