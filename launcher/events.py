"""Typed events a run publishes, and the bus that hands them to every consumer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from launcher.kinds import ProcessRole, RunMode

ClientState = Literal[
    "starting", "connected", "waiting", "training", "evaluating", "restarting", "failed", "stopped"
]
Mode = RunMode  # federated, local or join


@dataclass(frozen=True)
class RunStarted:
    """The plan is fixed and processes are about to start."""

    run_name: str
    mode: Mode
    model: str
    dataset: str
    partition: str
    total: int  # rounds (federated) or epochs (local); 0 when unknown here (join)
    num_clients: int  # 1 trainer for a local run
    out_dir: str
    started_at: float  # time.time()
    client_gpus: dict[int, int | None] = field(default_factory=dict)  # partition id: physical GPU, None = CPU
    unplaced: tuple[int, ...] = ()  # pooled clients whose GPU is their task's worker's (several GPUs)


@dataclass(frozen=True)
class ProcessStarted:
    """A child process is running; `client` is its partition id for SuperNodes."""

    name: str
    pid: int
    role: ProcessRole  # what each means: launcher.supervision.roles
    gpu: int | None = None
    client: int | None = None


@dataclass(frozen=True)
class ProcessExited:
    """A child process ended; `expected` is False when it died on its own."""

    name: str
    returncode: int | None
    expected: bool
    restarts: int = 0  # restarts it had before this exit
    will_restart: bool = False
    client: int | None = None
    log_tail: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogLine:
    """One line a child printed (also written to logs/<name>.log)."""

    name: str
    text: str
    echo: bool = True  # printed headless too; False: the TUI's log pane only (pooled clients)


@dataclass(frozen=True)
class ClientProgress:
    """Where one client stands inside a round, from its progress file."""

    client: int
    state: ClientState
    round: int = 0
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    samples: int = 0
    train_loss: float | None = None
    gpu: int | None = None
    error: str | None = None  # e.g. "out of memory", with `detail`
    detail: str = ""


@dataclass(frozen=True)
class RoundStarted:
    """A round (or an epoch of a local run) began."""

    round: int
    total: int


@dataclass(frozen=True)
class RoundFinished:
    """A round (or local epoch) ended and the global model was evaluated."""

    round: int
    total: int
    accuracy: float
    loss: float
    train_loss: float | None
    replies: int
    seconds: float
    best_accuracy: float
    clients: tuple[int, ...] = ()  # partition ids that replied, on this machine or another
    rejected: int = 0  # replies the server checked and dropped (fedcore.replies)
    kept_model: str = ""  # why the round's aggregate was not taken; "" when it was


@dataclass(frozen=True)
class GpuSample:
    """One NVML reading of one physical GPU."""

    index: int
    name: str
    utilization: int | None  # percent; None when NVML cannot tell
    memory_used: int | None  # bytes; None when NVML cannot tell
    memory_total: int | None  # bytes
    pids: tuple[int, ...] = ()  # host pids with a compute context on it
    process_memory: dict[int, int | None] = field(default_factory=dict)  # pid: bytes, None = unknown


@dataclass(frozen=True)
class GpuStats:
    """A reading of every GPU the run uses; empty in CPU mode."""

    samples: tuple[GpuSample, ...]
    cpu_mode: bool = False
    # GPU memory each of the run's processes holds with its descendants, by NVML's process list:
    # process name ("client-3", "worker-0") -> bytes, None where NVML lists it but cannot tell.
    held: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerInfo:
    """One pool worker as the client host last reported it (pool.json)."""

    name: str
    gpu: str  # the physical (NVML) id of its GPU, as the plan shows it, or "cpu"
    state: str  # "connecting", "idle", "starting", "training", "evaluating"
    client: int | None  # the client whose task it runs now
    images_per_s: float
    tasks: int


@dataclass(frozen=True)
class PoolStats:
    """The worker pool now: its workers and the clients whose tasks wait for one."""

    workers: tuple[WorkerInfo, ...]
    queued: tuple[int, ...] = ()
    failed_clients: tuple[int, ...] = ()


@dataclass(frozen=True)
class Notice:
    """Something the user should read: a warning or a state change."""

    level: Literal["info", "warning", "error"]
    text: str


@dataclass(frozen=True)
class RunFinished:
    """The run ended; processes are stopped and summary.json is written."""

    exit_reason: str  # "completed", "interrupted", "terminated", "hangup", "failed"
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)
    failed_process: str | None = None
    log_tail: tuple[str, ...] = ()


Event = (
    RunStarted
    | ProcessStarted
    | ProcessExited
    | LogLine
    | ClientProgress
    | RoundStarted
    | RoundFinished
    | GpuStats
    | PoolStats
    | Notice
    | RunFinished
)

Subscriber = Callable[[Event], None]


class EventBus:
    """Hands each published event to every subscriber, in the order they subscribed."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            subscriber(event)
