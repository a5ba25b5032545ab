"""The worker pool on screen: a table of workers and a one-line summary of many clients."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.text import Text
from textual.widgets import DataTable, Static

from launcher.events import WorkerInfo
from launcher.tui.clients import STATE_STYLE, memory_text
from launcher.tui.state import RunState

COLUMNS = (("worker", "worker"), ("gpu", "GPU"), ("gpu_memory", "GPU mem"), ("client", "client"),
           ("state", "state"), ("rate", "images/s"), ("tasks", "tasks"))
WORKER_STYLE = {"training": "green", "evaluating": "cyan", "idle": "dim", "starting": "yellow",
                "connecting": "dim"}
SHOWN_IDS = 12  # sampled client ids listed in the summary line before "+N"


def worker_cells(worker: WorkerInfo, held: dict[str, int | None] | None = None) -> list[Text]:
    values = {
        "worker": worker.name,
        "gpu": worker.gpu,
        "gpu_memory": memory_text((held or {}).get(worker.name)),
        "client": "-" if worker.client is None else str(worker.client),
        "state": worker.state,
        "rate": f"{worker.images_per_s:,.0f}" if worker.images_per_s else "-",
        "tasks": str(worker.tasks),
    }
    return [Text(f" {values[key]}", style=WORKER_STYLE.get(worker.state, "") if key == "state"
                 else "") for key, _ in COLUMNS]


class WorkersTable(DataTable[Text]):
    """One row per pool worker: its GPU, the client it trains now, its state and speed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="none", zebra_stripes=False, cell_padding=0, **kwargs)

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(Text(f" {label}"), key=key)

    def on_resize(self) -> None:
        self.cell_padding = 1 if self.size.width >= 100 else 0

    def show(self, state: RunState) -> None:
        self.set_class(state.pool is not None, "-visible")
        if state.pool is None:
            return
        self.clear()
        for worker in state.pool.workers:
            self.add_row(*worker_cells(worker, state.held), key=worker.name)


def ids_text(ids: list[int]) -> str:
    shown = ", ".join(str(c) for c in ids[:SHOWN_IDS])
    return shown + (f" +{len(ids) - SHOWN_IDS}" if len(ids) > SHOWN_IDS else "")


def clients_summary(state: RunState) -> Text:
    """`N clients: 3 training, 90 waiting ... | round R sampled: ids | queued: ids`."""
    rows = state.clients.values()
    counts = Counter(row.state for row in rows)
    text = Text(f"{len(state.clients)} clients: ", style="bold")
    for i, (name, count) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        text.append(", " if i else "")
        text.append(f"{count} {name}", style=STATE_STYLE.get(name, ""))
    current = state.current_round
    queued = set(state.pool.queued) if state.pool is not None else set()
    if current:  # a queued client has not written this round yet (simulation: never ran at all)
        sampled = sorted({row.client for row in rows if row.round == current} | queued)
        text.append(f"  |  round {current} sampled ({len(sampled)}): ", style="bold")
        text.append(ids_text(sampled) or "-")
    if state.pool is not None and state.pool.queued:
        text.append("  |  waiting for a worker: ", style="bold")
        text.append(ids_text(list(state.pool.queued)), style="yellow")
    if state.pool is not None and state.pool.failed_clients:
        text.append("  |  failed: ", style="bold red")
        text.append(ids_text(list(state.pool.failed_clients)), style="red")
    return text


class ClientsSummary(Static):
    """Counts of clients by state and this round's sampled clients, above the full table."""

    def show(self, state: RunState) -> None:
        self.set_class(state.pool is not None, "-visible")
        if state.pool is not None:
            self.update(clients_summary(state))
