"""What bench/gpu_acceptance.py's steps read and check: settings, NVML, run folders, bench output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from launcher.planning.gpus import Nvml, other_pid_namespace
from tests.runs import Run, describe

if TYPE_CHECKING:
    from gpu_acceptance import Context

GIB = 2**30
MEMORY_SLACK = 256 * 2**20  # "memory back at its starting level": within 256 MiB of the first reading


class StepFailed(Exception):
    """A step could not go on; the message says why."""


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process started in its own session, with its group; reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


# --- settings: the GPU run, or tiny ones for the CPU dry run --------------------------------------

def gpus_flag(ctx: Context) -> str:
    return "cpu" if ctx.cpu else str(ctx.gpu_id)


def data_flags(ctx: Context) -> list[str]:
    tiny = ["--limit-train", "600", "--limit-test", "200"] if ctx.cpu else []
    return ["--dataset", "synthetic", "--partition", "iid", *tiny]


def model_flags(ctx: Context, model: str = "mobilenetv2", batch: int = 128) -> list[str]:
    if ctx.cpu:
        return ["--model", "cnn", "--batch-size", "64"]
    return ["--model", model, "--batch-size", str(batch)]


def bench_args(ctx: Context, clients: int, model: str, batch: int) -> list[str]:
    """bench.py's flags. GPU: 4 rounds of 5 local epochs, so that a round trains 50,000 images
    (one epoch of the real CIFAR-10) across the clients; CPU: 2 clients, 2 tiny rounds."""
    if ctx.cpu:
        return ["--clients", "2", "--rounds", "2", "--model", "cnn", "--batch-size", "64",
                "--dataset", "synthetic", "--limit-train", "600"]
    return ["--clients", str(clients), "--rounds", "4", "--local-epochs", "5", "--model", model,
            "--batch-size", str(batch), "--dataset", "synthetic"]


# --- what NVML and the run folder say -----------------------------------------------------------

_NVML: list[Any] = []  # the pynvml module (a fake in tests), initialised once
_SESSIONS: dict[int, Nvml] = {}


def _pynvml() -> Any:
    if not _NVML:
        import pynvml  # type: ignore[import-untyped]

        pynvml.nvmlInit()
        _NVML.append(pynvml)
    return _NVML[0]


def _nvml() -> Nvml:
    """The launcher's NVML session over that module: v2 fallback, MIG instances, bytes per pid."""
    lib = _pynvml()
    if id(lib) not in _SESSIONS:
        _SESSIONS.clear()
        _SESSIONS[id(lib)] = Nvml(lib)
    return _SESSIONS[id(lib)]


def gpu_processes(ctx: Context) -> dict[int, int | None]:
    """pid -> bytes of memory it holds on the tested GPU, by NVML ({} in the CPU dry run)."""
    if ctx.cpu:
        return {}
    return _nvml().processes(ctx.gpu_id)


def gpu_memory(ctx: Context) -> tuple[int, int]:
    """(used, free) bytes on the tested GPU (its MIG instance, in MIG mode) now."""
    sample = _nvml().sample([ctx.gpu_id])[0]
    if sample.memory_used is None or sample.memory_total is None:
        raise StepFailed(f"NVML cannot read GPU {ctx.gpu_id}'s memory")
    return sample.memory_used, sample.memory_total - sample.memory_used


def progress(out: Path, client: int) -> dict[str, Any]:
    """Client `client`'s progress file ({} while there is none or it is being replaced)."""
    try:
        found: dict[str, Any] = json.loads((out / "progress" / f"client-{client}.json").read_text())
        return found
    except (OSError, ValueError):
        return {}


def environ(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:
        return {}


def check_pinned(ctx: Context, pid: int, who: str) -> None:
    """The process's environment pins it the way placement promises (the UUID, PCI bus order)."""
    env = environ(pid)
    seen = {k: env.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    if ctx.cpu:
        ctx.check(seen["CUDA_VISIBLE_DEVICES"] == "", f"{who} (pid {pid}) hides every GPU: {seen}")
        return
    want = {"CUDA_VISIBLE_DEVICES": ctx.machine["gpu_uuid"], "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    ctx.check(seen == want, f"{who} (pid {pid}) is pinned by NVML's UUID of GPU {ctx.gpu_id}: {seen}")


def check_on_gpu(ctx: Context, pids: dict[str, int]) -> None:
    """Each process is in NVML's list for the tested GPU with memory of its own."""
    if ctx.cpu:
        ctx.note("NVML process list: not applicable in the CPU dry run")
        return
    want = set(pids.values())
    try:
        ctx.wait_until(lambda: want <= set(gpu_processes(ctx)), "NVML to list every client", 20, 0.5)
    except StepFailed:
        pass  # the checks below say which one is missing
    listed = gpu_processes(ctx)
    ctx.log(f"NVML GPU {ctx.gpu_id} processes (pid: MiB): "
            + ", ".join(f"{p}: {'?' if m is None else m // 2**20}" for p, m in sorted(listed.items())))
    if other_pid_namespace(want, set(listed)) is not None and len(listed) >= len(want):
        ctx.note(f"{other_pid_namespace(want, set(listed))}; counted {len(listed)} processes instead")
        return  # a container: not a failure
    for who, pid in sorted(pids.items()):
        held = listed.get(pid)
        said = ("not listed" if pid not in listed else "NVML gives no memory for it" if held is None
                else f"{held / 2**20:.0f} MiB")
        ctx.check(bool(held), f"{who} (pid {pid}) is in NVML's process list of GPU {ctx.gpu_id} "
                              f"with its own memory ({said})")


def check_released(ctx: Context, seen: set[int], baseline: int | None) -> None:
    """After a run: none of its processes on the GPU, and memory back to the level before it."""
    if ctx.cpu or baseline is None:
        return
    def released() -> bool:
        return not seen & set(gpu_processes(ctx)) and gpu_memory(ctx)[0] <= baseline + MEMORY_SLACK
    try:
        ctx.wait_until(released, "the GPU to be released", 20, 0.5)
    except StepFailed:
        pass
    left = sorted(seen & set(gpu_processes(ctx)))
    used = gpu_memory(ctx)[0]
    ctx.check(not left, f"NVML lists no process of the run on GPU {ctx.gpu_id} after it ({left})")
    ctx.check(used <= baseline + MEMORY_SLACK,
              f"GPU {ctx.gpu_id} memory back at its starting level: {used / GIB:.2f} GiB in use, "
              f"{baseline / GIB:.2f} GiB before")


def ended(run: Run) -> Callable[[], str | None]:
    """For waits on a run: once fedlaunch has exited, its exit code and its last own line."""
    def why() -> str | None:
        code = run.returncode()
        if code is None:
            return None
        said = [line for line in run.stdout.splitlines() if line.startswith("fedlaunch: ")]
        errors = [line for line in said if line.startswith("fedlaunch: error")]
        return f"fedlaunch exited {code}: {(errors or said or ['(nothing)'])[0]}"
    return why


def check_nothing_left(ctx: Context, run: Run, grace: float = 8.0) -> None:
    end = time.monotonic() + grace
    while (left := run.leftovers()) and time.monotonic() < end:
        time.sleep(0.3)
    ctx.check(not left, f"no process of the run outlives fedlaunch ({len(run.seen)} seen; "
                        f"left: {describe(left) or 'none'})")


def baseline(ctx: Context) -> int | None:
    return None if ctx.cpu else gpu_memory(ctx)[0]


def oom_report(text: str, gpu: int | None) -> re.Match[str] | None:
    """fedlaunch's out-of-memory line: the client, its GPU with name and memory (or the CPU), the
    hint; None when the output has no such line."""
    where = "the CPU" if gpu is None else rf"GPU {gpu} \((.+?), ([\d.]+) of ([\d.]+) GiB in use\)"
    return re.search(rf"client-\d+ ran out of memory on {where} in round \d+: .*use fewer clients "
                     rf"per GPU .* smaller --batch-size \(now \d+\)", text)


def parse_bench(text: str) -> dict[str, float]:
    """The figures bench.py prints (its (a), (b), P1/P3/P4 and (c) lines) by name."""
    patterns = {
        ("bare", "bare_seconds"): r"\(a\) bare x\d+: \d+ images in [\d.]+ s = (\d+) images/s()",
        ("fedlaunch", "mean_round"): r"\(b\) fedlaunch --executor warm: \d+ images in [\d.]+ s of "
                                     r"rounds = (\d+) images/s; mean round ([\d.]+) s",
        ("P1", "P3"): r"P1 = ([\d.]+)\s+P3 = (-?[\d.]+) s",
        ("P4", ""): r"P4 = ([\d.]+) s()",
        ("local", "seed"): r"\(c\) local loop (\d+) images/s vs seed PIL\+DataLoader (\d+) images/s",
        ("P2", ""): r"P2 = ([\d.]+)()",
    }
    found: dict[str, float] = {}
    for names, pattern in patterns.items():
        match = re.search(pattern, text)
        if match is None:
            raise StepFailed(f"bench.py printed no line matching {pattern!r}")
        for name, value in zip(names, match.groups(), strict=True):
            if name and value:
                found[name] = float(value)
    return found


MEMORY_CELL = re.compile(r"^([\d.]+) (MiB|GiB)$")


def memory_bytes(text: str) -> int | None:
    """A clients-table memory cell (`812 MiB`, `1.4 GiB`) in bytes; None for `-` or other text."""
    match = MEMORY_CELL.match(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * (2**20 if match.group(2) == "MiB" else 2**30))


def check_client_memory(ctx: Context, shown: dict[int, str], pids: dict[int, int]) -> None:
    """Each client row's GPU memory (`shown`: client -> its "GPU mem" cell) is what NVML says its
    process (`pids`: client -> pid) holds, within 25% or 256 MiB (the screen is a moment earlier).
    Where NVML's host pids match none of ours (a container), the table cannot know: a note."""
    listed = gpu_processes(ctx)
    note = other_pid_namespace(set(pids.values()), set(listed))
    if note is not None and all(memory_bytes(text) is None for text in shown.values()):
        ctx.note(f"per-client GPU memory not shown: {note}")
        return
    for client in sorted(pids):
        text = shown.get(client, "(no row)")
        seen, held = memory_bytes(text), listed.get(pids[client])
        near = seen is not None and held is not None and abs(seen - held) <= max(MEMORY_SLACK, held // 4)
        nvml = ("not listed" if pids[client] not in listed else "?" if held is None
                else f"{held / 2**20:.0f} MiB")
        ctx.check(near, f"client-{client}'s row shows its GPU memory: {text!r} (NVML: {nvml} "
                        f"for pid {pids[client]})")
