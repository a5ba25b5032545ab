"""Which physical GPU each client runs on, and the environment that pins it there."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fedcore.errors import UsageError
from launcher.planning.gpus import GpuInfo, Nvml

_IDS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class GpuRequest:
    """What --gpus asked for: "auto" | "all" | "cpu" | "ids" (then `ids` holds NVML GPU ids)."""

    kind: str
    ids: tuple[int, ...] = ()


def _bad(spec: str) -> UsageError:
    return UsageError(f"bad --gpus {spec!r}: use a comma list of GPU ids like 0,1, 'all' or 'cpu'")


def parse_gpus(spec: str | None) -> GpuRequest:
    """Read --gpus: None or "auto", "all", "cpu", or NVML GPU ids such as "0,1" or "0, 2"."""
    if spec is None:
        return GpuRequest("auto")
    word = spec.strip().lower()
    if word in ("auto", "all", "cpu"):
        return GpuRequest(word)
    parts = [part.strip() for part in word.split(",")]
    if not all(_IDS.fullmatch(part) for part in parts):
        raise _bad(spec)
    ids = tuple(int(part) for part in parts)
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        listed = ", ".join(str(i) for i in twice)
        raise UsageError(f"bad --gpus {spec!r}: GPU {listed} listed twice; name each GPU id once")
    return GpuRequest("ids", ids)


@dataclass(frozen=True)
class Placement:
    """The plan: GPUs in use (in the order listed; () = CPU mode) and each client's GPU id."""

    gpus: tuple[GpuInfo, ...]
    client_gpu: tuple[int | None, ...]  # physical NVML GPU id per client, None = CPU
    notes: tuple[str, ...] = ()  # one-line messages to show the user
    warnings: tuple[str, ...] = ()  # one-line problems the run may hit (e.g. memory)

    @property
    def cpu_mode(self) -> bool:
        return not self.gpus


def _gb(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.1f} GB"


def _join(ids: list[int] | tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in ids)


def _gpus_word(count: int) -> str:
    return "GPU" if count == 1 else "GPUs"


def _cpu(num_clients: int, notes: tuple[str, ...] = ()) -> Placement:
    return Placement(gpus=(), client_gpu=(None,) * num_clients, notes=notes)


def plan_placement(
    num_clients: int,
    request: GpuRequest,
    nvml: Nvml,
    *,
    per_client_bytes: int = 1_300_000_000,
    server_gpu_bytes: int = 0,
    parent_env: Mapping[str, str] | None = None,
    clients_per_gpu: int | None = None,
) -> Placement:
    """Spread clients round-robin over the requested GPUs and check that they fit in memory.

    Raises UsageError for GPU ids that do not exist. `parent_env` (default os.environ) is
    only read to warn that an inherited CUDA_VISIBLE_DEVICES is overridden per client.
    """
    if num_clients < 1:
        raise UsageError(f"--clients {num_clients}: need at least 1 client")
    if request.kind == "cpu":
        return _cpu(num_clients)  # no NVML call at all
    if request.kind not in ("auto", "all", "ids"):
        raise ValueError(f"unknown GpuRequest kind {request.kind!r}")

    found = nvml.devices()
    if request.kind == "ids":
        if not found:
            raise UsageError(
                f"--gpus {','.join(map(str, request.ids))}: no such GPU; "
                f"{nvml.unavailable_reason() or 'NVML found no GPU'}; use --gpus cpu"
            )
        by_id = {gpu.index: gpu for gpu in found}
        missing = [i for i in request.ids if i not in by_id]
        if missing:
            what = "no such GPU" if len(missing) == 1 else "no such GPUs"
            raise UsageError(
                f"--gpus {_join(missing).replace(' ', '')}: {what}; "
                f"this machine has {_gpus_word(len(by_id))} {_join(sorted(by_id))}"
            )
        listed = [by_id[i] for i in request.ids]
    else:
        if not found:
            reason = nvml.unavailable_reason() or "NVML found no GPU"
            return _cpu(num_clients, (f"{reason}: running on CPU",))
        listed = found

    if clients_per_gpu is not None:
        if clients_per_gpu < 1:
            raise UsageError(f"--clients-per-gpu must be at least 1, got {clients_per_gpu}")
        needed = -(-num_clients // clients_per_gpu)
        if needed > len(listed):
            raise UsageError(
                f"--clients {num_clients} at --clients-per-gpu {clients_per_gpu} needs {needed} "
                f"GPUs but {len(listed)} are in use; add --gpus or raise --clients-per-gpu")
    client_gpu = tuple(listed[c % len(listed)].index for c in range(num_clients))
    used = [gpu for gpu in listed if gpu.index in client_gpu]
    notes: list[str] = []
    idle = [gpu.index for gpu in listed if gpu.index not in client_gpu]
    if idle and request.kind != "auto":
        notes.append(
            f"{_gpus_word(len(idle))} {_join(idle)} get no client: "
            f"{num_clients} client(s) for {len(listed)} GPUs"
        )
    env = os.environ if parent_env is None else parent_env
    inherited = env.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None and request.kind != "ids":
        notes.append(
            f"CUDA_VISIBLE_DEVICES={inherited} is set but each client gets its own; "
            f"pass --gpus with NVML GPU ids (see nvidia-smi) to choose GPUs"
        )
    warnings = _memory_warnings(used, client_gpu, per_client_bytes, server_gpu_bytes, notes)
    return Placement(tuple(used), client_gpu, tuple(notes), tuple(warnings))


def _memory_warnings(
    used: list[GpuInfo],
    client_gpu: tuple[int | None, ...],
    per_client_bytes: int,
    server_gpu_bytes: int,
    notes: list[str],
) -> list[str]:
    warnings = []
    for position, gpu in enumerate(used):
        clients = client_gpu.count(gpu.index)
        need = clients * per_client_bytes
        who = f"{clients} client" + ("s need" if clients != 1 else " needs")
        if position == 0 and server_gpu_bytes > 0:
            need += server_gpu_bytes
            who = f"{clients} client" + ("s" if clients != 1 else "") + " and the server need"
        if gpu.memory_free is None:
            notes.append(f"GPU {gpu.index} ({gpu.name}): NVML cannot read free memory; not checked")
            continue
        if need > gpu.memory_free:
            warnings.append(
                f"GPU {gpu.index} ({gpu.name}): {who} about {_gb(need)} but "
                f"{_gb(gpu.memory_free)} is free; use fewer --clients, more --gpus, "
                f"or a smaller --batch-size"
            )
    return warnings


def client_env(gpu: GpuInfo | None) -> dict[str, str]:
    """Variables that pin a child to one physical GPU, or hide every GPU for a CPU client.

    The UUID names the GPU whatever the CUDA device order; the bare index fallback is only
    right because CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA count the way NVML does.
    """
    if gpu is None:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": gpu.uuid or str(gpu.index),
    }
