"""What the supervisor watches besides exits: GPUs, and the text of an out-of-memory client."""

from __future__ import annotations

from launcher.events import ClientProgress, GpuSample, GpuStats
from launcher.planning.gpus import Nvml, other_pid_namespace
from launcher.planning.plan import Plan


def gpu_stats(plan: Plan, nvml: Nvml | None, owners: dict[int, str] | None = None) -> GpuStats:
    """A reading of the run's GPUs; `owners` (pid -> the name of the run's process it is or
    descends from) turns NVML's per-process memory into memory per process of the run."""
    if nvml is None or not plan.placement.gpus:
        return GpuStats((), cpu_mode=True)
    samples: list[GpuSample] = nvml.sample([g.index for g in plan.placement.gpus])
    return GpuStats(tuple(samples), held=held_by(samples, owners or {}))


def held_by(samples: list[GpuSample], owners: dict[int, str]) -> dict[str, int | None]:
    """Bytes of GPU memory per owner, summed over its pids on every GPU (None: NVML lists the
    owner's processes but cannot tell their memory, e.g. MIG without root)."""
    held: dict[str, int | None] = {}
    for sample in samples:
        for pid, used in sample.process_memory.items():
            owner = owners.get(pid)
            if owner is None:
                continue
            if used is None:
                held.setdefault(owner, None)
            else:
                held[owner] = (held.get(owner) or 0) + used
    return held


def pid_namespace_note(samples: tuple[GpuSample, ...], owners: dict[int, str]) -> str | None:
    """A note when NVML lists processes on the run's GPUs but none of the run's (a container)."""
    listed = {pid for sample in samples for pid in sample.process_memory}
    return other_pid_namespace(set(owners), listed)


def oom_text(plan: Plan, nvml: Nvml | None, event: ClientProgress) -> str:
    """Which client, which GPU and how full it is, and what to change."""
    where = "the CPU" if event.gpu is None else f"GPU {event.gpu}"
    if event.gpu is not None and nvml is not None:
        for sample in nvml.sample([event.gpu]):
            if sample.memory_used is not None and sample.memory_total is not None:
                where += (f" ({sample.name}, {sample.memory_used / 2**30:.1f} of "
                          f"{sample.memory_total / 2**30:.1f} GiB in use)")
    if plan.pooled:  # the worker that trained it holds the memory, with the others on its GPU
        workers = sum(1 for g in plan.worker_gpus if g == event.gpu)
        share = (f"{workers} worker(s) training {plan.pool_clients} clients share it; use fewer "
                 "clients per GPU (fewer --workers or more --gpus)")
    else:
        share = (f"{sum(1 for g in plan.client_gpus.values() if g == event.gpu)} client(s) share "
                 "it; use fewer clients per GPU (more --gpus or fewer --clients)")
    return (f"client-{event.client} ran out of memory on {where} in round {event.round}: "
            f"{event.detail}. {share} or a smaller --batch-size (now {plan.cfg.batch_size})")
