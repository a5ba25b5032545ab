"""The clients table: one row per client, its state and where it stands in the round."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from launcher.tui.state import ClientRow, RunState

COLUMNS = (
    ("client", "client"),
    ("gpu", "GPU"),
    ("gpu_memory", "GPU mem"),  # only once NVML tells a process's memory (see RunState)
    ("state", "state"),
    ("round", "round"),
    ("epoch", "epoch"),
    ("batch", "batch"),
    ("samples", "samples"),
    ("train_loss", "train loss"),
    ("restarts", "restarts"),
)
STATE_STYLE = {
    "training": "green",
    "evaluating": "cyan",
    "waiting": "dim",
    "replied": "dim",
    "starting": "dim",
    "connected": "",
    "stopped": "dim",
    "restarting": "bold yellow",
    "failed": "bold red",
}
FAILED_STYLE = "bold red"


def cell_values(row: ClientRow, state: RunState) -> dict[str, str]:
    """The text of each column for one client, as the user reads it."""
    local = state.run is not None and state.run.mode == "local"
    gpu = "remote" if row.remote else (
        ("cpu" if row.gpu is None else str(row.gpu)) if row.gpu_known else "-")
    return {
        "client": "local" if local else str(row.client),
        "gpu": gpu,
        "gpu_memory": memory_text(row.gpu_memory),
        "state": row.state,
        "round": str(row.round) if row.round else "-",
        "epoch": f"{row.epoch}/{row.epochs}" if row.epochs else "-",
        "batch": f"{row.batch}/{row.batches}" if row.batches else "-",
        "samples": str(row.samples) if row.samples else "-",
        "train_loss": "-" if row.train_loss is None else f"{row.train_loss:.4f}",
        "restarts": str(row.restarts),
    }


def memory_text(num_bytes: int | None) -> str:
    """GPU memory as the clients table shows it: `812 MiB`, `1.4 GiB`, or `-` when unknown."""
    if num_bytes is None:
        return "-"
    if num_bytes < 2**30:
        return f"{num_bytes / 2**20:.0f} MiB"
    return f"{num_bytes / 2**30:.1f} GiB"


def shown_columns(state: RunState) -> tuple[tuple[str, str], ...]:
    return tuple(c for c in COLUMNS if c[0] != "gpu_memory" or state.memory_column)


def cell_text(key: str, value: str, row: ClientRow) -> Text:
    """A cell with a one-space gutter; a failed client's whole row is red."""
    if row.state == "failed":
        style = FAILED_STYLE
    elif key == "state":
        style = STATE_STYLE.get(row.state, "")
    elif key == "restarts" and row.restarts:
        style = "yellow"
    else:
        style = ""
    return Text(f" {value}", style=style)


class ClientsTable(DataTable[Text]):
    """Redraws only the rows whose clients changed since the last refresh."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="none", zebra_stripes=False, cell_padding=0, **kwargs)
        self._shown: dict[tuple[int, str], tuple[str, str]] = {}  # (client, column) -> (text, style)
        self._columns: tuple[tuple[str, str], ...] = ()

    def on_mount(self) -> None:
        self._set_columns(shown_columns(RunState()))

    def _set_columns(self, columns: tuple[tuple[str, str], ...]) -> None:
        self.clear(columns=True)
        self._columns = columns
        for key, label in columns:
            self.add_column(Text(f" {label}"), key=key)

    def on_resize(self) -> None:
        self.cell_padding = 1 if self.size.width >= 100 else 0

    def show(self, state: RunState, clients: set[int], relayout: bool) -> None:
        """Rebuild every row on `relayout`, else touch only the cells whose text or style changed."""
        if relayout:
            if shown_columns(state) != self._columns:
                self._set_columns(shown_columns(state))
            self.clear()
            self._shown.clear()
            for client in sorted(state.clients):
                cells = self._cells(state.clients[client], state)
                self.add_row(*cells, key=str(client))
                for (key, _), text in zip(self._columns, cells, strict=True):
                    self._shown[client, key] = (text.plain, str(text.style))
            return
        for client in sorted(clients):
            row = state.clients.get(client)
            if row is None:
                continue
            for (key, _), text in zip(self._columns, self._cells(row, state), strict=True):
                shown = (text.plain, str(text.style))
                if self._shown.get((client, key)) == shown:
                    continue
                self._shown[client, key] = shown
                wider = text.cell_len > self.columns[ColumnKey(key)].content_width
                self.update_cell(str(client), key, text, update_width=wider)

    def _cells(self, row: ClientRow, state: RunState) -> list[Text]:
        values = cell_values(row, state)
        return [cell_text(key, values[key], row) for key, _ in self._columns]
