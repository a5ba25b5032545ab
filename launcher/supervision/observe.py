"""What the supervisor watches besides exits: GPUs, and the text of an out-of-memory client."""

from __future__ import annotations

from launcher.events import ClientProgress, GpuSample, GpuStats
from launcher.planning.gpus import Nvml
from launcher.planning.plan import Plan


def gpu_stats(plan: Plan, nvml: Nvml | None) -> GpuStats:
    if nvml is None or not plan.placement.gpus:
        return GpuStats((), cpu_mode=True)
    samples: list[GpuSample] = nvml.sample([g.index for g in plan.placement.gpus])
    return GpuStats(tuple(samples))


def oom_text(plan: Plan, nvml: Nvml | None, event: ClientProgress) -> str:
    """Which client, which GPU and how full it is, and what to change."""
    where = "the CPU" if event.gpu is None else f"GPU {event.gpu}"
    if event.gpu is not None and nvml is not None:
        for sample in nvml.sample([event.gpu]):
            if sample.memory_used is not None and sample.memory_total is not None:
                where += (f" ({sample.name}, {sample.memory_used / 2**30:.1f} of "
                          f"{sample.memory_total / 2**30:.1f} GiB in use)")
    clients_here = sum(1 for g in plan.client_gpus.values() if g == event.gpu)
    return (f"client-{event.client} ran out of memory on {where} in round {event.round}: "
            f"{event.detail}. {clients_here} client(s) share it; use fewer clients per GPU "
            f"(more --gpus or fewer --clients) or a smaller --batch-size "
            f"(now {plan.cfg.batch_size})")
