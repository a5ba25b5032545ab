"""The log pane: every process's lines merged with a padded `name |` prefix, filterable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import RichLog

from launcher.tui.state import LAUNCHER, RunState

PALETTE = ("cyan", "green", "medium_purple1", "dodger_blue1", "bright_cyan", "spring_green2",
           "light_sky_blue1", "steel_blue1", "orange3", "turquoise2")  # no red: red means failure
LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "info": "", "out": ""}
REWRITE_LINES = 1_000  # lines redrawn when the filter changes
BATCH_LINES = 400  # most lines drawn per refresh; a flood shows its tail and a count (all are in logs/)


class LogPane(RichLog):
    """Follows the tail unless the user scrolled up; `only` keeps one process's lines."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=5_000, wrap=True, markup=False, highlight=False,
                         auto_scroll=True, **kwargs)
        self.only: str | None = None
        self._colours: dict[str, str] = {LAUNCHER: "bold white"}

    def on_mount(self) -> None:
        self._set_title()

    def colour(self, name: str) -> str:
        if name not in self._colours:
            self._colours[name] = PALETTE[(len(self._colours) - 1) % len(PALETTE)]
        return self._colours[name]

    def show(self, state: RunState) -> None:
        self._write(state.take_pending_logs(), state.name_width)

    def filter(self, state: RunState, only: str | None) -> None:
        """Show only `only`'s lines (None: all), redrawing the last lines kept."""
        self.only = only
        self._set_title()
        self.clear()
        state.take_pending_logs()
        kept = [e for e in state.logs if only is None or e[0] == only]
        self._write(kept[-REWRITE_LINES:], state.name_width)

    def _set_title(self) -> None:
        self.border_title = f"log: {self.only or 'all'}"

    def _write(self, entries: Iterable[tuple[str, str, str]], width: int) -> None:
        wanted = [e for e in entries if self.only is None or e[0] == self.only]
        lines = []
        if len(wanted) > BATCH_LINES:
            skipped = len(wanted) - BATCH_LINES
            lines.append(Text(f"… {skipped} lines not shown here (they are in the run's logs/)", "dim"))
            wanted = wanted[-BATCH_LINES:]
        for name, level, text in wanted:
            line = Text(name.ljust(width) + " | ", style=self.colour(name))
            body = Text.from_ansi(text) if "\x1b" in text else Text(text)
            if LEVEL_STYLE.get(level):
                body.stylize(LEVEL_STYLE[level])
            line.append_text(body)
            lines.append(line)
        if lines:
            following = self.scroll_y >= self.max_scroll_y - 1
            self.write(Text("\n").join(lines), scroll_end=following)
