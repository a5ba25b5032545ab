"""The GPU panel: utilisation, memory and recent history of each GPU the run uses."""

from __future__ import annotations

from rich.text import Text

from launcher.tui.charts import bar, gib, sparkline
from launcher.tui.panel import StatePanel
from launcher.tui.state import GpuView, RunState

CPU_MODE = "CPU mode: no NVIDIA GPU in use"


def util_style(util: int | None) -> str:
    if util is None:
        return "dim"
    return "green" if util >= 60 else "yellow" if util >= 20 else "red"


def cpu_only(state: RunState) -> bool:
    """True in CPU mode: the launcher said so, or no GPU is read, or every client is on the CPU."""
    if state.cpu_mode:
        return True
    if state.gpu_seen:
        return not state.gpus
    gpus = list(state.run.client_gpus.values()) if state.run is not None else []
    return bool(gpus) and all(g is None for g in gpus)


def short_name(name: str) -> str:
    return name.removeprefix("NVIDIA ").removeprefix("GeForce ")


class GpuPanel(StatePanel):
    """Three lines per GPU when there is room, one line per GPU when there is not."""

    def render(self) -> Text:
        state = self._state
        if state is not None and cpu_only(state):
            return Text(CPU_MODE, "bold")
        if state is None or not state.gpus:
            return Text("waiting for GPU readings…", "dim")
        width, height = max(self.content_size.width, 20), max(self.content_size.height, 1)
        views = [state.gpus[i] for i in sorted(state.gpus)]
        roomy = 3 * len(views) <= height
        lines = [self._roomy(v, width) if roomy else self._compact(v, width) for v in views]
        if len(lines) > height:
            hidden = len(lines) - (height - 1)
            lines = [*lines[: height - 1], Text(f"+{hidden} more GPUs", "dim")]
        return Text("\n").join(lines)

    @staticmethod
    def _roomy(view: GpuView, width: int) -> Text:
        s = view.sample
        util = s.utilization
        text = Text(f"GPU {s.index} ", "bold")
        text.append(s.name)
        text.append(f"  {len(s.pids)} {'pid' if len(s.pids) == 1 else 'pids'}\n", "dim")
        memory = f"  {gib(s.memory_used)}/{gib(s.memory_total)} GiB"
        percent = f" {util:3d}%" if util is not None else "   ?%"
        bar_width = max(4, width - len(percent) - len(memory))
        text.append(bar((util or 0) / 100, bar_width), util_style(util))
        text.append(percent)
        text.append(memory + "\n")
        text.append(sparkline(list(view.history), width, 0, 100), "cyan")
        return text

    @staticmethod
    def _compact(view: GpuView, width: int) -> Text:
        s = view.sample
        util = s.utilization
        head = f"GPU{s.index} {short_name(s.name)[:10]} " if width >= 50 else f"GPU{s.index} "
        percent = f" {util:3d}%" if util is not None else "   ?%"
        memory = f" {gib(s.memory_used)}/{gib(s.memory_total)}G {len(s.pids)}p "
        spark_width = max(0, (width - len(head) - len(percent) - len(memory)) // 2)
        bar_width = max(3, width - len(head) - len(percent) - len(memory) - spark_width)
        text = Text(head, "bold")
        text.append(bar((util or 0) / 100, bar_width), util_style(util))
        text.append(percent)
        text.append(memory)
        text.append(sparkline(list(view.history), spark_width, 0, 100), "cyan")
        return text
