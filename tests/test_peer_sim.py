"""bench/peer_sim.py's parts: process-set PSS, metrics.jsonl figures, the files it writes for Flower."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from fedcore.config import RunConfig, from_run_config
from fedcore.rundir import RunDir
from launcher.planning.plan import run_config_toml
from tests.runs import wait_until

PARTS = Path(__file__).resolve().parents[1] / "bench" / "peer_sim_parts.py"


@pytest.fixture(scope="module")
def parts() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_sim_parts", PARTS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_proc(root: Path, pid: int, ppid: int, start: int, pss: int, env: dict[str, str],
              argv: list[str], comm: str = "python3", cpu_ticks: tuple[int, int] = (0, 0)) -> None:
    """A /proc/PID folder with the four files ProcessSet reads, laid out as Linux writes them."""
    d = root / str(pid)
    d.mkdir(parents=True)
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(cpu_ticks[0]), str(cpu_ticks[1])] + ["0"] * 6 + \
        [str(start)] + ["0"] * 30
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (d / "smaps_rollup").write_text(
        f"55a4c000-7ffd1000 ---p 00000000 00:00 0  [rollup]\nRss:  {pss * 2} kB\nPss:  {pss} kB\n"
        f"Pss_Anon:  {pss // 2} kB\n")
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_process_set_sums_the_tree_and_the_marked_daemons_only(parts: ModuleType,
                                                                tmp_path: Path) -> None:
    # Prepare: a root (start tick 1000) with a child; a SuperLink it detached (parent init) and
    # a Ray daemon, both marked; a later process of someone else's; an older marked one; a
    # child that cleared its environment; a command name with spaces and parentheses.
    mark = {"PATH": "/bin", "FEDLAUNCH_PEER_SIM_RUN": "abc"}
    fake_proc(tmp_path, 200, 1, 1000, 100_000, mark, ["/v/bin/python3", "/v/bin/flwr", "run"],
              cpu_ticks=(150, 50))
    fake_proc(tmp_path, 90, 200, 1001, 5_000, {}, ["/usr/bin/env-less"])  # listed before its parent
    fake_proc(tmp_path, 300, 1, 1010, 200_000, mark,
              ["/v/bin/python3", "/v/bin/flower-superlink", "--simulation"])
    fake_proc(tmp_path, 301, 300, 1020, 300_000, mark, ["/v/ray/core/src/ray/gcs/gcs_server"],
              comm="gcs_server")
    fake_proc(tmp_path, 302, 301, 1030, 40_000, mark, ["ray::IDLE"], comm="ray::IDLE) (x")
    fake_proc(tmp_path, 400, 1, 1040, 999_000, {"FEDLAUNCH_PEER_SIM_RUN": "other"}, ["/bin/other"])
    fake_proc(tmp_path, 50, 1, 10, 777_000, mark, ["/bin/older"])

    # Execute
    procs = parts.ProcessSet(200, "FEDLAUNCH_PEER_SIM_RUN=abc", proc=tmp_path)
    total = procs.sample()

    # Assert
    assert total == 100_000 + 5_000 + 200_000 + 300_000 + 40_000
    assert procs.peak_pss_kb == total and procs.peak_procs == 5
    assert sorted(procs.members) == [90, 200, 300, 301, 302]
    assert procs.names[200] == "flwr" and procs.names[300] == "flower-superlink"
    assert procs.names[301] == "gcs_server" and procs.names[302] == "ray::IDLE"
    assert procs.cpu_seconds() == pytest.approx(200 / parts.TICKS)

    # Execute: the SuperLink exits; a smaller sample leaves the peak as it was
    for name in ("stat", "smaps_rollup", "environ", "cmdline"):
        (tmp_path / "300" / name).unlink()
    (tmp_path / "300").rmdir()
    assert procs.sample() == total - 200_000
    assert procs.peak_pss_kb == total and sorted(procs.alive()) == [90, 200, 301, 302]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def test_process_set_finds_a_real_detached_daemon_and_stops_it(
        parts: ModuleType, tmp_path: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    # Prepare: a root that starts a child and a daemon in its own session, whose parent exits
    # at once (the double fork of a daemon: it leaves the tree); then a stranger, unmarked.
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "mid = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys; "
        "print(subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\"], "
        "start_new_session=True, stdout=subprocess.DEVNULL).pid)'], stdout=subprocess.PIPE, "
        "text=True)\n"
        "daemon = int(mid.communicate()[0])\n"
        f"open({str(pids)!r}, 'w').write(f'{{child.pid}} {{daemon}}')\n"
        "time.sleep(60)\n")
    env = {**os.environ, "FEDLAUNCH_PEER_SIM_RUN": "run-1"}
    root = subprocess.Popen([sys.executable, "-c", code], env=env)
    spawned.append(root)
    procs = parts.ProcessSet(root.pid, "FEDLAUNCH_PEER_SIM_RUN=run-1")
    wait_until(lambda: pids.exists() and pids.read_text(), 60, "the root to start its processes",
               interval=0.05)
    child, daemon = map(int, pids.read_text().split())
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spawned.append(stranger)
    assert parts.stat_of(daemon)[0] != root.pid  # reparented: out of the root's tree

    # Execute
    total = procs.sample()

    # Assert: exactly the root, its child and the daemon; their PSS summed (sharing shifts as
    # the machine's other processes come and go, so the separate reads agree to a few percent)
    assert set(procs.alive()) == {root.pid, child, daemon}
    separate = sum(parts.pss_kb(pid) for pid in (root.pid, child, daemon))
    assert separate > 0 and abs(total - separate) <= 0.1 * separate
    assert stranger.pid not in procs.members

    # Execute: stop what the run left; the stranger is not touched
    names = procs.stop(grace=5.0)
    root.wait(timeout=10)

    # Assert
    assert sorted(names) == ["python -c"] * 3
    assert procs.alive() == [] and stranger.poll() is None


def test_run_figures_from_the_metrics_the_server_app_writes(parts: ModuleType, tmp_path: Path) -> None:
    # Prepare: metrics.jsonl through fedcore's own writer, as its ServerApp writes it, plus a
    # line still being written when the run was read
    run = RunDir(tmp_path).create()
    launched = 1000.0
    run.append_metric("start", time=1004.0, mode="federated", total=3)
    run.append_metric("nodes", time=1010.0, connected=[1, 2], expected=2)
    for n, (start, seconds, acc) in enumerate([(1011.0, 9.5, 0.11), (1020.5, 2.0, 0.2),
                                               (1022.5, 3.0, 0.3)], start=1):
        run.append_metric("round_start", time=start, round=n, total=3)
        run.append_metric("round", time=start + seconds, round=n, total=3, accuracy=acc,
                          seconds=seconds, replies=10, train_started=start + 6.25 if n == 1 else start)
    run.append_metric("end", time=1026.0, exit_reason="completed")
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"event": "round", "round": 4, "accur')

    # Execute
    figures = parts.run_figures(parts.read_records(tmp_path / "metrics.jsonl"), launched)

    # Assert
    assert figures == {
        "rounds": 3, "first_round_start_s": 11.0, "first_training_s": 17.25,
        "round_seconds": [9.5, 2.0, 3.0], "later_round_mean_s": 2.5,
        "accuracy": [0.11, 0.2, 0.3], "replies": [10, 10, 10], "end_s": 26.0,
    }
    assert parts.read_records(tmp_path / "missing.jsonl") == []


def test_flower_reads_the_local_simulation_connection(parts: ModuleType, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    # Prepare
    (tmp_path / "config.toml").write_text(parts.flwr_home_config("peer", 100, 1.0, 0.0))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))

    # Execute: Flower's own reader, as `flwr run APP peer` calls it
    connection = read_superlink_connection("peer")

    # Assert
    assert connection.address == ":local:"
    assert connection.options is not None and connection.options.num_supernodes == 100
    resources = connection.options.backend.client_resources
    assert resources.num_cpus == 1 and isinstance(resources.num_cpus, int)
    assert resources.num_gpus is None
    assert "num-gpus = 0.5" in parts.flwr_home_config("peer", 10, 2, 0.5)


def test_the_peer_app_gets_fedlaunchs_run_config_with_its_own_run_folder(
        parts: ModuleType, tmp_path: Path) -> None:
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    # Prepare: the run_config.toml fedlaunch writes for its run, in its run folder
    cfg = RunConfig(clients=100, partition="iid", fraction_train=0.1, rounds=5,
                    data_dir='/data/"cifar" 10', out_dir=str(tmp_path / "fl"),
                    progress_dir=str(tmp_path / "fl" / "progress"))
    (tmp_path / "fl").mkdir()
    (tmp_path / "fl" / "run_config.toml").write_text(run_config_toml(cfg))
    fedcore_dir = Path(__file__).resolve().parents[1] / "fedcore"

    # Execute
    base = parts.read_run_config(tmp_path / "fl")
    app = parts.write_peer_app(tmp_path / "ray" / "app", fedcore_dir,
                               parts.peer_run_config(base, tmp_path / "ray" / "run"))
    # ... and read back as Flower's Simulation Engine does: the app's defaults fused with
    # `flwr run --run-config FILE`
    fused = get_fused_config_from_dir(app, parse_config_args([str(tmp_path / "ray" / "run_config.toml")]))

    # Assert: the ServerApp sees fedlaunch's config, writing to its own run folder
    want = cfg.replace(out_dir=str(tmp_path / "ray" / "run"),
                       progress_dir=str(tmp_path / "ray" / "run" / "progress"))
    assert from_run_config(dict(fused)) == want
    assert (app / "fedcore" / "server_app.py").read_bytes() == \
        (fedcore_dir / "server_app.py").read_bytes()
    assert not list(app.rglob("__pycache__"))
    with pytest.raises(FileNotFoundError):
        parts.read_run_config(tmp_path / "ray" / "run")


def test_table_and_summary_show_each_runs_figures(parts: ModuleType) -> None:
    row = {"run": "ray-100-1", "side": "ray", "clients": 100, "load": 3.25, "rc": 0,
           "wall_s": 28.44, "first_training_s": 18.1, "round_seconds": [9.7, 1.8, 1.2, 1.2, 2.3],
           "later_round_mean_s": 1.625, "peak_pss_kb": 3_144_000, "peak_procs": 13, "cpu_s": 43.6,
           "left_after_exit": ["flower-superlink"], "accuracy": [0.1045, 0.1287]}
    line = parts.table([row]).splitlines()[-1]
    assert line == ("| ray-100-1 | ray | 100 | 3.2 | 0 | 28.4 | 18.1 | 1.62 [1.8, 1.2, 1.2, 2.3] | "
                    "3,144 (13) | 44 | flower-superlink | 0.1045, 0.1287 |")
    other = {**row, "run": "ray-100-2", "wall_s": 25.0, "accuracy": [0.1, 0.15]}
    failed = {**row, "run": "ray-100-3", "rc": 1}
    assert parts.summary([row, other, failed]).splitlines()[-1] == (
        "| ray | 100 | 2 (+1 failed) | 25.0-28.4 | 18.1 | 1.62 | 3,144 | 44 | 0.1287-0.1500 |")
