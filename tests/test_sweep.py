"""The sweep's grid, GPU packing, queue, stop and resume, screen and report, with tiny child scripts."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedcore.errors import UsageError
from launcher.cli import main
from launcher.planning.gpus import Nvml
from launcher.planning.profiles import published_of
from launcher.report_sweep import sweep_report
from launcher.sweep.cli import gpu_slots
from launcher.sweep.grid import build_grid, parse_seeds
from launcher.sweep.packing import GpuSlots
from launcher.sweep.queue import CellEvent, SweepQueue
from launcher.sweep.state import CellState, SweepState, load_sweep
from tests.fake_nvml import GB, FakeGpu, FakeNvml, fleet

# A stand-in for a cell's `fedlaunch --headless` run: writes the records a run writes to its
# metrics.jsonl, continues after its last round when the folder already holds a run, and stops
# as a run does on SIGINT (exit 130). With HOLD=r it waits after round r until it is signalled.
FAKE_CELL = r'''
import json, signal, sys, time
from pathlib import Path
run, total, base, hold = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
run.mkdir(parents=True, exist_ok=True)
(run / "config.json").write_text("{}")
metrics = run / "metrics.jsonl"
def write(**record):
    with metrics.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
def stop(sig, frame):
    write(event="end", exit_reason="interrupted")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
old = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
first = max([r["round"] for r in old if r["event"] == "round"], default=0) + 1
write(event="start", total=total, first_round=first)
for r in range(first, total + 1):
    write(event="round", round=r, total=total, accuracy=round(base + 0.1 * r, 4))
    if r == hold:
        (run.parent / (run.name + ".held")).touch()
        time.sleep(60)
write(event="end", exit_reason="completed")
'''


def make_state(tmp_path: Path, partitions: list[str], seeds: list[str]) -> SweepState:
    cells = build_grid({"partition": partitions}, seeds)
    state = SweepState(tmp_path / "sweep", None, {"rounds": "3"}, {"partition": partitions}, seeds,
                       "cpu", None, None, [CellState(c.name, dict(c.settings)) for c in cells])
    state.path.mkdir()
    state.save()
    return state


def fake_queue(state: SweepState, tmp_path: Path, hold: dict[str, int], calls: list[tuple[str, bool]],
               events: list[CellEvent], slots: GpuSlots | None = None, need: int = 0) -> SweepQueue:
    script = tmp_path / "fake_cell.py"
    script.write_text(FAKE_CELL)

    def argv(cell: CellState, gpus: str, resume: bool) -> list[str]:
        calls.append((cell.name, resume))
        base = 0.1 * int(cell.settings["seed"]) + (0.05 if cell.settings["partition"] == "iid" else 0)
        return [sys.executable, str(script), str(state.cell_dir(cell)), "3", str(base),
                str(hold.get(cell.name, 0))]

    return SweepQueue(state, slots or GpuSlots([]), argv, lambda cell: need, {}, events.append,
                      poll=0.05)


async def stop_when(path: Path, queue: SweepQueue, sig: int = signal.SIGINT) -> int:
    task = asyncio.create_task(queue.run())
    for _ in range(400):
        if path.exists():
            break
        await asyncio.sleep(0.05)
    queue.stop(sig)
    return await task


def test_seeds_and_grid_order() -> None:
    # Execute
    cells = build_grid({"partition": ["iid", "classes:2"], "lr": ["0.1", "0.01"]}, parse_seeds("0-1"))

    # Assert: every seed's whole row first, folder names that read as the settings
    assert parse_seeds("0-2,7") == ["0", "1", "2", "7"]
    assert [c.name for c in cells[:4]] == [
        "partition-iid_lr-0.1_seed-0", "partition-iid_lr-0.01_seed-0",
        "partition-classes2_lr-0.1_seed-0", "partition-classes2_lr-0.01_seed-0"]
    assert [c.seed for c in cells] == ["0"] * 4 + ["1"] * 4
    assert cells[0].group() == cells[4].group() == (("partition", "iid"), ("lr", "0.1"))
    for bad in ("2-0", "a", "0,0", ""):
        with pytest.raises(UsageError):
            parse_seeds(bad)


@pytest.mark.parametrize("argv, says", [
    (["sweep", "--seeds", "2-0", "--dataset", "synthetic"], "runs backwards"),
    (["sweep", "--partition", "iid,iid"], "iid listed twice"),
    (["sweep", "--partition", "iid,bogus:3", "--dataset", "synthetic"], "cell partition-bogus3"),
    (["sweep", "--seeds", "0-1", "--seed", "3"], "not both"),
    (["sweep", "--profile", "no-such-profile"], "unknown --profile"),
    (["sweep", "--resume", "/no/such/sweep"], "not a sweep folder"),
    (["sweep", "--resume", "/no/such/sweep", "--lr", "0.1"], "drop --lr"),
    (["sweep", "--dataset", "synthetic", "--max-parallel", "0"], "--max-parallel must be"),
    (["sweep", "--gpus", "7", "--dataset", "synthetic"], "no such GPU"),
    (["sweep", "--bogus"], "unrecognized arguments"),
])
def test_bad_sweep_input_is_one_line_and_exit_2(argv: list[str], says: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("launcher.sweep.cli.Nvml", lambda: Nvml(lib=FakeNvml(driver=False)))

    # Execute
    code = main([*argv, "--out", str(tmp_path / "s")] if "--resume" not in argv else argv)

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


def test_gpu_packing_through_the_launchers_nvml() -> None:
    # Prepare: two GPUs with 10 GB free; a 10-client CNN cell needs about 6.6 GB
    state = SweepState(Path("/x"), None, {}, {}, [], "all", None, None)
    slots = gpu_slots(state, Nvml(lib=fleet(2, free=10 * GB)))
    need = 11 * 600_000_000

    # Execute / Assert: one cell per GPU, the third waits until one finishes
    assert slots.take("a", need) == "0"
    assert slots.take("b", need) == "1"
    assert slots.take("c", need) is None
    slots.release("b")
    assert slots.take("c", need) == "1"

    # Roomy GPUs hold several cells each, up to --max-parallel
    roomy = gpu_slots(SweepState(Path("/x"), None, {}, {}, [], "0", 3, None),
                      Nvml(lib=fleet(2, free=80 * GB)))
    assert [roomy.take(n, need) for n in "abcd"] == ["0", "0", "0", None]

    # A cell bigger than any one GPU runs alone on all of them
    small = gpu_slots(state, Nvml(lib=fleet(2, free=4 * GB)))
    assert small.take("big", need) == "0,1" and small.take("next", need) is None
    small.release("big")
    assert small.take("next", need) == "0,1"

    # Free memory unknown: one cell per GPU; no GPU at all: the CPU, one at a time
    blind = GpuSlots(Nvml(lib=FakeNvml([FakeGpu(fail=frozenset({"nvmlDeviceGetMemoryInfo"}))])).devices())
    assert blind.take("a", need) == "0" and blind.take("b", need) is None
    cpu = gpu_slots(state, Nvml(lib=FakeNvml(driver=False)))
    assert cpu.take("a", need) == "cpu" and cpu.take("b", need) is None


def test_gpu_cells_run_side_by_side(tmp_path: Path) -> None:
    # Prepare: two fake GPUs that each fit one cell; both cells hold after round 1
    state = make_state(tmp_path, ["iid", "classes:2"], ["0"])
    slots = GpuSlots(Nvml(lib=fleet(2, free=10 * GB)).devices())
    calls: list[tuple[str, bool]] = []
    events: list[CellEvent] = []
    queue = fake_queue(state, tmp_path, {c.name: 1 for c in state.cells}, calls, events, slots,
                       need=11 * 600_000_000)

    async def both_held() -> int:
        task = asyncio.create_task(queue.run())
        held = [state.path / f"{c.name}.held" for c in state.cells]
        for _ in range(400):
            if all(p.exists() for p in held):
                break
            await asyncio.sleep(0.05)
        running = [c.gpus for c in state.cells if c.state == "running"]
        queue.stop(signal.SIGINT)
        code = await task
        assert sorted(running) == ["0", "1"]
        return code

    # Execute / Assert
    assert asyncio.run(both_held()) == 130
    assert [c.state for c in state.cells] == ["stopped", "stopped"]


def test_queue_stop_and_resume(tmp_path: Path) -> None:
    # Prepare: 2 seeds x 2 partitions; the second cell waits after its round 1
    state = make_state(tmp_path, ["iid", "classes:2"], ["0", "1"])
    cut = state.cells[1]
    calls: list[tuple[str, bool]] = []
    events: list[CellEvent] = []
    queue = fake_queue(state, tmp_path, {cut.name: 1}, calls, events)

    # Execute: SIGINT while the second cell runs
    code = asyncio.run(stop_when(state.path / f"{cut.name}.held", queue))

    # Assert: the first cell done, the second stopped at round 1, the rest untouched
    saved = load_sweep(state.path)
    assert code == 130
    assert [c.state for c in saved.cells] == ["done", "stopped", "pending", "pending"]
    assert (saved.cells[1].round, saved.cells[1].exit_code) == (1, 130)
    assert not state.cell_dir(state.cells[2]).exists()
    done_metrics = (state.cell_dir(state.cells[0]) / "metrics.jsonl").read_bytes()
    assert [e.kind for e in events if e.cell == cut.name] == ["started", "round", "stopped"]

    # Execute: resume from sweep.json alone
    calls.clear()
    again = fake_queue(saved, tmp_path, {}, calls, events)
    assert asyncio.run(again.run()) == 0

    # Assert: the finished cell is not run again, the cut one goes on from its round 2
    assert calls == [(cut.name, True), (state.cells[2].name, False), (state.cells[3].name, False)]
    assert (state.cell_dir(state.cells[0]) / "metrics.jsonl").read_bytes() == done_metrics
    records = [json.loads(x) for x in (state.cell_dir(cut) / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["event"] == "round"] == [1, 2, 3]
    assert [r["first_round"] for r in records if r["event"] == "start"] == [1, 2]
    assert [c.state for c in load_sweep(state.path).cells] == ["done"] * 4


def test_a_failed_cell_goes_on_from_its_checkpoint_once(tmp_path: Path) -> None:
    # Prepare: the first cell's run dies (exit 1) after its round 1, every time it runs
    state = make_state(tmp_path, ["iid"], ["0", "1"])
    script = tmp_path / "dying.py"
    script.write_text(FAKE_CELL.replace("if r == hold:", "if r == hold:\n        sys.exit(1)"))
    calls: list[tuple[str, bool]] = []
    events: list[CellEvent] = []
    queue = fake_queue(state, tmp_path, {}, calls, events)
    first = state.cells[0].name

    def argv(cell: CellState, gpus: str, resume: bool) -> list[str]:
        calls.append((cell.name, resume))
        hold = str(len([c for c in calls if c[0] == first])) if cell.name == first else "0"
        return [sys.executable, str(script), str(state.cell_dir(cell)), "3", "0", hold]

    queue.argv = argv

    # Execute
    code = asyncio.run(queue.run())

    # Assert: run, resumed once from its checkpoint (dying again after round 2), then given up
    assert code == 1
    assert calls == [(first, False), (first, True), (state.cells[1].name, False)]
    assert [c.state for c in load_sweep(state.path).cells] == ["failed", "done"]
    rounds = [json.loads(x).get("round") for x in
              (state.cell_dir(state.cells[0]) / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rounds if r] == [1, 2]


def test_report_of_a_sweep_matches_its_metrics(tmp_path: Path) -> None:
    # Prepare: a finished 2 x 2 sweep of fake cells, and a published table
    state = make_state(tmp_path, ["iid", "classes:2"], ["0", "1"])
    state.published = {"source": "a paper", "metric": "best", "setting": "partition",
                       "profile_value": None, "values": {"iid": [71.32, 0.33]}}
    state.save()
    assert asyncio.run(fake_queue(state, tmp_path, {}, [], []).run()) == 0

    # Execute
    table, paths = sweep_report(state.path)

    # Assert: mean and sd over seeds of each cell's best and final accuracy, in percent
    rows = list(csv.DictReader((state.path / "sweep-report.csv").open()))
    assert [r["partition"] for r in rows] == ["iid", "classes:2"]
    for row in rows:
        best, final = [], []
        for seed in ("0", "1"):
            lines = (state.path / f"partition-{row['partition'].replace(':', '')}_seed-{seed}"
                     / "metrics.jsonl").read_text().splitlines()
            acc = [json.loads(x)["accuracy"] for x in lines if '"event": "round"' in x]
            best.append(100 * max(acc))
            final.append(100 * acc[-1])
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(best), abs=1e-4)
        assert float(row["best_sd"]) == pytest.approx(statistics.stdev(best), abs=1e-4)
        assert float(row["final_mean"]) == pytest.approx(statistics.mean(final), abs=1e-4)
        assert float(row["final_sd"]) == pytest.approx(statistics.stdev(final), abs=1e-4)
        assert row["seeds_run"] == "2" and row["complete"] == "2" and row["rounds"] == "3"
    assert rows[0]["published_mean"] == "71.3200" and rows[1]["published_mean"] == ""
    assert "| iid | 2 of 2 | 3 | 40.00 ± 7.07 | 40.00 ± 7.07 | 71.32 ± 0.33 |" in table
    assert [p.name for p in paths] == ["sweep-report.md", "sweep-report.csv", "sweep-curves.png"]
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_niid_bench_profile_names_its_published_figures() -> None:
    # Execute
    table = published_of("niid-bench-fedavg")

    # Assert
    assert table is not None and table["metric"] == "best" and table["setting"] == "partition"
    assert table["values"] == {"iid": [71.32, 0.33], "dirichlet:0.5": [62.47, 0.43],
                               "classes:2": [51.17, 1.09], "classes:3": [59.11, 0.87]}
    assert table["profile_value"] == "dirichlet:0.5"


def test_sweep_screen_shows_the_grid_and_q_stops(tmp_path: Path) -> None:
    from textual.widgets import DataTable

    from launcher.tui.sweep_app import SweepApp

    # Prepare: the first cell finishes, the second holds after round 1
    state = make_state(tmp_path, ["iid", "classes:2"], ["0"])
    held = state.path / f"{state.cells[1].name}.held"

    def make(on_event: Callable[[CellEvent], None]) -> SweepQueue:
        queue = fake_queue(state, tmp_path, {state.cells[1].name: 1}, [], [])
        queue.on_event = on_event
        return queue

    async def drive() -> tuple[int | None, list[str], str]:
        app = SweepApp(make)
        async with app.run_test(size=(120, 30)) as pilot:
            for _ in range(400):
                if held.exists() and state.cells[1].round == 1:
                    break
                await pilot.pause(0.05)
            await pilot.pause(0.6)
            table = app.query_one("#grid", DataTable)
            shown = [str(table.get_cell_at((i, 1))) for i in range(2)]
            now = str(app.query_one("#now").render()) + str(app.query_one("#events").render())
            await pilot.press("q")
            for _ in range(200):
                if app.return_value is not None:
                    break
                await pilot.pause(0.05)
        return app.return_value, shown, now

    # Execute
    code, shown, now = asyncio.run(drive())

    # Assert
    assert "done" in shown[0] and "running" in shown[1]
    assert f"{state.cells[1].name} round 1/3 accuracy 0.1000" in now
    assert f"[1/2] {state.cells[0].name}: done 3 rounds, best accuracy 0.3500" in now
    assert code == 130
    assert [c.state for c in load_sweep(state.path).cells] == ["done", "stopped"]
