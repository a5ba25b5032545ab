"""A panel drawn from the whole run state: it keeps the latest state and redraws on `show`."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from launcher.tui.state import RunState


class StatePanel(Static):
    """A Static whose `render` reads `self._state`, the state last given to `show`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state: RunState | None = None

    def show(self, state: RunState) -> None:
        self._state = state
        self.refresh()
