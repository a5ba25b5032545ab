"""The metrics panel: test accuracy and loss per round as small column charts."""

from __future__ import annotations

from rich.text import Text

from launcher.tui.charts import chart_rows
from launcher.tui.panel import StatePanel

AXIS = 6  # cells right of a chart for its scale label
MAX_CELLS = 6  # widest column of one round


class MetricsPanel(StatePanel):
    """Accuracy (0..1) over loss (0..max), one column per round, newest on the right."""

    def render(self) -> Text:
        state = self._state
        if state is None or not state.rounds:
            return Text("no round evaluated yet" if state is None or state.unit == "round"
                        else "no epoch evaluated yet", "dim")
        width = max(self.content_size.width, 12)
        chart_height = max(self.content_size.height, 4) - 2
        rows, loss_rows = max(1, chart_height - chart_height // 2), max(1, chart_height // 2)
        last = state.rounds[-1]
        best = max(state.rounds, key=lambda r: r.accuracy)
        roomy = width >= 44
        slots = max(state.total, len(state.rounds))
        text = Text("accuracy " if roomy else "acc ", "bold")
        text.append(f"{last.accuracy:.4f}", "bold green")
        where = f"{state.unit} {best.round}" if roomy else f"{state.unit[0]}{best.round}"
        text.append(f"  best {best.accuracy:.4f} ({where})\n")
        accuracy = [r.accuracy for r in state.rounds]
        self._chart(text, accuracy, width, rows, 1.0, "green", slots)
        text.append("\nloss ", "bold")
        text.append(f"{last.loss:.4f}", "bold yellow")
        if last.train_loss is not None:
            text.append(f"  {'train loss' if roomy else 'train'} {last.train_loss:.4f}")
        text.append("\n")
        losses = [r.loss for r in state.rounds]
        self._chart(text, losses, width, loss_rows, max(losses), "yellow", slots)
        return text

    @staticmethod
    def _chart(text: Text, values: list[float], width: int, rows: int, top: float, style: str,
               slots: int) -> None:
        """Each round gets an equal share of the width, so the chart fills up as the run goes."""
        chart_width = max(4, width - AXIS)
        cells = max(1, min(MAX_CELLS, chart_width // max(slots, 1)))
        shown = values[-(chart_width // cells):]
        lines = chart_rows([v for v in shown for _ in range(cells)], chart_width, rows, 0.0, top)
        for n, line in enumerate(lines):
            if n:
                text.append("\n")
            text.append(line.ljust(chart_width), style)
            if n == 0:
                text.append(f" {top:.2g}"[:AXIS], "dim")
            elif n == len(lines) - 1:
                text.append(" 0", "dim")
