"""The sweep's queue: each cell a child `fedlaunch --headless` run, started when its GPUs are free."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedcore.rundir import FileTail, json_records, read_jsonl
from launcher.supervision.procs import ANSI, LINE_SPLIT, STREAM_LIMIT, die_with_parent, sweep
from launcher.sweep.packing import GpuSlots
from launcher.sweep.state import CellState, SweepState

LOGS = "logs"
STOP_SECONDS = 120.0  # a cell stopped gracefully writes its summary; then SIGKILL
SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@dataclass(frozen=True)
class CellEvent:
    """One thing that happened to a cell: started, round, done, stopped or failed."""

    kind: str
    cell: str
    index: int  # 1-based position in the grid
    cells: int
    text: str = ""


def cell_finished(run_dir: Path) -> bool:
    """The run in `run_dir` ran all its rounds: its last `end` record says completed."""
    ends = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "end"]
    return bool(ends) and ends[-1].get("exit_reason") == "completed"


def can_resume(run_dir: Path) -> bool:
    return (run_dir / "config.json").is_file()


class SweepQueue:
    """Run the cells of `state` in grid order, several at once where `slots` says they fit.

    `argv(cell, gpus, resume)` is the child's command line; `need(cell)` its GPU bytes.
    """

    def __init__(self, state: SweepState, slots: GpuSlots,
                 argv: Callable[[CellState, str, bool], list[str]],
                 need: Callable[[CellState], int], env: dict[str, str],
                 on_event: Callable[[CellEvent], None], poll: float = 1.0,
                 retries: int = 1) -> None:
        self.state = state
        self.slots = slots
        self.argv = argv
        self.need = need
        self.env = env
        self.on_event = on_event
        self.poll = poll
        self.retries = retries  # a failed cell with a checkpoint goes on from it this often
        self.tries: dict[str, int] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.tails: dict[str, FileTail] = {}
        self.known: dict[int, psutil.Process] = {}
        self.stop_signal: int | None = None
        self.stop_at: float | None = None
        self.started = time.monotonic()

    def position(self, cell: CellState) -> int:
        return self.state.cells.index(cell) + 1

    def emit(self, kind: str, cell: CellState, text: str = "") -> None:
        self.on_event(CellEvent(kind, cell.name, self.position(cell), len(self.state.cells), text))

    def stop(self, sig: int) -> None:
        """Start no more cells and stop the running ones as `sig` stops a run (they keep their
        checkpoints); a second call kills what is left."""
        again = self.stop_signal is not None
        self.stop_signal = self.stop_signal or sig
        self.stop_at = self.stop_at or time.monotonic()
        for proc in self.procs.values():
            self._remember(proc)
            try:
                os.killpg(proc.pid, signal.SIGKILL if again else sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _remember(self, proc: asyncio.subprocess.Process) -> None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                self.known.setdefault(child.pid, child)
        except psutil.Error:
            pass

    async def run(self) -> int:
        """Run to the end of the grid or a stop; the exit code of the sweep."""
        for cell in self.state.cells:  # a cell that finished just before a stop was recorded
            if cell.state != "done" and cell_finished(self.state.cell_dir(cell)):
                cell.state, cell.exit_code = "done", 0
        self.state.save()
        tasks: dict[str, asyncio.Task[None]] = {}
        while True:
            if self.stop_signal is None:
                for cell in self.state.cells:
                    if cell.state == "done" or not self._due(cell, tasks):
                        continue
                    gpus = self.slots.take(cell.name, self.need(cell))
                    if gpus is None:
                        break  # grid order: the next cell waits for room
                    self.tries[cell.name] = self.tries.get(cell.name, 0) + 1
                    tasks[cell.name] = asyncio.create_task(self._run_cell(cell, gpus))
            live = [t for t in tasks.values() if not t.done()]
            if not live:
                break
            await asyncio.wait(live, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
            self._progress()
            for name in [n for n, t in tasks.items() if t.done() and n not in self.procs]:
                tasks[name].result()
            if self.stop_at is not None and time.monotonic() - self.stop_at > STOP_SECONDS:
                self.stop(signal.SIGKILL)  # cells that did not stop in time
                self.stop_at = time.monotonic()
        self._progress()
        sweep(list(self.known.values()))
        self.state.save()
        if self.stop_signal is not None:
            return SIGNAL_EXIT.get(self.stop_signal, 130)
        return 1 if any(c.state == "failed" for c in self.state.cells) else 0

    def _due(self, cell: CellState, tasks: dict[str, asyncio.Task[None]]) -> bool:
        """Not yet run by this queue; or failed (not for bad input) with a checkpoint to go on
        from, and retries left: a run that died of a passing cause (a machine under load)."""
        task = tasks.get(cell.name)
        if task is None:
            return True
        return (task.done() and cell.state == "failed" and cell.exit_code not in (None, 2)
                and can_resume(self.state.cell_dir(cell))
                and self.tries.get(cell.name, 0) <= self.retries)

    async def _run_cell(self, cell: CellState, gpus: str) -> None:
        run_dir = self.state.cell_dir(cell)
        resume = can_resume(run_dir)
        log_path = self.state.path / LOGS / f"{cell.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cell.state, cell.gpus, cell.exit_code = "running", gpus, None
        cell.attempts += 1
        argv = self.argv(cell, gpus, resume)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=self.env, start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()), limit=STREAM_LIMIT)
        except OSError as exc:
            cell.state, cell.exit_code = "failed", None
            self.slots.release(cell.name)
            self.state.save()
            self.emit("failed", cell, f"cannot start: {exc}")
            return
        self.procs[cell.name] = proc
        if self.stop_signal is not None:  # the stop came while the child was starting
            self._remember(proc)
            try:
                os.killpg(proc.pid, self.stop_signal)
            except (ProcessLookupError, PermissionError):
                pass
        self.tails[cell.name] = FileTail(run_dir / "metrics.jsonl")
        self.state.save()
        where = "CPU" if gpus == "cpu" else f"GPU {gpus}"
        how = f"from its checkpoint on {where}" if resume else f"on {where}"
        self.emit("started", cell, f"{how} -> {run_dir} (log {log_path})")
        last: list[str] = []
        assert proc.stdout is not None
        with log_path.open("a", buffering=1, errors="replace") as log:
            pending = ""
            while chunk := await proc.stdout.read(65536):
                pending += chunk.decode(errors="replace")
                *lines, pending = LINE_SPLIT.split(pending)
                for line in (ANSI.sub("", x).rstrip() for x in lines):
                    if line:
                        log.write(line + "\n")
                        last = [*last[-4:], line]
                self._remember(proc)
        code = await proc.wait()
        self._progress()
        del self.procs[cell.name]
        self.slots.release(cell.name)
        cell.exit_code = code
        if code == 0 and cell_finished(run_dir):
            cell.state = "done"
            best = "-" if cell.best_accuracy is None else f"{cell.best_accuracy:.4f}"
            self.emit("done", cell, f"{cell.round} rounds, best accuracy {best}")
        elif self.stop_signal is not None and code in (0, 129, 130, 143):
            cell.state = "stopped"
            self.emit("stopped", cell, f"at round {cell.round}; `fedlaunch sweep --resume "
                      f"{self.state.path}` goes on from its checkpoint")
        else:
            cell.state = "failed"
            tail = last[-1] if last else "no output"
            self.emit("failed", cell, f"exit {code}: {tail} (log {log_path})")
        self.state.save()

    def _progress(self) -> None:
        """Each running cell's round and accuracy, from the new lines of its metrics.jsonl."""
        for name, tail in list(self.tails.items()):
            cell = next(c for c in self.state.cells if c.name == name)
            rounds = []
            for record in json_records(tail.lines()):
                if record.get("event") in ("start", "round_start") and record.get("total"):
                    cell.total = int(record["total"])
                if record.get("event") == "round" and isinstance(record.get("accuracy"), float | int):
                    cell.round = int(record.get("round", cell.round))
                    cell.accuracy = float(record["accuracy"])
                    best = cell.best_accuracy
                    cell.best_accuracy = cell.accuracy if best is None else max(best, cell.accuracy)
                    rounds.append(cell.round)
            if rounds:
                self.state.save()
                acc = "-" if cell.accuracy is None else f"{cell.accuracy:.4f}"
                self.emit("round", cell, f"{cell.round}/{cell.total or '?'} accuracy {acc}")
            if name not in self.procs:
                del self.tails[name]
