"""What the run says besides exits, put on the bus: its records, the GPUs, the tracked runs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from launcher.events import ClientProgress, EventBus, Notice
from launcher.planning.gpus import Nvml
from launcher.planning.plan import Plan
from launcher.supervision.follow import RunFollower
from launcher.supervision.observe import gpu_stats, oom_text, pid_namespace_note
from launcher.supervision.procs import ManagedProcess
from launcher.tracking.tracker import Tracking


class RunPublisher:
    """Turns metrics.jsonl's new records, GPU readings and --track's feed into bus events, and
    keeps the first out-of-memory client's text (the run fails on it)."""

    def __init__(self, plan: Plan, bus: EventBus, follower: RunFollower, nvml: Nvml | None,
                 tracking: Tracking | None) -> None:
        self.plan = plan
        self.bus = bus
        self.follower = follower
        self.nvml = nvml
        self.tracking = tracking  # --track: the metrics records go on to TensorBoard, W&B, MLflow
        self.out_of_memory: str | None = None  # "<client> <text>" of the first client's OOM
        self._tracked = 0  # how many of the follower's records the tracking has been given
        self._pid_note_said = False  # NVML lists none of the run's pids (a container): said once

    def records(self) -> None:
        """The run folder's new records as events, fed to the tracking too."""
        events = self.follower.poll()
        self._feed_tracking()
        for event in events:
            self.bus.publish(event)
            if isinstance(event, ClientProgress) and event.error == "out of memory":
                text = oom_text(self.plan, self.nvml, event)
                if self.out_of_memory is None:
                    self.out_of_memory = text
                else:
                    self.bus.publish(Notice("error", text))

    def gpus(self, processes: Mapping[str, ManagedProcess]) -> None:
        """The GPUs' reading, with the memory each client (or worker) process tree holds."""
        owners = {pid: name for name, proc in processes.items()
                  for pid in (proc.pid, *proc.known) if pid is not None}
        stats = gpu_stats(self.plan, self.nvml, owners)
        self.bus.publish(stats)
        if self._pid_note_said or stats.held or not stats.samples or not any(  # once a round trained
                r.get("event") == "round" for r in self.follower.records):
            return
        note = pid_namespace_note(stats.samples, owners)
        if note is not None:
            self._pid_note_said = True
            self.bus.publish(Notice("info", note))

    async def close_tracking(self, reason: str) -> None:
        """Finish the tracked runs (in a thread: W&B waits for its service to write the file)."""
        if self.tracking is None:
            return
        self._feed_tracking()
        await asyncio.to_thread(self.tracking.close, reason)
        for text in self.tracking.notices():
            self.bus.publish(Notice("warning", text))

    def _feed_tracking(self) -> None:
        if self.tracking is None:
            return
        self.tracking.feed(self.follower.records[self._tracked:])
        self._tracked = len(self.follower.records)
        for text in self.tracking.notices():
            self.bus.publish(Notice("warning", text))
