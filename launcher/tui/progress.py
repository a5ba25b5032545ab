"""Round (or epoch) progress: a label `round r/R` and a bar."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from launcher.tui.state import RunState


class RoundProgress(Horizontal):
    """`round 3/10` (`epoch` for a local run) and a bar that moves inside a round too; once the
    server has dropped bad replies, their count: `round 3/10  2 rejected`."""

    def compose(self) -> ComposeResult:
        yield Label("round -/-", id="round-label")
        yield ProgressBar(total=1, show_eta=False, id="round-bar")

    def show(self, state: RunState) -> None:
        label = self.query_one("#round-label", Label)
        bar = self.query_one("#round-bar", ProgressBar)
        if state.run is None:
            label.update(f"{state.unit} -/-")
            return
        shown = max(state.current_round, state.completed)
        if not state.total:  # a join: the server decides how many rounds; show this one's progress
            label.update(f"{state.unit} {shown or '-'}/?")
            bar.update(total=1, progress=state.progress() - state.completed)
            return
        rejected = f"  {state.rejected} rejected" if state.rejected else ""
        label.update(f"{state.unit} {shown}/{state.total}{rejected}")
        bar.update(total=max(state.total, 1), progress=state.progress())
