"""The steps of bench/gpu_acceptance.py: each runs fedlaunch or a bench for real and records checks."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from acceptance_checks import (  # noqa: E402
    GIB,
    StepFailed,
    baseline,
    bench_args,
    check_client_memory,
    check_nothing_left,
    check_on_gpu,
    check_pinned,
    check_released,
    data_flags,
    ended,
    gpu_memory,
    gpu_processes,
    gpus_flag,
    kill_group,
    model_flags,
    oom_report,
    parse_bench,
    progress,
)

from tests.runs import (  # noqa: E402
    Run,
    describe,
    fedlaunch_argv,
    kill_tree,
    processes_mentioning,
    read_summary,
    role_of,
    rounds,
)

if TYPE_CHECKING:
    from gpu_acceptance import Context

# The steps check one process per client (its pinning in NVML, kill -9 of a client, its restart):
# the Deployment Engine's. The simulation engine's workers are pinned the same way (planning.pool).
ENGINE = ["--engine", "deployment"]
OOM_LEAVE = 6 * GIB  # free memory the out-of-memory step leaves on the GPU for its run
BALLAST = ("import sys, time, torch; x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, "
           "device='cuda'); torch.cuda.synchronize(); print('ready', flush=True); time.sleep(900)")
# A clients-table row: client, GPU, "GPU mem" (once NVML tells it), state (launcher/tui/clients.py).
CLIENT_ROW = re.compile(r"(?:│|^)\s*(\d+)\s+(cpu|remote|-|\d+)\s+(?:(-|[\d.]+ (?:MiB|GiB))\s+)?"
                        r"(starting|connected|training|evaluating|waiting|replied|restarting|failed|"
                        r"stopped)\b")


def client_rows(text: str) -> dict[int, tuple[str, str, str]]:
    """client -> (GPU, GPU memory or "-", state) for each clients-table row on a screen."""
    return {int(m.group(1)): (m.group(2), m.group(3) or "-", m.group(4))
            for line in text.splitlines() if (m := CLIENT_ROW.search(line))}


# --- the steps ------------------------------------------------------------------------------------

def step_env(ctx: Context) -> None:
    """The machine, and the GPU's memory and processes before anything runs."""
    (ctx.step_dir / "machine.json").write_text(json.dumps(ctx.machine, indent=2) + "\n")
    if shutil.which("tmux") is None:
        ctx.note("tmux is not installed: the TUI step will fail")
    if ctx.cpu:
        ctx.note("CPU dry run: NVML checks do not apply, figures are not GPU figures")
        return
    used, free = gpu_memory(ctx)
    others = gpu_processes(ctx)
    ctx.machine.update(baseline_used=used, baseline_pids=sorted(others))
    ctx.log(f"GPU {ctx.gpu_id}: {used / GIB:.2f} GiB in use, {free / GIB:.2f} GiB free; "
            f"processes on it: {others or 'none'}")
    if others:
        ctx.note(f"other processes use GPU {ctx.gpu_id} ({sorted(others)}): figures share it")
    ctx.check(bool(ctx.machine.get("torch_available")), "torch sees a CUDA device")


def step_plan(ctx: Context) -> None:
    """--dry-run: every client on the GPU, named by its NVML id and name."""
    never = ctx.step_dir / "not-created"
    code, path = ctx.run(fedlaunch_argv("--dry-run", "--clients", "4", "--gpus", gpus_flag(ctx),
                                        *ENGINE, *data_flags(ctx), "--out", str(never)), "plan")
    text = path.read_text()
    ctx.log(text)
    ctx.check(code == 0, f"fedlaunch --dry-run exits 0 (got {code})")
    placed = re.findall(r"^\s+client-(\d+)\s+(GPU \d+|cpu)\s", text, re.M)
    want = "cpu" if ctx.cpu else f"GPU {ctx.gpu_id}"
    ctx.check(len(placed) == 4 and all(g == want for _, g in placed),
              f"the plan puts the 4 clients on {want}: {placed}")
    device = "devices: CPU" if ctx.cpu else f"devices: GPU {ctx.gpu_id} ({ctx.machine['gpu_name']})"
    ctx.check(device in text, f"the plan says '{device}' (NVML's id and name)")
    ctx.check(not never.exists(), "a dry run creates no run folder")


def step_gpu_tests(ctx: Context) -> None:
    """The gpu-marked tests: pass on a GPU; on the CPU they all skip with one reason."""
    code, path = ctx.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu",
                          "-p", "no:cacheprovider", "tests/test_gpu_real.py"], "pytest")
    ctx.log_file(path, "pytest -m gpu", last=40)
    lines = path.read_text().splitlines()
    last = next((line for line in reversed(lines) if re.search(r"\d+ (passed|skipped|failed)", line)), "")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    if ctx.cpu:
        reasons = {line.split(":", 2)[-1].strip() for line in lines if line.startswith("SKIPPED")}
        ctx.check(code == 0 and counts.get("skipped", 0) >= 4 and not counts.get("passed")
                  and len(reasons) == 1, f"without a GPU every gpu test skips with one reason: "
                                         f"{counts} {sorted(reasons)}")
        return
    ctx.check(code == 0 and counts.get("passed", 0) >= 4 and set(counts) == {"passed"},
              f"the gpu tests pass, none skipped: {last.strip() or 'no summary line'}")


def step_pinning_restart(ctx: Context) -> None:
    """--clients 4: each client on NVML's GPU with its own memory; kill -9 of one mid-round."""
    clients, victim = (2, 1) if ctx.cpu else (4, 1)
    rounds_ = 24 if ctx.cpu else 15  # enough for the killed client to be back before the end
    before = baseline(ctx)
    args = ["--clients", str(clients), "--gpus", gpus_flag(ctx), "--headless", "--round-timeout", "60",
            "--rounds", str(rounds_), "--local-epochs", "1" if ctx.cpu else "2",
            *model_flags(ctx), *ENGINE, *data_flags(ctx)]
    ctx.log("$ fedlaunch " + shlex.join(args))
    out = ctx.step_dir / "run"
    with Run(args, out, ctx.step_dir) as run:
        ctx.on_cleanup(run.kill_all)
        stopped = ended(run)

        def all_training() -> dict[str, int] | None:
            found = {f"client-{i}": progress(out, i) for i in range(clients)}
            if all(p.get("state") == "training" for p in found.values()):
                return {who: int(p["pid"]) for who, p in found.items()}
            return None

        pids = ctx.wait_until(all_training, "every client to train", 150, 0.1, abort=stopped)
        for who, pid in sorted(pids.items()):
            check_pinned(ctx, pid, who)
        check_on_gpu(ctx, pids)

        def victim_busy() -> dict[str, Any] | None:
            p = progress(out, victim)
            return p if p.get("state") == "training" and int(p.get("round", 0)) >= 2 else None

        busy = ctx.wait_until(victim_busy, f"client-{victim} to train in round 2 or later", 90, 0.05,
                              abort=stopped)
        old, killed_in = int(busy["pid"]), int(busy["round"])
        os.kill(old, signal.SIGKILL)
        ctx.log(f"kill -9 client-{victim} (pid {old}) in round {killed_in}, batch "
                f"{busy.get('batch', '?')}/{busy.get('batches', '?')}")

        def restarted() -> int | None:
            p = progress(out, victim)
            return int(p["pid"]) if p.get("pid") not in (None, old) and p.get("state") else None

        new = ctx.wait_until(restarted, f"client-{victim} to train again", 90 if not ctx.cpu else 600,
                             0.2, abort=stopped)
        ctx.log(f"client-{victim} is back as pid {new}")
        check_pinned(ctx, new, f"restarted client-{victim}")
        check_on_gpu(ctx, {f"restarted client-{victim}": new})
        record = run.wait_for_event("round", round=killed_in, timeout=90)
        ctx.check(record["replies"] >= clients - 1, f"round {killed_in} completed with "
                  f"{record['replies']} replies and {record['failures']} failures")
        code = run.wait(timeout=max(10.0, ctx.left() - 30))
        ctx.check(code == 0, f"fedlaunch exits 0 (got {code})")
        done = rounds(out)
        later = [r["round"] for r in done if r["round"] > killed_in and r["replies"] == clients]
        ctx.check(bool(later), f"a later round has all {clients} replies (rounds {later})")
        summary = read_summary(out)
        ctx.check(summary.get("restarts") == {f"client-{victim}": 1},
                  f"summary.json counts one restart: {summary.get('restarts')}")
        ctx.check("restarting it" in run.stdout, "fedlaunch says it restarts the client")
        check_nothing_left(ctx, run)
        check_released(ctx, set(run.seen), before)
    ctx.log("\n".join(line for line in run.stdout.splitlines()
                      if line.startswith(("fedlaunch:", "round "))))


def bench_step(clients: int, model: str, batch: int) -> Callable[[Context], None]:
    """bench.py: N bare processes against fedlaunch (P1, P3, P4), the local loop against the seed's
    pipeline (P2), all measured in one run."""
    def step(ctx: Context) -> None:
        args = bench_args(ctx, clients, model, batch)
        code, path = ctx.run([sys.executable, "bench/bench.py", *args], "bench")
        ctx.log_file(path, "bench.py output")
        if code != 0:
            raise StepFailed(f"bench.py exited {code}: {path.read_text()[-300:]!r}")
        found = parse_bench(path.read_text())
        command = "python bench/bench.py " + shlex.join(args)
        n = args[args.index("--clients") + 1]
        what = f"{n} clients, {args[args.index('--model') + 1]} b{args[args.index('--batch-size') + 1]}"
        if not ctx.cpu and ctx.machine.get("gpu_count", 1) > 1:
            ctx.note("bench.py's fedlaunch uses every GPU, its bare processes GPU 0 only")
        ctx.figure(f"P1 ({what})", f"{found['P1']:.2f}", command,
                   f"bare {found['bare']:.0f} img/s, fedlaunch {found['fedlaunch']:.0f} img/s; "
                   f"target >= 0.85 {'met' if found['P1'] >= 0.85 else 'missed'}")
        ctx.figure(f"P3 ({what})", f"{found['P3']:.2f} s", command,
                   f"mean round {found['mean_round']:.2f} s; target <= 0.5 s "
                   f"{'met' if found['P3'] <= 0.5 else 'missed'}")
        ctx.figure(f"P4 ({what})", f"{found['P4']:.1f} s", command,
                   f"target <= 10 s {'met' if found['P4'] <= 10 else 'missed'}")
        ctx.figure(f"P2 ({args[args.index('--model') + 1]} b{args[args.index('--batch-size') + 1]})",
                   f"{found['P2']:.2f}", command,
                   f"local loop {found['local']:.0f} img/s, seed pipeline {found['seed']:.0f} img/s; "
                   f"target >= 3 {'met' if found['P2'] >= 3 else 'missed'}")
    return step


def step_p2_b32(ctx: Context) -> None:
    """P2 at batch 32: bench.py's local loop against the seed's pipeline, one epoch each."""
    model, batch, limit = ("cnn", 32, 600) if ctx.cpu else ("mobilenetv2", 32, 0)
    code_text = (
        "import argparse, json, runpy; "
        f"m = runpy.run_path({str(ROOT / 'bench' / 'bench.py')!r}, run_name='bench_lib'); "
        f"a = argparse.Namespace(dataset='synthetic', data_dir='', model={model!r}, clients=1, "
        f"rounds=1, local_epochs=1, batch_size={batch}, limit_train={limit}); "
        "print('RESULT ' + json.dumps(m['measure_local_pipelines'](a)))")
    code, path = ctx.run([sys.executable, "-c", code_text], "p2")
    ctx.log_file(path, "local loop vs seed pipeline", last=20)
    line = next((x for x in path.read_text().splitlines() if x.startswith("RESULT ")), None)
    if code != 0 or line is None:
        raise StepFailed(f"the measurement exited {code} without a result")
    found = json.loads(line.removeprefix("RESULT "))
    ratio = found["ours"] / found["seed"]
    ctx.figure(f"P2 ({model} b{batch})", f"{ratio:.2f}",
               f"bench.py measure_local_pipelines, {model} batch {batch}, synthetic",
               f"local loop {found['ours']:.0f} img/s, seed pipeline {found['seed']:.0f} img/s")


def step_tui(ctx: Context) -> None:
    """The TUI in tmux at 160x48 during an 8-client run: GPU use per GPU and per client."""
    if shutil.which("tmux") is None:
        raise StepFailed("tmux is not installed")
    clients = 2 if ctx.cpu else 8
    out = ctx.step_dir / "run"
    args = ["--clients", str(clients), "--gpus", gpus_flag(ctx), "--rounds", "5",
            "--local-epochs", "1" if ctx.cpu else "5", *model_flags(ctx), *ENGINE, *data_flags(ctx),
            "--out", str(out)]
    sock, session = f"fedlaunch-acceptance-{os.getpid()}", "tui"
    tmux = ["tmux", "-L", sock]
    env = ctx.env({"TERM": "xterm-256color"})
    shell = (f"cd {shlex.quote(str(ctx.step_dir))} && {shlex.join(fedlaunch_argv(*args))}; "
             "echo FEDLAUNCH-EXIT=$?; sleep 300")
    ctx.log("$ " + shell)
    ctx.on_cleanup(lambda: kill_tree(processes_mentioning(str(out))))
    ctx.on_cleanup(lambda: subprocess.run([*tmux, "kill-server"], check=False, capture_output=True))
    launched = time.time()
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "48", shell],
                   env=env, check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True,
                              text=True, check=False).stdout

    def showing(*needles: str) -> str | None:
        text = screen()
        return text if all(n in text for n in needles) else None

    def exited() -> str | None:
        text = showing("FEDLAUNCH-EXIT=")
        return f"fedlaunch ended early:\n{text}" if text else None

    # The panel's roomy form, "GPU 0 NAME" over "... 45%  12.3/139.8 GiB", or its compact one,
    # "GPU0 NAME ... 45% 12.3/139.8G 9p" (launcher/tui/gpus.py).
    panel_text = re.compile(rf"GPU ?{ctx.gpu_id}\b.*?(?:\n.*?)?(\d+)%\s+([\d.]+)/([\d.]+) ?G")

    def live(everyone: bool) -> str | None:
        """The screen while clients train (all of them, with `everyone`) and the GPU panel shows."""
        text = screen()
        training = [c for c, (_, _, state) in client_rows(text).items() if state == "training"]
        panel = "CPU mode" in text if ctx.cpu else panel_text.search(text) is not None
        return text if panel and len(training) >= (clients if everyone else 1) else None

    text = ctx.wait_until(lambda: live(False), "a training client and the GPU panel on screen",
                          500 if ctx.cpu else 150, 0.2, abort=exited)
    try:
        text = ctx.wait_until(lambda: live(True), "every client training on screen", 15, 0.2)
    except StepFailed:
        ctx.note("no screen showed every client training at once; kept one with some training")
    size = subprocess.run([*tmux, "display", "-p", "-t", session, "#{window_width}x#{window_height}"],
                          capture_output=True, text=True, check=False).stdout.strip()
    (ctx.step_dir / "tui-capture.txt").write_text(text)
    (ctx.out / "tui-capture.txt").write_text(text)
    ctx.log(f"--- tmux capture ({size}) ---\n{text}")
    ctx.check(size == "160x48", f"the terminal is 160x48 ({size})")
    rows = client_rows(text)
    where = "cpu" if ctx.cpu else str(ctx.gpu_id)
    ctx.check(sorted(rows) == list(range(clients)) and all(r[0] == where for r in rows.values()),
              f"{clients} client rows, each on GPU '{where}' (NVML's id): "
              f"{ {c: r[0] for c, r in rows.items()} }")
    if ctx.cpu:
        ctx.check("CPU mode" in text, "the GPU panel says CPU mode")
        ctx.note("per-GPU and per-client GPU memory: not applicable in the CPU dry run")
    else:
        panel = panel_text.search(text)
        ctx.check(panel is not None, f"the GPU panel shows GPU {ctx.gpu_id}'s utilisation and memory"
                  + (f": {panel.group(1)}%, {panel.group(2)}/{panel.group(3)} GiB" if panel else ""))
        pids = {c: int(p["pid"]) for c in range(clients) if (p := progress(out, c)).get("pid")}
        check_client_memory(ctx, {c: r[1] for c, r in rows.items()}, pids)
    try:
        first = ctx.wait_until(lambda: next(iter(rounds(out)), None), "round 1 to finish",
                               300 if ctx.cpu else 60, 0.3, abort=exited)
    except StepFailed as exc:
        first = {}
        ctx.note(f"no P4 for this run: {exc}")
    started = first.get("train_started")
    if started:
        ctx.figure(f"P4 (TUI run, {clients} clients, {'cnn' if ctx.cpu else 'mobilenetv2 b128'})",
                   f"{started - launched:.1f} s", "fedlaunch " + shlex.join(args[:-2]),
                   "launch to the first client training, in tmux")
    subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=False)
    final = ctx.wait_until(lambda: showing("FEDLAUNCH-EXIT="), "fedlaunch to quit on q",
                           180 if ctx.cpu else 60, 0.3)
    code = re.search(r"FEDLAUNCH-EXIT=(\d+)", final)
    ctx.check(code is not None and code.group(1) in ("0", "130"),
              f"q ends fedlaunch with 0 (run over) or 130 (stopped) ({code and code.group(1)})")
    def left() -> list[psutil.Process]:  # the plots step may outlive fedlaunch by design
        return [p for p in processes_mentioning(str(out)) if role_of(p) != "plots"]

    end = time.monotonic() + 8
    while left() and time.monotonic() < end:
        time.sleep(0.3)
    ctx.check(not left(), f"no process of the run is left ({describe(left())})")


def step_oom(ctx: Context) -> None:
    """A real out-of-memory: the GPU filled by a ballast process but 6 GiB, then 2 clients at
    batch 5000; reported with GPU, memory and hint, exit 1, nothing left behind."""
    before = baseline(ctx)
    extra: dict[str, str] = {}
    if ctx.cpu:
        extra = {"FEDLAUNCH_SIMULATE_OOM": "0,1"}  # the CPU cannot run out for real
    else:
        free = gpu_memory(ctx)[1]
        size = free - OOM_LEAVE
        if size <= 0:
            raise StepFailed(f"only {free / GIB:.1f} GiB free on GPU {ctx.gpu_id}")
        ballast = subprocess.Popen(
            [sys.executable, "-c", BALLAST, str(size)], stdout=subprocess.PIPE, text=True,
            env=ctx.env({"CUDA_VISIBLE_DEVICES": ctx.machine["gpu_uuid"],
                         "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}), start_new_session=True)
        ctx.on_cleanup(lambda: kill_group(ballast))
        assert ballast.stdout is not None
        if ballast.stdout.readline().strip() != "ready":
            raise StepFailed(f"the ballast process could not take {size / GIB:.1f} GiB")
        ctx.log(f"ballast pid {ballast.pid} holds {size / GIB:.1f} GiB; "
                f"{gpu_memory(ctx)[1] / GIB:.1f} GiB left free")
    # --workers 2: one process per client, as without the worker pool; at batch 5000 the launcher's
    # own estimate would otherwise give the two clients a single pool worker.
    args = ["--clients", "2", "--workers", "2", "--gpus", gpus_flag(ctx), "--rounds", "1", "--headless",
            "--round-timeout", "60", *ENGINE, *data_flags(ctx),
            *(model_flags(ctx) if ctx.cpu else ["--model", "mobilenetv2", "--batch-size", "5000"])]
    ctx.log("$ fedlaunch " + shlex.join(args))
    with Run(args, ctx.step_dir / "run", ctx.step_dir, env=extra) as run:
        ctx.on_cleanup(run.kill_all)
        code = run.wait(timeout=max(10.0, ctx.left() - 30))
        ctx.log("\n".join(line for line in run.stdout.splitlines() if line.startswith("fedlaunch:")))
        said = oom_report(run.stdout, None if ctx.cpu else ctx.gpu_id)
        ctx.check(said is not None, f"the out-of-memory is named with {'the CPU' if ctx.cpu else 'its GPU'}"
                  f"{'' if ctx.cpu else ', its memory'} and the hint"
                  + (f": {said.group(0)[:200]}" if said else ""))
        ctx.check(code == 1 and said is not None,
                  f"fedlaunch exits 1 because every client ran out of memory (exit {code}; summary "
                  f"says {read_summary(run.out).get('exit_reason')!r})")
        check_nothing_left(ctx, run)
        if not ctx.cpu:
            on_gpu = set(run.seen) & set(gpu_processes(ctx))
            ctx.check(not on_gpu, f"no process of the run on GPU {ctx.gpu_id} ({sorted(on_gpu)})")
    ctx.cleanup()  # the ballast goes; then the memory must come back
    check_released(ctx, set(run.seen), before)


# (name, title, GPU budget s, CPU dry-run budget s, function), in the order they run: the most
# important first, so that the global deadline cuts the least.
STEPS: list[tuple[str, str, float, float, Callable[[Context], None]]] = [
    ("env", "machine and GPU before the run", 20, 30, step_env),
    ("plan", "plan: NVML ids (fedlaunch --dry-run --clients 4)", 30, 60, step_plan),
    ("gpu-tests", "the gpu-marked tests", 120, 120, step_gpu_tests),
    ("pinning-restart", "pinning with --clients 4, then kill -9 of a client mid-round", 150, 900,
     step_pinning_restart),
    ("bench-mobilenetv2-8", "P1/P3/P4/P2: 8 clients MobileNetV2 b128 vs 8 bare processes", 170, 300,
     bench_step(8, "mobilenetv2", 128)),
    ("tui-8", "the TUI in tmux at 160x48 during an 8-client run", 120, 700, step_tui),
    ("oom", "an induced out-of-memory", 90, 300, step_oom),
    ("p2-b32", "P2 at batch 32 (MobileNetV2)", 75, 120, step_p2_b32),
    ("bench-cnn-8", "P1/P3/P4: the CNN at 8 clients", 100, 300, bench_step(8, "cnn", 64)),
    ("bench-cnn-16", "P1/P3/P4: the CNN at 16 clients", 120, 300, bench_step(16, "cnn", 64)),
]
