"""Which GPUs a sweep cell gets: cells share a GPU while their clients fit in its free memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.planning.gpus import GpuInfo


@dataclass
class GpuSlots:
    """A memory budget per physical GPU, read once from NVML (`Nvml.devices()`) at the start.

    `take` gives a cell the GPU with the most room left that holds its whole need (its clients'
    footprint, as the launcher estimates it); a GPU whose free memory NVML cannot read takes one
    cell at a time. No GPUs: the CPU, one cell at a time. A cell too big for any one GPU runs
    alone on all of them, spread by the launcher's own placement.
    """

    gpus: list[GpuInfo]
    max_parallel: int | None = None
    room: dict[int, int | None] = field(init=False)
    held: dict[str, tuple[tuple[int, ...], int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.room = {g.index: g.memory_free for g in self.gpus}

    @property
    def running(self) -> int:
        return len(self.held)

    def take(self, name: str, need: int) -> str | None:
        """The --gpus value for cell `name` (ids like "2", or "cpu"), or None: wait for a cell
        to finish."""
        if self.max_parallel is not None and self.running >= self.max_parallel:
            return None
        if not self.gpus:
            if self.held:
                return None
            self.held[name] = ((), 0)
            return "cpu"
        busy = {i for ids, _ in self.held.values() for i in ids}
        fits = [i for i, room in self.room.items()
                if (room is None and i not in busy) or (room is not None and room >= need)]
        if fits:
            best = max(fits, key=lambda i: (self.room[i] or 0, -i))
            if self.room[best] is not None:
                self.room[best] = (self.room[best] or 0) - need
            self.held[name] = ((best,), need)
            return str(best)
        if self.held:
            return None
        ids = tuple(g.index for g in self.gpus)  # too big for one GPU: all of them, alone
        self.held[name] = (ids, 0)
        for i in ids:
            self.room[i] = None if self.room[i] is None else 0
        return ",".join(str(i) for i in ids)

    def release(self, name: str) -> None:
        ids, need = self.held.pop(name, ((), 0))
        if len(ids) > 1 or (ids and need == 0):  # a whole-machine cell: restore the budget
            for gpu in self.gpus:
                if gpu.index in ids:
                    self.room[gpu.index] = gpu.memory_free
            return
        for i in ids:
            if self.room[i] is not None:
                self.room[i] = (self.room[i] or 0) + need
