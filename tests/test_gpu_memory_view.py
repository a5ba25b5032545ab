"""GPU memory per client and per worker from NVML's process list, and pooled clients' GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.client_app import ProgressFile
from fedcore.config import RunConfig
from launcher.events import (
    ClientProgress,
    GpuSample,
    GpuStats,
    PoolStats,
    ProcessStarted,
    RunStarted,
    WorkerInfo,
)
from launcher.planning.gpus import Nvml
from launcher.planning.prepare import LaunchOptions, make_plan
from launcher.supervision.follow import progress_event
from launcher.supervision.observe import held_by, oom_text, pid_namespace_note
from launcher.tui.clients import ClientsTable
from launcher.tui.workers import WorkersTable
from tests.fake_nvml import GB, FakeGpu, FakeNvml, fleet
from tests.test_tui import NOW, Script, settle

MIB = 2**20


def test_nvmls_process_memory_is_summed_per_process_of_the_run() -> None:
    lib = FakeNvml([FakeGpu(pids=(110, 111, 112, 900), process_memory={
        110: 1_200 * MIB, 111: 300 * MIB, 112: None, 900: 5 * GB})])
    samples = Nvml(lib).sample()
    owners = {110: "client-0", 111: "client-0", 112: "client-1", 120: "client-2"}

    held = held_by(samples, owners)

    assert held == {"client-0": 1_500 * MIB, "client-1": None}  # 111: a descendant of client-0
    assert pid_namespace_note(tuple(samples), owners) is None
    assert "host pids" in (pid_namespace_note(tuple(samples), {1: "client-0"}) or "")


async def test_each_client_row_and_worker_row_shows_its_gpu_memory() -> None:
    script = Script([
        RunStarted("r", "federated", "cnn", "cifar10", "iid", 5, 4, "/runs/r", NOW - 9.0,
                   {0: 0, 1: 0, 2: 0, 3: 0}),
        ProcessStarted("client-0", 110, "supernode", 0, 0),
        ProcessStarted("client-1", 111, "supernode", 0, 1),
        ClientProgress(2, "training", 1, gpu=1),
        ClientProgress(3, "waiting", 1),
        PoolStats((WorkerInfo("worker-0", "1", "training", 2, 900.0, 3),
                   WorkerInfo("worker-1", "0", "idle", None, 0.0, 2))),
        GpuStats((GpuSample(0, "NVIDIA H200", 50, 9 * GB, 140 * GB, (110, 111)),),
                 held={"client-0": 1_400 * MIB, "client-1": 812 * MIB, "worker-0": 2 * 2**30,
                       "worker-1": 700 * MIB}),
    ])
    async with script.app().run_test(size=(160, 48)) as pilot:
        await settle(pilot, script)
        table = pilot.app.query_one(ClientsTable)
        workers = pilot.app.query_one(WorkersTable)

        memory = {c: str(table.get_cell(str(c), "gpu_memory")).strip() for c in range(4)}
        worker_memory = [str(workers.get_cell(f"worker-{k}", "gpu_memory")).strip() for k in range(2)]
        gpu = str(table.get_cell("2", "gpu")).strip()

    assert memory == {0: "1.4 GiB", 1: "812 MiB", 2: "2.0 GiB", 3: "-"}  # 2: its worker's
    assert worker_memory == ["2.0 GiB", "700 MiB"]
    assert gpu == "1"


# --- pooled clients carry their worker's GPU --------------------------------------------------------

def pooled_plan(tmp_path: Path, gpus: str) -> object:
    cfg = RunConfig(clients=40, dataset="synthetic", batch_size=64)
    return make_plan(cfg, tmp_path / "run", LaunchOptions(gpus=gpus, workers=4, dry_run=True),
                     nvml=Nvml(fleet(2)))


def test_pooled_clients_are_on_their_workers_gpu_and_an_oom_says_which(tmp_path: Path) -> None:
    one = pooled_plan(tmp_path, "1")
    two = pooled_plan(tmp_path, "0,1")
    nvml = Nvml(FakeNvml([FakeGpu(), FakeGpu(name="NVIDIA H200", memory_total=140 * GB,
                                             memory_used=139 * GB)]))
    event = ClientProgress(client=7, state="failed", round=3, gpu=1, error="out of memory",
                           detail="CUDA out of memory. Tried to allocate 2.00 GiB")

    text = oom_text(one, nvml, event)  # type: ignore[arg-type]

    assert one.client_gpus == dict.fromkeys(range(40), 1) and one.unplaced == ()  # type: ignore[attr-defined]
    assert two.unplaced == tuple(range(40))  # type: ignore[attr-defined]
    assert text.startswith("client-7 ran out of memory on GPU 1 (NVIDIA H200, 129.5 of 130.4 GiB "
                           "in use) in round 3: CUDA out of memory. Tried to allocate 2.00 GiB. 4 "
                           "worker(s) training 40 clients share it; use fewer clients per GPU")
    assert text.endswith("or a smaller --batch-size (now 64)")


def test_a_workers_progress_record_names_its_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLAUNCH_WORKER_GPU", "1")
    ProgressFile(RunConfig(out_dir=str(tmp_path)), 7).write("training", round=2)
    record = json.loads((tmp_path / "progress" / "client-7.json").read_text())

    event = progress_event(record, {7: None})

    assert record["gpu"] == 1
    assert isinstance(event, ClientProgress) and event.gpu == 1
    assert progress_event({"client": 7, "gpu": None}, {7: 0}).gpu is None  # type: ignore[union-attr]
    assert progress_event({"client": 7}, {7: 0}).gpu == 0  # type: ignore[union-attr]


async def test_an_unplaced_pooled_client_shows_no_gpu_until_a_worker_trains_it() -> None:
    script = Script([
        RunStarted("r", "federated", "cnn", "cifar10", "iid", 5, 2, "/runs/r", NOW - 9.0,
                   {0: None, 1: None}, unplaced=(0, 1)),
        ClientProgress(1, "training", 1, gpu=1),
    ])
    async with script.app().run_test(size=(120, 40)) as pilot:
        await settle(pilot, script)
        table = pilot.app.query_one(ClientsTable)
        shown = [str(table.get_cell(str(c), "gpu")).strip() for c in range(2)]

    assert shown == ["-", "1"]


# --- the supervisor: memory per process tree, and NVML's host pids in a container ---------------

def supervised_on_a_fake_gpu(tmp_path: Path, lib: FakeNvml, own_pids_listed: bool) -> list[object]:
    """A 2-client run of tiny scripts (tests/test_supervisor.py) planned on GPU 0 of `lib`; with
    `own_pids_listed`, NVML lists each client's pid as it starts (700 MiB each)."""
    import asyncio
    import dataclasses

    from launcher.events import EventBus
    from launcher.network.ports import free_port
    from launcher.planning.gpus import GpuInfo
    from launcher.planning.placement import Placement
    from launcher.supervision.supervisor import Supervisor
    from tests.test_supervisor import CLIENT, LINK, SUBMIT, federated_plan, scripts

    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "8", "linger"))
    plan = federated_plan(tmp_path, port)
    gpu = GpuInfo(0, "GPU-00000000-fake-uuid", "NVIDIA H200", 140 * GB, 100 * GB)
    plan = dataclasses.replace(plan, placement=Placement((gpu,), (0, 0)), processes=tuple(
        dataclasses.replace(s, gpu=0) if s.role == "supernode" else s for s in plan.processes))
    bus, events = EventBus(), []
    bus.subscribe(events.append)

    def listed(event: object) -> None:
        if own_pids_listed and isinstance(event, ProcessStarted) and event.role == "supernode":
            lib.gpus[0].pids += (event.pid,)
            lib.gpus[0].process_memory[event.pid] = 700 * MIB

    bus.subscribe(listed)
    supervisor = Supervisor(plan, bus, nvml=Nvml(lib), factory=factory, stop_timeout=1.0,
                            gpu_interval=0.1)
    assert asyncio.run(supervisor.run()) == 0
    return events


def test_the_supervisor_reports_each_clients_gpu_memory(tmp_path: Path) -> None:
    from launcher.events import Notice

    events = supervised_on_a_fake_gpu(tmp_path, FakeNvml([FakeGpu(pids=(4242,))]), True)

    held = [e.held for e in events if isinstance(e, GpuStats) and e.held]
    assert held and held[-1] == {"client-0": 700 * MIB, "client-1": 700 * MIB}
    assert not [e for e in events if isinstance(e, Notice) and "host pids" in e.text]


def test_nvml_listing_none_of_the_runs_pids_is_said_once_as_a_note(tmp_path: Path) -> None:
    from launcher.events import Notice

    events = supervised_on_a_fake_gpu(tmp_path, FakeNvml([FakeGpu(pids=(4242, 4243))]), False)

    notes = [e for e in events if isinstance(e, Notice) and "host pids" in e.text]
    assert len(notes) == 1 and notes[0].level == "info"
    assert all(not e.held for e in events if isinstance(e, GpuStats))
