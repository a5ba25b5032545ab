"""bench/gpu_acceptance.py on the CPU: its skip without a GPU, its step runner, deadline and report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import psutil
import pytest

from launcher.planning.gpus import Nvml
from tests.fake_nvml import GB, FakeGpu, FakeMig, FakeNvml

ROOT = Path(__file__).resolve().parents[1]
GIB_ = 2**30
SCRIPT = ROOT / "bench" / "gpu_acceptance.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_acceptance"] = module
    spec.loader.exec_module(module)
    return module


acceptance = _load()


def _has_gpu() -> bool:
    nvml = Nvml()
    try:
        return nvml.available()
    finally:
        nvml.shutdown()


def context(tmp_path: Path, seconds: float = 300.0, lines: list[str] | None = None) -> Any:
    sink = lines if lines is not None else []
    return acceptance.Context(tmp_path, cpu=True, gpu_id=0, deadline=time.monotonic() + seconds,
                              echo=sink.append)


def script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --- the script as a command -----------------------------------------------------------------------

@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: the script would run for real")
def test_without_a_gpu_it_says_why_in_one_line_and_exits_0(tmp_path: Path) -> None:
    started = time.monotonic()

    done = script(str(tmp_path / "out"))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()]
    assert done.stdout.startswith("gpu_acceptance: skipped: no NVIDIA GPU (")
    assert done.stderr == ""
    assert time.monotonic() - started < 30
    assert (tmp_path / "out" / "acceptance.log").read_text() == done.stdout


def test_unknown_steps_are_refused(tmp_path: Path) -> None:
    done = script(str(tmp_path), "--steps", "env,nope")

    assert done.returncode == 2
    assert "--steps: unknown ['nope']" in done.stderr


def test_the_default_deadline_lets_every_step_run_its_whole_budget(tmp_path: Path) -> None:
    gpu = acceptance.parse_args([str(tmp_path)])
    cpu = acceptance.parse_args([str(tmp_path), "--dry-run-cpu"])
    two = acceptance.parse_args([str(tmp_path), "--steps", "env,plan"])

    budgets = {name: gpu_budget for name, _, gpu_budget, _, _ in acceptance.STEPS}
    assert gpu.deadline == sum(budgets.values()) + acceptance.CLEANUP_RESERVE * len(budgets) >= 995
    assert cpu.deadline == sum(b for *_, b, _ in acceptance.STEPS) + acceptance.CLEANUP_RESERVE * 10
    assert two.deadline == budgets["env"] + budgets["plan"] + 2 * acceptance.CLEANUP_RESERVE


def test_a_deadline_shorter_than_the_steps_budgets_is_refused(tmp_path: Path) -> None:
    done = script(str(tmp_path / "out"), "--deadline", "450")

    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "--deadline 450: the chosen steps need 1145 s (their budgets plus 15 s cleanup each); raise "
        "it or choose fewer --steps")
    assert not (tmp_path / "out").exists()


def test_a_gpu_nvml_sees_but_torch_cannot_use_fails_with_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    why = ("GPU NVIDIA H200 (GPU-aaaa) is this process's GPU but CUDA cannot use it: torch "
           "2.14.1+cu130 (CUDA 13.0) needs NVIDIA driver 580+ and the driver is 550.54.15; ...")
    monkeypatch.setattr(acceptance, "nvml_facts", lambda gpu: ({"gpu_uuid": "GPU-aaaa"}, None))
    seen: dict[str, str] = {}

    def torch_facts(env: dict[str, str]) -> dict[str, Any]:
        seen.update(env)
        return {"torch": "2.14.1+cu130", "cuda": "13.0", "available": False, "count": 0, "why": why}

    monkeypatch.setattr(acceptance, "torch_facts", torch_facts)

    code = acceptance.main([str(tmp_path)])

    assert code == 1
    assert capsys.readouterr().out == f"gpu_acceptance: FAIL: NVML sees GPU 0 but {why}\n"
    assert (seen["CUDA_VISIBLE_DEVICES"], seen["CUDA_DEVICE_ORDER"]) == ("GPU-aaaa", "PCI_BUS_ID")


@pytest.mark.timeout(240)
def test_cpu_dry_run_runs_real_steps_and_writes_log_results_and_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = script(str(out), "--dry-run-cpu", "--steps", "env,plan", "--deadline", "200", timeout=230)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run_cpu"] is True
    assert [(s["name"], s["status"]) for s in results["steps"]] == [("env", "PASS"), ("plan", "PASS")]
    assert results["machine"]["gpu"].startswith("CPU (dry run")
    log = (out / "acceptance.log").read_text()
    assert "$ " in log and "fedlaunch --dry-run --clients 4 --gpus cpu" in log
    assert "ok    the plan puts the 4 clients on cpu" in log
    assert "=== summary" in log and "=== rows for docs/PERFORMANCE.md" in log
    rows = (out / "performance-rows.md").read_text()
    assert rows.startswith("### CPU dry run of bench/gpu_acceptance.py: plumbing only, NOT GPU figures")
    assert "| date | GPU | driver | torch | command | figure |" in rows
    assert (out / "plan" / "plan.out").exists() and (out / "env" / "machine.json").exists()
    assert not (out / "plan" / "not-created").exists()


# --- the step runner ---------------------------------------------------------------------------------

def test_a_step_over_its_budget_is_stopped_and_its_process_killed(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    pids: list[int] = []

    def sleeper(c: Any) -> None:
        code, _ = c.run(["bash", "-c", "sleep 60 & echo $! > child.pid; wait"], "sleep", cwd=tmp_path)
        pids.append(code)

    def after(c: Any) -> None:
        c.check(True, "the next step still runs")

    started = time.monotonic()
    results = acceptance.run_steps(ctx, [acceptance.Step("slow", "a slow step", 2, sleeper),
                                         acceptance.Step("next", "the next step", 10, after)])
    took = time.monotonic() - started
    ctx.close()

    assert [(r.name, r.status) for r in results] == [("slow", "FAIL"), ("next", "PASS")]
    assert results[0].detail == "over its budget of 2 s"
    assert took < 12 and pids == []
    child = int((tmp_path / "child.pid").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    log = (tmp_path / "acceptance.log").read_text()
    assert "FAIL a slow step in" in log and "PASS the next step" in log


def test_failed_checks_errors_and_the_deadline_are_reported_per_step(tmp_path: Path) -> None:
    lines: list[str] = []
    ctx = context(tmp_path, seconds=acceptance.CLEANUP_RESERVE + 6, lines=lines)

    def checks(c: Any) -> None:
        c.check(True, "one thing holds")
        c.check(False, "another does not")
        c.figure("P1 (2 clients, cnn b64)", "0.61", "python bench/bench.py --clients 2", "target missed")

    def broken(c: Any) -> None:
        raise acceptance.StepFailed("fedlaunch exited 1")

    def bug(c: Any) -> None:
        raise KeyError("gpu_uuid")

    def late(c: Any) -> None:
        time.sleep(60)

    steps = [acceptance.Step("a", "checks", 10, checks), acceptance.Step("b", "broken", 10, broken),
             acceptance.Step("c", "bug", 10, bug), acceptance.Step("d", "late", 60, late)]
    started = time.monotonic()
    results = acceptance.run_steps(ctx, steps)
    ctx.close()

    assert [(r.name, r.status) for r in results] == [("a", "FAIL"), ("b", "FAIL"), ("c", "FAIL"),
                                                     ("d", "FAIL")]
    assert [r.detail for r in results[:3]] == [
        "another does not", "fedlaunch exited 1", "KeyError: 'gpu_uuid'"]
    assert results[3].detail in ("over its budget of 5 s", "over its budget of 6 s")  # the deadline's cut
    assert time.monotonic() - started < 10
    assert results[0].figures[0].value == "0.61"
    assert any("FAIL  another does not" in line for line in lines)


def test_no_step_starts_once_the_deadline_is_too_near(tmp_path: Path) -> None:
    ctx = context(tmp_path, seconds=10)
    ran: list[str] = []

    results = acceptance.run_steps(ctx, [acceptance.Step("x", "x", 60, lambda c: ran.append("x"))])
    ctx.close()

    assert ran == []
    assert [(r.name, r.status, r.detail) for r in results] == [
        ("x", "SKIP", "no time left before the deadline")]


def test_summary_and_markdown_rows_name_date_gpu_driver_torch_command_and_figure() -> None:
    figure = acceptance.Figure("P1 (8 clients, mobilenetv2 b128)", "0.91",
                               "python bench/bench.py --clients 8", "target >= 0.85 met")
    results = [acceptance.StepResult("bench", "PASS", 61.2, "all checks passed", [figure]),
               acceptance.StepResult("tui-8", "FAIL", 40.0, "each client row shows its GPU memory")]
    machine = {"date": "2026-11-29", "gpu": "NVIDIA H200 (GPU 0)", "driver": "570.86.15",
               "torch": "2.14.1+cu130", "flwr": "1.42.0", "cuda_driver": "12.8", "torch_cuda": "13.0",
               "cpus": 16}

    table = acceptance.summary_table(results)
    rows = acceptance.markdown_rows(machine, results, cpu=False).splitlines()

    assert table.splitlines()[1].split()[:3] == ["bench", "PASS", "61.2"]
    assert table.splitlines()[2].split()[:2] == ["tui-8", "FAIL"]
    assert rows[0] == "### GPU acceptance, 2026-11-29, NVIDIA H200 (GPU 0)"
    assert ("| 2026-11-29 | NVIDIA H200 (GPU 0) | 570.86.15 | 2.14.1+cu130 | "
            "`python bench/bench.py --clients 8` | P1 (8 clients, mobilenetv2 b128) = 0.91 "
            "(target >= 0.85 met) |") in rows
    assert rows[-1] == "Not passed: tui-8 FAIL (each client row shows its GPU memory)"


def test_bench_output_is_read_into_figures() -> None:
    text = "\n".join([
        "# 2026-11-29 on host (NVIDIA H200); torch 2.14.1+cu130",
        "(a) bare x8: 200000 images in 9.10 s = 21978 images/s",
        "(b) fedlaunch --executor warm: 200000 images in 10.50 s of rounds = 19048 images/s; "
        "mean round 2.62 s; whole run 31.0 s",
        "    P1 = 0.87   P3 = 0.31 s   P4 = 7.9 s",
        "(c) local loop 4500 images/s vs seed PIL+DataLoader 1400 images/s: P2 = 3.21",
    ])

    found = acceptance_checks().parse_bench(text)

    assert found == {"bare": 21978, "fedlaunch": 19048, "mean_round": 2.62, "P1": 0.87, "P3": 0.31,
                     "P4": 7.9, "local": 4500, "seed": 1400, "P2": 3.21}
    with pytest.raises(acceptance.StepFailed, match="bench.py printed no line"):
        acceptance_checks().parse_bench(text.replace("P2 = 3.21", ""))


def acceptance_checks() -> ModuleType:
    return sys.modules["acceptance_checks"]


# --- the GPU checks, against the fake NVML binding ----------------------------------------------------

@pytest.fixture
def gpu_ctx(tmp_path: Path) -> Iterator[Any]:
    ctx = acceptance.Context(tmp_path, cpu=False, gpu_id=0, deadline=time.monotonic() + 60,
                             echo=lambda _: None)
    ctx.machine = {"gpu_uuid": "GPU-aaaa-bbbb", "gpu_name": "NVIDIA H200"}
    yield ctx
    ctx.close()


def fake_nvml(monkeypatch: pytest.MonkeyPatch, pids: tuple[int, ...], held: dict[int, int | None],
              used: int = 10 * GB, process_api: int = 3) -> FakeNvml:
    """The fake binding, initialised as acceptance_checks._pynvml leaves the real one."""
    lib = FakeNvml([FakeGpu(uuid="GPU-aaaa-bbbb", memory_used=used, pids=pids, process_memory=held)],
                   process_api=process_api)
    lib.nvmlInit()
    monkeypatch.setattr(acceptance_checks(), "_NVML", [lib])
    return lib


def pinned_child(uuid: str) -> subprocess.Popen[bytes]:
    """A child with a pinned environment, once /proc shows it (on a loaded machine, reading it at
    once can still find the parent's: the CI run once did)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    child = subprocess.Popen(["sleep", "30"], env=env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if b"CUDA_VISIBLE_DEVICES=" + uuid.encode() in Path(
                    f"/proc/{child.pid}/environ").read_bytes():
                break
        except OSError:
            pass
        time.sleep(0.01)
    return child


def test_pinned_clients_listed_by_nvml_with_their_own_memory_pass(
        gpu_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    child = pinned_child("GPU-aaaa-bbbb")
    try:
        fake_nvml(monkeypatch, (child.pid, 999_999), {child.pid: 700 * 2**20})
        checks = acceptance_checks()

        checks.check_pinned(gpu_ctx, child.pid, "client-0")
        checks.check_on_gpu(gpu_ctx, {"client-0": child.pid})
    finally:
        child.kill()
        child.wait()

    assert gpu_ctx.problems == []


def test_a_client_nvml_does_not_list_or_pinned_elsewhere_fails(
        gpu_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    child = pinned_child("GPU-cccc")
    try:
        fake_nvml(monkeypatch, (), {})
        checks = acceptance_checks()
        monkeypatch.setattr(gpu_ctx, "wait_until", lambda *a, **k: (_ for _ in ()).throw(
            checks.StepFailed("no wait in this test")))

        checks.check_pinned(gpu_ctx, child.pid, "client-0")
        checks.check_on_gpu(gpu_ctx, {"client-0": child.pid})
    finally:
        child.kill()
        child.wait()

    assert len(gpu_ctx.problems) == 2
    assert gpu_ctx.problems[0].startswith(f"client-0 (pid {child.pid}) is pinned by NVML's UUID of GPU 0")
    assert gpu_ctx.problems[1] == (f"client-0 (pid {child.pid}) is in NVML's process list of GPU 0 "
                                   "with its own memory (not listed)")


def test_in_a_container_nvmls_host_pids_are_a_note_not_a_failure(
        gpu_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, (4242, 4243), {4242: 700 * 2**20, 4243: 700 * 2**20})
    checks = acceptance_checks()
    monkeypatch.setattr(gpu_ctx, "wait_until", lambda *a, **k: None)

    checks.check_on_gpu(gpu_ctx, {"client-0": 101, "client-1": 102})
    checks.check_client_memory(gpu_ctx, {0: "-", 1: "-"}, {0: 101, 1: 102})

    assert gpu_ctx.problems == []
    assert len(gpu_ctx.notes) == 2 and all("host pids" in note for note in gpu_ctx.notes)


def test_an_older_driver_and_a_mig_gpu_are_read_by_the_checks(
        gpu_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, (300,), {300: GB}, used=3 * GB, process_api=2)
    checks = acceptance_checks()
    assert checks.gpu_processes(gpu_ctx) == {300: GB}  # the _v2 call, as nvidia-ml-py 13 needs
    assert checks.gpu_memory(gpu_ctx) == (3 * GB, 77 * GB)

    lib = FakeNvml([FakeGpu(mig=(FakeMig(memory_total=20 * GB, memory_used=2 * GB, pids=(301,),
                                         process_memory={301: GB}),))])
    lib.nvmlInit()
    monkeypatch.setattr(checks, "_NVML", [lib])
    assert checks.gpu_processes(gpu_ctx) == {301: GB}  # the MIG instance's list (its parent's: root)
    assert checks.gpu_memory(gpu_ctx) == (2 * GB, 18 * GB)


def test_each_client_rows_gpu_memory_is_what_nvml_says_its_process_holds(
        gpu_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, (101, 102, 103, 999), {101: 1_288_490_188, 102: 812 * 2**20, 103: 3 * GB,
                                                   999: GB})
    checks = acceptance_checks()

    checks.check_client_memory(gpu_ctx, {0: "1.2 GiB", 1: "812 MiB", 2: "-"}, {0: 101, 1: 102, 2: 103})

    assert gpu_ctx.problems == [
        "client-2's row shows its GPU memory: '-' (NVML: 2861 MiB for pid 103)"]
    assert checks.memory_bytes("1.4 GiB") == int(1.4 * 2**30) and checks.memory_bytes("-") is None


async def test_the_tui_step_reads_gpu_and_memory_off_the_clients_table() -> None:
    from launcher.events import GpuSample, GpuStats, ProcessStarted, RunStarted
    from launcher.tui.clients import ClientsTable
    from tests.test_tui import NOW, Script, screen_text, settle

    steps = sys.modules["acceptance_steps"]
    script = Script([
        RunStarted("r", "federated", "mobilenetv2", "cifar10", "iid", 5, 3, "/runs/r", NOW - 9.0,
                   {0: 0, 1: 0, 2: 0}),
        *(ProcessStarted(f"client-{c}", 110 + c, "supernode", 0, c) for c in range(3)),
        GpuStats((GpuSample(0, "NVIDIA H200", 90, 9 * GIB_, 140 * GIB_, (110, 111),
                            {110: 1_288_490_188, 111: 812 * 2**20}),),
                 held={"client-0": 1_288_490_188, "client-1": 812 * 2**20}),
    ])
    async with script.app().run_test(size=(160, 48)) as pilot:
        await settle(pilot, script)
        for _ in range(200):  # on a loaded machine the table may need a few more frames
            text = screen_text(pilot.app.query_one(ClientsTable))
            if len(steps.client_rows(text)) == 3 and "GiB" in text:
                break
            await pilot.pause(0.05)

    rows = steps.client_rows(text)

    assert {c: (gpu, memory) for c, (gpu, memory, _) in rows.items()} == {
        0: ("0", "1.2 GiB"), 1: ("0", "812 MiB"), 2: ("0", "-")}, text


def test_memory_back_and_no_process_of_the_run_on_the_gpu(
        gpu_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = acceptance_checks()
    monkeypatch.setattr(gpu_ctx, "wait_until", lambda *a, **k: None)

    fake_nvml(monkeypatch, (), {}, used=2 * GB)
    checks.check_released(gpu_ctx, {101, 102}, baseline=2 * GB - 100 * 2**20)
    assert gpu_ctx.problems == []

    fake_nvml(monkeypatch, (102,), {102: GB}, used=3 * GB)
    checks.check_released(gpu_ctx, {101, 102}, baseline=2 * GB)
    assert gpu_ctx.problems[0] == "NVML lists no process of the run on GPU 0 after it ([102])"
    assert gpu_ctx.problems[1].startswith("GPU 0 memory back at its starting level: 2.79 GiB in use")


def test_the_out_of_memory_line_fedlaunch_prints_is_recognised() -> None:
    from launcher.events import ClientProgress
    from launcher.planning.gpus import Nvml as RealNvml
    from launcher.supervision.observe import oom_text

    lib = FakeNvml([FakeGpu(name="NVIDIA H200", memory_total=140 * GB, memory_used=139 * GB)])
    plan = SimpleNamespace(client_gpus={0: 0, 1: 0}, pooled=(), cfg=SimpleNamespace(batch_size=5000))
    event = ClientProgress(client=1, state="failed", round=1, gpu=0, error="out of memory",
                           detail="CUDA out of memory. Tried to allocate 9.16 GiB")
    line = f"fedlaunch: error: {oom_text(plan, RealNvml(lib), event)}"  # type: ignore[arg-type]

    said = acceptance_checks().oom_report(line, 0)

    assert said is not None, line
    assert said.groups() == ("NVIDIA H200", "129.5", "130.4")
    assert acceptance_checks().oom_report(line, 1) is None
    assert acceptance_checks().oom_report(line.replace("smaller --batch-size", "other"), 0) is None
