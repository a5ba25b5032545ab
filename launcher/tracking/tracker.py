"""The tracking thread: opens the --track writers, logs each new round or epoch, keeps tracking.json."""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fedcore.errors import UsageError
from fedcore.rundir import CONFIG, write_json_atomic
from launcher.tracking.feed import Point, check_installed, hyperparameters, parse_track, point
from launcher.tracking.writers import Writer, open_writer

STATE = "tracking.json"  # per backend: its run id (W&B, MLflow) and the last step it logged
CLOSE_TIMEOUT = 60.0  # seconds the run's end waits for the writers to flush and finish

Opener = Callable[[str, Path, dict[str, Any], dict[str, Any]], Writer]


def backends(track: list[str] | None, resumed: Path | None, mode: str) -> tuple[str, ...]:
    """The backends of this launch: --track's, and a resumed run's own (the same tracked runs
    go on); each library checked before anything starts."""
    names = parse_track(track)
    if resumed is not None:
        names = tuple(dict.fromkeys((*read_state(resumed), *names)))
    if names and mode == "join":
        raise UsageError("--track logs the run where its SuperLink is: drop --track with --join "
                         "(use it with --serve)")
    check_installed(names)
    return names


def read_state(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


class Tracking:
    """Fed the run's metrics records by the supervisor; logs their rounds or epochs in a thread
    of its own, so a slow library never holds up the supervision loop. A writer that fails is
    dropped with a warning (drained by `notices()`); the run goes on."""

    def __init__(self, run_dir: Path, names: tuple[str, ...], opener: Opener = open_writer) -> None:
        self.run_dir = run_dir
        self.names = names
        self.opener = opener
        self._queue: queue.Queue[Point | None] = queue.Queue()
        self._notices: deque[str] = deque()
        self._reason = "completed"
        self._thread = threading.Thread(target=self._work, name="tracking", daemon=True)
        self._started = False

    def feed(self, records: Iterable[dict[str, Any]]) -> None:
        """metrics.jsonl records as they are read; all but rounds and epochs are passed over."""
        if not self._started:
            self._thread.start()
            self._started = True
        for record in records:
            p = point(record)
            if p is not None:
                self._queue.put(p)

    def notices(self) -> list[str]:
        """Warnings since the last call (a writer that could not open or log)."""
        out = []
        while self._notices:
            out.append(self._notices.popleft())
        return out

    def close(self, reason: str, timeout: float = CLOSE_TIMEOUT) -> None:
        """Log what is queued, then finish each tracked run with the run's exit reason."""
        if not self._started:
            self.feed(())
        self._reason = reason
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._notices.append(f"tracking: still writing after {timeout:.0f} s; left behind")

    # -- the thread -----------------------------------------------------------------------------

    def _work(self) -> None:
        state = read_state(self.run_dir)
        writers = self._open(state)
        while (p := self._queue.get()) is not None:
            for name, writer in list(writers.items()):
                if p.step <= int(state[name].get("step", 0)):
                    continue  # logged before a --resume
                try:
                    writer.log(p)
                except Exception as exc:  # noqa: BLE001 - any library error drops that writer alone
                    self._drop(writers, name, "log", exc)
                    continue
                state[name]["step"] = p.step
            self._save(state)
        for name, writer in writers.items():
            try:
                writer.close(self._reason)
            except Exception as exc:  # noqa: BLE001
                self._notices.append(f"tracking: {name} could not finish its run ({_short(exc)})")
        self._save(state)

    def _open(self, state: dict[str, dict[str, Any]]) -> dict[str, Writer]:
        try:
            config = json.loads((self.run_dir / CONFIG).read_text())
        except (OSError, ValueError):
            config = {}
        params = hyperparameters(config if isinstance(config, dict) else {})
        writers: dict[str, Writer] = {}
        for name in self.names:
            saved = state.get(name, {})
            try:
                writers[name] = self.opener(name, self.run_dir, params, saved)
            except Exception as exc:  # noqa: BLE001
                self._notices.append(f"tracking: {name} did not start ({_short(exc)}); the run goes on")
                continue
            state[name] = {**saved, **writers[name].state(), "step": int(saved.get("step", 0))}
        self._save(state)
        return writers

    def _drop(self, writers: dict[str, Writer], name: str, what: str, exc: Exception) -> None:
        writers.pop(name)
        self._notices.append(f"tracking: {name} could not {what} ({_short(exc)}); no more from it")

    def _save(self, state: dict[str, dict[str, Any]]) -> None:
        if state:
            write_json_atomic(self.run_dir / STATE, state)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
