"""GPU acceptance (issue 15): one command that checks fedlaunch's GPU promises and records figures.

    python bench/gpu_acceptance.py OUTDIR [--gpu 0] [--deadline S] [--steps a,b,...]
    python bench/gpu_acceptance.py OUTDIR --dry-run-cpu      # the same plumbing on the CPU, tiny

Writes OUTDIR/acceptance.log (everything measured, every check), results.json (steps, figures,
machine), performance-rows.md (rows for docs/PERFORMANCE.md), tui-capture.txt, and one folder
per step with the runs and outputs. Each step has its own time budget inside one global
deadline; a step that fails or runs out of time is FAIL with its reason and the next one runs.
Without an NVIDIA GPU (NVML finds no driver or GPU) it prints one line and exits 0; where NVML
sees the GPU but torch cannot use it (old driver, CPU build, wrong UUID) it prints why in one
line and exits 1. The default --deadline is the chosen steps' budgets plus a cleanup reserve
each; a shorter one is refused. Exit code: 0 all passed (or skipped for want of a GPU), 1 some
step failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # for acceptance_steps when this file is imported, not run

import psutil  # noqa: E402
from acceptance_checks import StepFailed, kill_group  # noqa: E402
from acceptance_steps import STEPS  # noqa: E402

from tests.runs import alive, kill_tree  # noqa: E402

FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
CLEANUP_RESERVE = 15.0  # seconds kept back from every step for killing what it started
TORCH_PROBE = ("import json, torch; from fedcore.device import check_pinned_gpu; "
               "print(json.dumps({'torch': torch.__version__, "
               "'cuda': torch.version.cuda, 'available': torch.cuda.is_available(), "
               "'count': torch.cuda.device_count() if torch.cuda.is_available() else 0, "
               "'why': check_pinned_gpu()}))")


class StepTimeout(Exception):
    """The step's budget (or the global deadline) ran out while it was working."""


@dataclass
class Figure:
    """One measured figure, as a docs/PERFORMANCE.md row gives it."""

    name: str
    value: str
    command: str
    note: str = ""


@dataclass
class StepResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str
    figures: list[Figure] = field(default_factory=list)


class Context:
    """What every step gets: the output folder, the log, the machine, its clock and its checks."""

    def __init__(self, out: Path, *, cpu: bool, gpu_id: int, deadline: float,
                 echo: Callable[[str], None] = print) -> None:
        self.out = out
        self.cpu = cpu  # the CPU dry run: tiny settings, NVML checks not applicable
        self.gpu_id = gpu_id
        self.deadline = deadline  # time.monotonic() of the global deadline
        self.echo = echo
        self.machine: dict[str, Any] = {}
        self.step = ""
        self.step_dir = out
        self.problems: list[str] = []
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self._cleanups: list[Callable[[], object]] = []
        self._log = (out / "acceptance.log").open("a", encoding="utf-8")

    # --- the log -------------------------------------------------------------------------
    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for line in text.splitlines() or [""]:
            entry = f"{stamp} [{self.step or 'main'}] {line}"
            self._log.write(entry + "\n")
            self.echo(entry)
        self._log.flush()

    def log_file(self, path: Path, title: str, last: int | None = None) -> None:
        """Copy a file (or its last `last` lines) into the log, under a title."""
        lines = path.read_text(errors="replace").splitlines() if path.exists() else ["(missing)"]
        shown = lines if last is None else lines[-last:]
        self.log(f"--- {title} ({path.name}, {len(shown)} of {len(lines)} lines) ---")
        self.log("\n".join(shown))

    def close(self) -> None:
        self._log.close()

    # --- checks and figures ---------------------------------------------------------------
    def check(self, ok: bool, text: str) -> bool:
        """Record one check; a false one makes the step FAIL with `text` among its reasons."""
        self.log(("ok    " if ok else "FAIL  ") + text)
        if not ok:
            self.problems.append(text)
        return ok

    def note(self, text: str) -> None:
        self.log("note  " + text)
        self.notes.append(text)

    def figure(self, name: str, value: str, command: str, note: str = "") -> None:
        self.log(f"figure {name} = {value}" + (f" ({note})" if note else ""))
        self.figures.append(Figure(name, value, command, note))

    # --- time ----------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait_until(self, check: Callable[[], Any], what: str, timeout: float,
                   interval: float = 0.2, abort: Callable[[], str | None] | None = None) -> Any:
        """Poll `check` until it answers something truthy; StepFailed at `timeout` or on `abort`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = check()
            if value:
                return value
            if abort is not None and (why := abort()):
                raise StepFailed(f"gave up waiting for {what}: {why}")
            time.sleep(interval)
        raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}")

    # --- processes -----------------------------------------------------------------------
    def on_cleanup(self, fn: Callable[[], object]) -> None:
        """Run `fn` when the step ends, however it ends (kill what it started)."""
        self._cleanups.append(fn)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, **FLWR_ENV, "PYTHONUNBUFFERED": "1"}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return {**env, **(extra or {})}

    def run(self, argv: Sequence[str], name: str, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> tuple[int, Path]:
        """Run a command to its end, output to STEP_DIR/NAME.out; killed with its group on timeout."""
        path = self.step_dir / f"{name}.out"
        self.log(f"$ {' '.join(argv)}")
        with path.open("wb") as sink:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=env or self.env(), stdout=sink,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        seen: dict[int, psutil.Process] = {}
        stop = threading.Event()

        def watch() -> None:  # remember descendants: those that leave their group are found too
            root = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    for child in root.children(recursive=True):
                        seen.setdefault(child.pid, child)
                except psutil.Error:
                    return
                stop.wait(0.5)

        def reap() -> None:
            stop.set()
            kill_group(proc)
            left = [p for p in seen.values() if alive(p)]
            if left:
                self.log(f"killing {len(left)} leftover process(es) of {name}: {[p.pid for p in left]}")
                kill_tree(left)

        threading.Thread(target=watch, daemon=True).start()
        self.on_cleanup(reap)
        code = proc.wait()
        self.log(f"exit {code} after running {name}")
        return code, path

    def cleanup(self) -> None:
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:  # cleanup must go on whatever one of them does
                self.log(f"cleanup: {type(exc).__name__}: {exc}")


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise StepTimeout in this (main) thread after `seconds`, wherever the step is.

    A timer already set (pytest-timeout's, say) is put back afterwards, less the time spent.
    """
    def ring(_sig: int, _frame: FrameType | None) -> None:
        raise StepTimeout(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, ring)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.01))


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    budget: float  # seconds this step may take at most
    fn: Callable[[Context], None]


def run_steps(ctx: Context, steps: Sequence[Step]) -> list[StepResult]:
    """Run each step within min(its budget, what the global deadline leaves); never raise."""
    results = []
    for step in steps:
        ctx.step, ctx.problems, ctx.figures, ctx.notes = step.name, [], [], []
        ctx.step_dir = ctx.out / step.name
        ctx.step_dir.mkdir(parents=True, exist_ok=True)
        budget = min(step.budget, ctx.left() - CLEANUP_RESERVE)
        if budget < min(5.0, step.budget):
            ctx.log(f"SKIP {step.title}: no time left before the global deadline")
            results.append(StepResult(step.name, "SKIP", 0.0, "no time left before the deadline"))
            continue
        ctx.log(f"=== {step.title} (budget {budget:.0f} s, {ctx.left():.0f} s left in all)")
        started = time.monotonic()
        error = ""
        try:
            with alarm(budget):
                step.fn(ctx)
        except StepTimeout as exc:
            error = str(exc)
        except StepFailed as exc:
            error = str(exc)
        except Exception as exc:  # a step's own bug is that step's FAIL, not the script's end
            error = f"{type(exc).__name__}: {exc}"
        finally:
            ctx.cleanup()
        reasons = ctx.problems + ([error] if error else [])
        status = "FAIL" if reasons else "PASS"
        detail = "; ".join(reasons) if reasons else "; ".join(ctx.notes) or "all checks passed"
        seconds = time.monotonic() - started
        ctx.log(f"{status} {step.title} in {seconds:.1f} s: {detail}")
        brief = "; ".join(one_line(r) for r in reasons) if reasons else one_line(detail, 300)
        results.append(StepResult(step.name, status, round(seconds, 1), brief, list(ctx.figures)))
    ctx.step = ""
    return results


def one_line(text: str, limit: int = 160) -> str:
    """The first line of a reason, cut to `limit` characters, for the summary and the rows."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


# --- the machine ------------------------------------------------------------------------------

def torch_facts(env: dict[str, str]) -> dict[str, Any]:
    """torch's version and CUDA view, asked in a child (pinned as fedlaunch pins its clients, by
    `env`) so this process holds no CUDA context; 'why' says why a pinned GPU is unusable."""
    done = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)
    if done.returncode != 0:
        return {"torch": "?", "cuda": None, "available": False, "count": 0,
                "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    facts: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return facts


def nvml_facts(gpu_id: int) -> tuple[dict[str, Any], str | None]:
    """Driver, CUDA driver and the chosen GPU by NVML; (facts, None) or ({}, why there is no GPU)."""
    from launcher.planning.gpus import Nvml

    nvml = Nvml()
    if not nvml.available():
        return {}, f"no NVIDIA GPU ({nvml.unavailable_reason()})"
    devices = {g.index: g for g in nvml.devices()}
    if gpu_id not in devices:
        return {}, f"--gpu {gpu_id}: NVML lists GPUs {sorted(devices)} only"
    gpu = devices[gpu_id]
    driver, cuda = nvml.driver()
    facts = {"gpu_name": gpu.name, "gpu_uuid": gpu.uuid, "gpu_count": len(devices),
             "memory_total": gpu.memory_total, "memory_free": gpu.memory_free,
             "driver": driver or "?", "cuda_driver": cuda or "?"}
    nvml.shutdown()
    return facts, None


def describe_machine(ctx: Context, nvml: dict[str, Any], torch: dict[str, Any]) -> None:
    from importlib.metadata import version

    ctx.machine = {
        "date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "flwr": version("flwr"),
        "torch": torch.get("torch", "?"), "torch_cuda": torch.get("cuda"),
        "torch_available": bool(torch.get("available")),
        "gpu": f"{nvml['gpu_name']} (GPU {ctx.gpu_id})" if nvml else "CPU (dry run: no GPU figures)",
        "driver": nvml.get("driver", "-"), **nvml,
    }
    ctx.log("machine: " + json.dumps(ctx.machine))


# --- the report -------------------------------------------------------------------------------

def summary_table(results: Sequence[StepResult]) -> str:
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'step':<{width}}  status  seconds  detail"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<6}  {r.seconds:>7.1f}  {r.detail}")
    return "\n".join(lines)


def markdown_rows(machine: dict[str, Any], results: Sequence[StepResult], cpu: bool) -> str:
    """A ready-to-paste block for docs/PERFORMANCE.md: one row per measured figure."""
    title = ("CPU dry run of bench/gpu_acceptance.py: plumbing only, NOT GPU figures" if cpu
             else f"GPU acceptance, {machine.get('date')}, {machine.get('gpu')}")
    lines = [f"### {title}", "",
             f"flwr {machine.get('flwr')}, CUDA driver {machine.get('cuda_driver', '-')}, "
             f"torch CUDA {machine.get('torch_cuda')}, {machine.get('cpus')} CPU cores; "
             "synthetic CIFAR-shaped data (10,000 training images).", "",
             "| date | GPU | driver | torch | command | figure |", "|---|---|---|---|---|---|"]
    for r in results:
        for f in r.figures:
            note = f" ({f.note})" if f.note else ""
            lines.append(f"| {machine.get('date')} | {machine.get('gpu')} | {machine.get('driver')} "
                         f"| {machine.get('torch')} | `{f.command}` | {f.name} = {f.value}{note} |")
    failed = [r for r in results if r.status != "PASS"]
    if failed:
        lines += ["", "Not passed: " + "; ".join(f"{r.name} {r.status} ({r.detail})" for r in failed)]
    return "\n".join(lines)


def write_report(ctx: Context, results: Sequence[StepResult], started: float) -> None:
    table = summary_table(results)
    rows = markdown_rows(ctx.machine, results, ctx.cpu)
    (ctx.out / "performance-rows.md").write_text(rows + "\n")
    (ctx.out / "results.json").write_text(json.dumps({
        "machine": ctx.machine, "dry_run_cpu": ctx.cpu,
        "seconds": round(time.monotonic() - started, 1),
        "steps": [asdict(r) for r in results]}, indent=2) + "\n")
    ctx.log("=== summary\n" + table)
    ctx.log("=== rows for docs/PERFORMANCE.md\n" + rows)
    ctx.log(f"done in {time.monotonic() - started:.0f} s; files in {ctx.out}")


STEP_NAMES = [name for name, *_ in STEPS]


def steps_for(names: Sequence[str], cpu: bool) -> list[Step]:
    """The chosen steps, in the script's order, with the budgets of this mode."""
    return [Step(name, title, cpu_budget if cpu else gpu_budget, fn)
            for name, title, gpu_budget, cpu_budget, fn in STEPS if name in names]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("outdir", type=Path, help="folder for the log, results and runs")
    parser.add_argument("--gpu", type=int, default=0, help="NVML id of the GPU to test (default 0)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="global limit in seconds, all steps together (default and least: "
                             "the chosen steps' budgets plus a cleanup reserve each)")
    parser.add_argument("--steps", default=",".join(STEP_NAMES),
                        help=f"comma list, in this order: {','.join(STEP_NAMES)}")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="no GPU: run the script's plumbing on the CPU with tiny settings")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STEP_NAMES]
    if unknown or not wanted:
        parser.error(f"--steps: unknown {unknown}; choose from {','.join(STEP_NAMES)}")
    args.steps = wanted
    need = steps_seconds(steps_for(wanted, args.dry_run_cpu))
    if args.deadline is None:
        args.deadline = need
    elif args.deadline < need:  # a later step would be SKIP, and SKIP is a failure
        parser.error(f"--deadline {args.deadline:g}: the chosen steps need {need:g} s (their "
                     f"budgets plus {CLEANUP_RESERVE:g} s cleanup each); raise it or choose fewer "
                     "--steps")
    return args


def steps_seconds(steps: Sequence[Step]) -> float:
    """The deadline that lets every step run its whole budget and clean up after it."""
    return sum(step.budget + CLEANUP_RESERVE for step in steps)


def say(ctx: Context, line: str, code: int) -> int:
    """One line to the log and stdout; `code` back for main to return."""
    ctx._log.write(line + "\n")
    print(line)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    args.outdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.outdir, cpu=args.dry_run_cpu, gpu_id=args.gpu,
                  deadline=started + args.deadline)
    try:
        nvml: dict[str, Any] = {}
        if not args.dry_run_cpu:
            nvml, why = nvml_facts(args.gpu)
            if why is not None:  # no GPU at all: nothing to accept here
                return say(ctx, f"gpu_acceptance: skipped: {why}", 0)
            torch = torch_facts(ctx.env({"CUDA_VISIBLE_DEVICES": nvml["gpu_uuid"],
                                         "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}))
            if not torch.get("available"):  # NVML sees the GPU, torch cannot use it: a failure
                error = f"; {torch['error']}" if "error" in torch else ""
                why = torch.get("why") or (f"torch {torch.get('torch')} sees no CUDA device "
                                           f"(built for CUDA {torch.get('cuda')}){error}")
                return say(ctx, f"gpu_acceptance: FAIL: NVML sees GPU {args.gpu} but {why}", 1)
        else:  # torch's version only: importing it here would cost seconds for nothing
            from importlib.metadata import version

            torch = {"torch": version("torch"), "cuda": None, "available": False}
        describe_machine(ctx, nvml, torch)
        if ctx.cpu:
            ctx.log("CPU dry run: each step runs with tiny settings on the CPU (2 clients, the CNN, "
                    "600 images); the step titles name the GPU run's settings")
        results = run_steps(ctx, steps_for(args.steps, args.dry_run_cpu))
        write_report(ctx, results, started)
        return 0 if all(r.status == "PASS" for r in results) else 1
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
