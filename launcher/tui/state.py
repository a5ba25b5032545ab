"""What the view knows about a run, built only from launcher events (no Textual)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.events import (
    ClientProgress,
    Event,
    GpuSample,
    GpuStats,
    LogLine,
    Notice,
    PoolStats,
    ProcessExited,
    ProcessStarted,
    RoundFinished,
    RoundStarted,
    RunFinished,
    RunStarted,
)

LAUNCHER = "fedlaunch"  # the log prefix of the launcher's own notices
LOG_KEEP = 10_000
PENDING_KEEP = 2_000  # lines between two redraws of the log pane; older ones are skipped
GPU_HISTORY = 120


@dataclass
class ClientRow:
    """One row of the clients table."""

    client: int
    gpu: int | None = None
    gpu_known: bool = False
    remote: bool = False  # joined from another machine: known only by its replies
    state: str = "starting"
    round: int = 0
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    samples: int = 0
    train_loss: float | None = None
    restarts: int = 0
    error: str | None = None
    gpu_memory: int | None = None  # bytes its process (a pooled client: its worker) holds, by NVML

    def fraction(self) -> float:
        """How far this client is through its current round's local training, 0..1."""
        if not self.batches or not self.epochs:
            return 0.0
        done = (max(self.epoch, 1) - 1) * self.batches + self.batch
        return max(0.0, min(1.0, done / (self.epochs * self.batches)))


@dataclass
class GpuView:
    """The latest reading of one GPU and its recent utilisation."""

    sample: GpuSample
    history: deque[int] = field(default_factory=lambda: deque(maxlen=GPU_HISTORY))


@dataclass
class Failure:
    """A process that died for good, with the last lines it printed."""

    name: str
    tail: tuple[str, ...]


class RunState:
    """Folds events into what the panels show; `dirty` names the panels to redraw."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.run: RunStarted | None = None
        self.clients: dict[int, ClientRow] = {}
        self.process_client: dict[str, int] = {}
        self.client_process: dict[int, str] = {}
        self.current_round = 0
        self.round_started_at: float | None = None
        self.rounds: list[RoundFinished] = []
        self.gpus: dict[int, GpuView] = {}
        self.held: dict[str, int | None] = {}  # GPU memory per process name, by NVML
        self.memory_column = False  # shown once NVML has told the memory of one of the run's processes
        self.cpu_mode = False
        self.gpu_seen = False
        self.pool: PoolStats | None = None  # the worker pool's last report, when there is one
        self.logs: deque[tuple[str, str, str]] = deque(maxlen=LOG_KEEP)  # (name, level, text)
        self.pending_logs: deque[tuple[str, str, str]] = deque(maxlen=PENDING_KEEP)
        self.name_width = len(LAUNCHER)
        self.failure: Failure | None = None
        self.finished: RunFinished | None = None
        self.crash: str | None = None
        self.stopping = False
        self.last_notice: Notice | None = None
        self.dirty: set[str] = set()
        self.dirty_clients: set[int] = set()

    # -- derived values -------------------------------------------------------------------

    @property
    def unit(self) -> str:
        return "epoch" if self.run is not None and self.run.mode == "local" else "round"

    @property
    def total(self) -> int:
        return self.run.total if self.run is not None else 0

    @property
    def completed(self) -> int:
        return self.rounds[-1].round if self.rounds else 0

    @property
    def rejected(self) -> int:
        """Replies the server dropped as bad, over the whole run."""
        return sum(r.rejected for r in self.rounds)

    @property
    def best_accuracy(self) -> float | None:
        return max(r.accuracy for r in self.rounds) if self.rounds else None

    def elapsed(self) -> float | None:
        if self.run is None:
            return None
        if self.finished is not None and "wall_seconds" in self.finished.summary:
            return float(self.finished.summary["wall_seconds"])
        return max(0.0, self.clock() - self.run.started_at)

    def eta(self) -> float | None:
        """Mean round time times the rounds left, less the time the current round has run."""
        if not self.rounds or self.finished is not None or self.run is None:
            return None
        mean = sum(r.seconds for r in self.rounds) / len(self.rounds)
        left = mean * max(0, self.total - self.completed)
        if self.round_started_at is not None and self.current_round > self.completed:
            left -= max(0.0, self.clock() - self.round_started_at)
        return max(0.0, left)

    def progress(self) -> float:
        """Completed rounds plus the mean progress of clients inside the running round."""
        done = float(self.completed)
        if self.current_round > self.completed and self.finished is None:
            inside = [c.fraction() for c in self.clients.values() if c.round == self.current_round]
            if inside:
                done += sum(inside) / len(self.clients)
        return min(done, float(self.total)) if self.total else done

    def client_name(self, client: int) -> str:
        """The process name of client `client` (the local trainer for a local run)."""
        if client in self.client_process:
            return self.client_process[client]
        if self.run is not None and self.run.mode == "local":
            return "local"
        return f"client-{client}"

    # -- folding events ---------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def _row(self, client: int) -> ClientRow:
        row = self.clients.get(client)
        if row is None:
            row = self.clients[client] = ClientRow(client)
            self.dirty.add("clients-layout")
        self.dirty_clients.add(client)
        self.dirty.add("clients")
        return row

    def _on_RunStarted(self, event: RunStarted) -> None:
        self.run = event
        for client, gpu in event.client_gpus.items():
            row = self._row(client)
            row.gpu, row.gpu_known = gpu, client not in event.unplaced
        self.dirty |= {"header", "progress", "clients-layout", "metrics"}

    def _on_ProcessStarted(self, event: ProcessStarted) -> None:
        self._note_name(event.name)
        client = event.client if event.client is not None else (0 if event.role == "local" else None)
        if client is None:
            return
        self.process_client[event.name] = client
        self.client_process[client] = event.name
        row = self._row(client)
        row.gpu, row.gpu_known = event.gpu, True
        row.state, row.error = "starting", None
        if self.failure is not None and self.failure.name == event.name:
            self.failure = None

    def _on_ProcessExited(self, event: ProcessExited) -> None:
        client = event.client if event.client is not None else self.process_client.get(event.name)
        if not event.expected and not event.will_restart:
            self.failure = Failure(event.name, event.log_tail or self.tail_of(event.name))
            self.dirty.add("summary")
        if client is None:
            return
        row = self._row(client)
        row.restarts = max(row.restarts, event.restarts + event.will_restart)  # counting this one
        if event.will_restart:
            row.state = "restarting"
        elif not event.expected:
            row.state = "failed"
        elif row.state != "failed":
            row.state = "stopped"

    def _on_ClientProgress(self, event: ClientProgress) -> None:
        row = self._row(event.client)
        if row.state == "failed" and event.state != "failed":
            return  # a late progress file of a dead client
        row.state = event.state
        row.round, row.epoch, row.epochs = event.round, event.epoch, event.epochs
        row.batch, row.batches, row.samples = event.batch, event.batches, event.samples
        if event.train_loss is not None or event.state == "starting":
            row.train_loss = event.train_loss
        if event.gpu is not None:
            row.gpu, row.gpu_known = event.gpu, True
        row.error = event.error
        if self.run is not None and self.run.mode == "join":  # no server metrics here
            self.current_round = max(self.current_round, event.round)
        if event.round == self.current_round:
            self.dirty.add("progress")

    def _on_RoundStarted(self, event: RoundStarted) -> None:
        self.current_round = event.round
        self.round_started_at = self.clock()
        self.dirty |= {"progress", "header"}

    def _on_RoundFinished(self, event: RoundFinished) -> None:
        self.rounds = [r for r in self.rounds if r.round < event.round] + [event]
        self.current_round = max(self.current_round, event.round)
        self.dirty |= {"progress", "header", "metrics"}
        here = self.run.client_gpus if self.run is not None else {}
        for client in event.clients:  # a client on another machine is seen by its replies
            if client not in here and self.run is not None and self.run.mode == "federated":
                row = self._row(client)
                row.remote, row.state, row.round = True, "replied", event.round

    def _on_GpuStats(self, event: GpuStats) -> None:
        self.cpu_mode = event.cpu_mode
        self.gpu_seen = True
        seen = set()
        for sample in event.samples:
            view = self.gpus.get(sample.index)
            if view is None:
                view = self.gpus[sample.index] = GpuView(sample)
            view.sample = sample
            view.history.append(sample.utilization or 0)
            seen.add(sample.index)
        for index in set(self.gpus) - seen:
            del self.gpus[index]
        self.dirty.add("gpus")
        if event.held != self.held and self.pool is not None:
            self.dirty.add("workers")
        self.held = event.held
        if event.held and not self.memory_column:
            self.memory_column = True
            self.dirty.add("clients-layout")
        self._update_gpu_memory()

    def _update_gpu_memory(self) -> None:
        """Each client's GPU memory: its own process's, or, pooled, that of the worker training it."""
        training = {w.client: w.name for w in self.pool.workers} if self.pool is not None else {}
        for client, row in self.clients.items():
            name = training.get(client) or self.client_process.get(client)
            memory = self.held.get(name) if name is not None else None
            if memory != row.gpu_memory:
                row.gpu_memory = memory
                self.dirty_clients.add(client)
                self.dirty.add("clients")

    def _on_PoolStats(self, event: PoolStats) -> None:
        if self.pool is None:
            self.dirty.add("workers-layout")
        self.pool = event
        self.dirty |= {"workers", "clients"}
        self._update_gpu_memory()

    def _on_LogLine(self, event: LogLine) -> None:
        self._note_name(event.name)
        self.log(event.name, "out", event.text)

    def _on_Notice(self, event: Notice) -> None:
        if event.level != "info":
            self.last_notice = event
            self.dirty.add("header")
        self.log(LAUNCHER, event.level, event.text)

    def _on_RunFinished(self, event: RunFinished) -> None:
        self.finished = event
        for row in self.clients.values():
            if row.state not in ("failed", "stopped"):
                row.state = "stopped"
                self.dirty_clients.add(row.client)
        self.dirty.add("clients")
        if event.failed_process:
            tail = event.log_tail or self.tail_of(event.failed_process)
            self.failure = Failure(event.failed_process, tail)
        self.dirty |= {"header", "progress", "summary", "metrics"}

    # -- logs -------------------------------------------------------------------------------

    def _note_name(self, name: str) -> None:
        if len(name) > self.name_width:
            self.name_width = len(name)

    def log(self, name: str, level: str, text: str) -> None:
        for piece in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") or [""]:
            if piece or text == "":
                entry = (name, level, piece)
                self.logs.append(entry)
                self.pending_logs.append(entry)
        self.dirty.add("log")

    def tail_of(self, name: str, lines: int = 30) -> tuple[str, ...]:
        """The last lines `name` printed, from what the view has kept."""
        return tuple([t for n, _, t in self.logs if n == name][-lines:])

    def take_pending_logs(self) -> list[tuple[str, str, str]]:
        pending = list(self.pending_logs)
        self.pending_logs.clear()
        return pending
