"""Plain-text bars, sparklines and small charts for the panels (no Textual)."""

from __future__ import annotations

from collections.abc import Sequence

BLOCKS = " ▁▂▃▄▅▆▇█"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar `width` cells wide, filled to `fraction` in eighths."""
    width = max(1, width)
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    partial = "▏▎▍▌▋▊▉"[part - 1] if part else ""
    return ("█" * full + partial).ljust(width, "░")[:width]


def _levels(values: Sequence[float], lo: float, hi: float, steps: int) -> list[int]:
    span = hi - lo
    if span <= 0:
        return [steps if v > lo else 0 for v in values]
    return [round(max(0.0, min(1.0, (v - lo) / span)) * steps) for v in values]


def sparkline(values: Sequence[float], width: int, lo: float = 0.0, hi: float | None = None) -> str:
    """One row of block characters for the last `width` values, left-aligned."""
    tail = list(values)[-max(1, width):]
    if not tail:
        return ""
    top = max(tail) if hi is None else hi
    return "".join(BLOCKS[max(1, level)] for level in _levels(tail, lo, top, 8))


def chart_rows(values: Sequence[float], width: int, height: int, lo: float, hi: float) -> list[str]:
    """A column chart `height` rows tall of the last `width` values, top row first."""
    height = max(1, height)
    tail = list(values)[-max(1, width):]
    levels = _levels(tail, lo, hi, height * 8)
    rows = []
    for row in range(height - 1, -1, -1):
        cells = []
        for level in levels:
            fill = max(0, min(8, level - row * 8))
            cells.append(BLOCKS[fill] if fill or row else "▁")
        rows.append("".join(cells))
    return rows


def clock_text(seconds: float | None) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour); '--:--' when unknown."""
    if seconds is None or seconds < 0:
        return "--:--"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def gib(value: int | None) -> str:
    """Bytes as GiB with one decimal, '?' when unknown."""
    return "?" if value is None else f"{value / 2**30:.1f}"
