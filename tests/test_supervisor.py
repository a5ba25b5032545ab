"""The Supervisor with tiny child scripts in place of Flower (its process factory is injected):
start order, restarts, the named failure, the stop path and the exit codes, in seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fedcore.config import RunConfig
from launcher.events import Event, EventBus, Notice, ProcessExited, ProcessStarted, RunFinished
from launcher.network.ports import free_port
from launcher.planning.placement import Placement
from launcher.planning.plan import Plan
from launcher.supervision.outcome import EXIT_SIGHUP, EXIT_SIGTERM
from launcher.supervision.procs import ManagedProcess, ProcessSpec
from launcher.supervision.supervisor import Supervisor

# A SuperLink stand-in: listens on its port after `delay` s, says so, then serves until killed
# (or exits with `code` after `life` s).
LINK = r"""
import socket, sys, time
port, delay, life, code = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
time.sleep(delay)
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port)); sock.listen(16)
print("superlink listening", flush=True)
sock.settimeout(0.05)
end = time.monotonic() + life
while time.monotonic() < end:
    try:
        sock.accept()[0].close()
    except OSError:
        pass
print("superlink going down", flush=True)
sys.exit(code)
"""

# The `flwr run` stand-in: writes `rounds` round records and the app's 'end' record, then
# lingers ignoring SIGTERM (as a slow goodbye would) unless told to exit.
SUBMIT = r"""
import json, signal, sys, time
metrics, rounds, linger = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "linger"
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def write(**record):
    with open(metrics, "a") as fh:
        fh.write(json.dumps({"time": time.time(), **record}) + "\n")
write(event="start", total=rounds, model="cnn", dataset="synthetic")
for r in range(1, rounds + 1):
    time.sleep(0.2)
    write(event="round", round=r, total=rounds, accuracy=0.1 * r, loss=2.0 / r, train_images=100 * r)
if linger:
    write(event="end", exit_reason="completed")
    time.sleep(600)
"""

# A client: serves until killed, ignoring SIGTERM; or exits with a code, the first time only
# when given a marker file.
CLIENT = r"""
import os, signal, sys, time
mode = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("client up", flush=True)
if mode.startswith("exit:"):
    _, code, marker = mode.split(":", 2)
    if not marker or not os.path.exists(marker):
        if marker:
            open(marker, "w").close()
        time.sleep(0.3)
        print("client failing", flush=True)
        sys.exit(int(code))
time.sleep(600)
"""

LOCAL = r"""
import json, sys, time
metrics = sys.argv[1]
with open(metrics, "a") as fh:
    fh.write(json.dumps({"event": "start", "time": time.time(), "total": 2}) + "\n")
    for e in (1, 2):
        fh.write(json.dumps({"event": "epoch", "epoch": e, "total": 2, "accuracy": 0.5, "loss": 1.0,
                             "train_images": 10 * e, "time": time.time()}) + "\n")
    fh.write(json.dumps({"event": "end", "exit_reason": "completed", "time": time.time()}) + "\n")
time.sleep(600)  # a slow finish after its last record must not hold the command
"""


class Recorder:
    """Every event, with the monotonic time it was published."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.events.append((time.monotonic(), event))

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for _, e in self.events if isinstance(e, kind)]

    def when(self, name: str) -> float:
        return next(t for t, e in self.events if isinstance(e, ProcessStarted) and e.name == name)


def scripts(run_dir: Path, port: int, **argv: tuple[str, ...]) -> Callable[..., ManagedProcess]:
    """A process factory that runs each spec as the tiny script given by its name."""

    def make(spec: ProcessSpec, log: Path, on_line: Callable[[str, str], None],
             env: dict[str, str], cwd: Path | None) -> ManagedProcess:
        script = argv[spec.name.replace("-", "_")]
        spec = dataclasses.replace(spec, argv=(sys.executable, "-c", *script))
        return ManagedProcess(spec, log, on_line, env, cwd)

    return make


def federated_plan(run_dir: Path, port: int, clients: int = 2, max_restarts: int = 3) -> Plan:
    specs = [ProcessSpec("superlink", "superlink", ("flower-superlink",))]
    specs += [ProcessSpec(f"client-{i}", "supernode", ("flower-supernode",), client=i,
                          restartable=True) for i in range(clients)]
    specs.append(ProcessSpec("server", "submit", ("flwr", "run")))
    cfg = RunConfig(dataset="synthetic", model="cnn", clients=clients, rounds=2)
    return Plan("federated", cfg, run_dir, Placement((), (None,) * clients), tuple(specs),
                f"127.0.0.1:{port}", max_restarts)


def supervise(plan: Plan, factory: Callable[..., ManagedProcess], *,
              stop: tuple[float, str] | None = None, **kwargs: object) -> tuple[int, Recorder, float]:
    """Run the supervisor to its end (asking for a stop after `stop[0]` s, if given); its exit
    code, the events, and the seconds it took."""
    bus = EventBus()
    recorder = Recorder()
    bus.subscribe(recorder)
    supervisor = Supervisor(plan, bus, factory=factory, stop_timeout=1.0, **kwargs)  # type: ignore[arg-type]

    async def go() -> int:
        if stop is not None:
            asyncio.get_running_loop().call_later(stop[0], supervisor.request_stop, stop[1])
        return await supervisor.run()

    started = time.monotonic()
    code = asyncio.run(go())
    seconds = time.monotonic() - started
    gone = [p for p in supervisor.processes.values() if p.returncode is None]
    assert not gone, f"still running: {[p.name for p in gone]}"
    return code, recorder, seconds


def summary(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / "summary.json").read_text())


def test_clients_start_with_the_superlink_and_flwr_run_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "2.0", "600", "0"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "2", "linger"))

    code, events, _ = supervise(federated_plan(tmp_path, port), factory)

    assert code == 0
    assert [e.name for e in events.of(ProcessStarted)] == ["superlink", "client-0", "client-1",
                                                          "server"]
    link = events.when("superlink")
    assert events.when("client-1") - link < 2.0  # before the SuperLink listens (after 2 s)
    assert events.when("server") - link >= 2.0  # `flwr run` only once it listens
    assert "superlink listening" in (tmp_path / "logs" / "superlink.log").read_text()


def test_a_completed_run_returns_at_once_though_its_processes_ignore_sigterm(
    tmp_path: Path,
) -> None:
    """The app's 'end' record ends the run: every process is stopped at the same time, with a
    short grace, then SIGKILL; nobody waits for `flwr run` or the clients to say goodbye."""
    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "2", "linger"))

    code, events, _ = supervise(federated_plan(tmp_path, port), factory, finish_grace=0.3)
    returned = time.time()

    finished = events.of(RunFinished)[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    end = next(r for r in records if r["event"] == "end")
    assert code == 0 and finished.exit_reason == "completed"
    # poll (0.1 s) + grace (0.3 s) + SIGKILL and the summary; the target is 1.5 s (bench/lifecycle.py)
    assert returned - end["time"] < 2.5, returned - end["time"]
    s = summary(tmp_path)
    assert s["exit_reason"] == "completed" and s["rounds_completed"] == 2
    assert s["final_accuracy"] == pytest.approx(0.2)


def test_a_client_that_dies_is_restarted_once_and_the_run_completes(tmp_path: Path) -> None:
    port = free_port()
    marker = tmp_path / "died-once"
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, f"exit:3:{marker}"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "8", "linger"))

    code, events, _ = supervise(federated_plan(tmp_path, port), factory)

    assert code == 0
    exits = events.of(ProcessExited)
    assert [(e.name, e.returncode, e.will_restart) for e in exits] == [("client-1", 3, True)]
    assert "client failing" in exits[0].log_tail
    assert [e.name for e in events.of(ProcessStarted)].count("client-1") == 2
    assert summary(tmp_path)["restarts"] == {"client-1": 1}


def test_a_client_host_that_dies_departs_every_clients_node(tmp_path: Path) -> None:
    """The pool's client host takes all its clients' SuperNodes with it: the ServerApp is told
    to stop waiting for each of their nodes, and the host is restarted."""
    port = free_port()
    marker = tmp_path / "died-once"
    progress = tmp_path / "progress"
    progress.mkdir()
    for client in range(3):
        (progress / f"client-{client}.node").write_text(f"{100 + client}\n")
    # the pool as its host reports it once warm (`flwr run` starts only then: poolwait.py)
    (tmp_path / "pool.json").write_text(json.dumps({
        "clients": {str(c): {} for c in range(3)},
        "workers": [{"name": "worker-0", "state": "idle"}]}))
    specs = [ProcessSpec("superlink", "superlink", ("flower-superlink",)),
             ProcessSpec("clients", "clienthost", ("clienthost",), clients=(0, 1, 2),
                         restartable=True),
             ProcessSpec("worker-0", "worker", ("worker",), restartable=True),
             ProcessSpec("server", "submit", ("flwr", "run"))]
    cfg = RunConfig(dataset="synthetic", model="cnn", clients=3, rounds=2)
    plan = Plan("federated", cfg, tmp_path, Placement((), (None,)), tuple(specs),
                f"127.0.0.1:{port}", 3)
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      clients=(CLIENT, f"exit:9:{marker}"), worker_0=(CLIENT, "serve"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "8", "linger"))

    code, events, _ = supervise(plan, factory)

    assert code == 0
    assert [(e.name, e.will_restart) for e in events.of(ProcessExited)] == [("clients", True)]
    departed = (tmp_path / "departed-nodes.txt").read_text().split()
    assert sorted(departed) == ["100", "101", "102"]


def test_a_serverapp_that_exits_early_fails_the_run_by_name_with_the_links_refusal(
        tmp_path: Path) -> None:
    """The warm ServerApp is a lifeline: its exit before the app's 'end' record fails the run as
    `serverapp`, and a SuperLink line refusing its task token (a starved ServerApp) joins its
    tail (however many request lines the SuperLink printed after it), so that the failure's hint
    names the cause."""
    from launcher.supervision.hints import explain_failure

    port = free_port()
    refusing = LINK.replace('print("superlink listening", flush=True)',
                            'print("superlink listening", flush=True); '
                            'print("ERROR: Runtime task-token authentication failed", flush=True); '
                            '[print("POST /v1/fleet/pull-messages 200", flush=True) for _ in range(60)]')
    specs = [ProcessSpec("superlink", "superlink", ("flower-superlink",)),
             ProcessSpec("serverapp", "serverapp", ("serverhost",)),
             ProcessSpec("client-0", "supernode", ("flower-supernode",), client=0,
                         restartable=True),
             ProcessSpec("server", "submit", ("flwr", "run"))]
    cfg = RunConfig(dataset="synthetic", model="cnn", clients=1, rounds=2)
    plan = Plan("federated", cfg, tmp_path, Placement((), (None,)), tuple(specs),
                f"127.0.0.1:{port}", 3)
    factory = scripts(tmp_path, port, superlink=(refusing, str(port), "0", "600", "0"),
                      serverapp=(CLIENT, f"exit:1:{tmp_path / 'once'}"),
                      client_0=(CLIENT, "serve"), server=(CLIENT, "serve"))

    code, events, _ = supervise(plan, factory)

    finished = events.of(RunFinished)[0]
    assert code == 1 and finished.failed_process == "serverapp"
    assert "client failing" in finished.log_tail
    assert any("task-token authentication failed" in line for line in finished.log_tail)
    assert "starved of CPU" in (explain_failure(finished.log_tail) or "")


def test_clients_that_keep_dying_fail_the_run_once_no_client_is_left(tmp_path: Path) -> None:
    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      client_0=(CLIENT, "exit:4:"), client_1=(CLIENT, "exit:5:"),
                      server=(CLIENT, "serve"))

    code, events, _ = supervise(federated_plan(tmp_path, port, max_restarts=1), factory)

    finished = events.of(RunFinished)[0]
    assert code == 1 and finished.exit_reason == "failed"
    assert finished.failed_process in ("client-0", "client-1")
    assert "client failing" in finished.log_tail
    assert summary(tmp_path)["restarts"] == {"client-0": 1, "client-1": 1}
    restarted = [e.will_restart for e in events.of(ProcessExited)]
    # both die at the same moment: the run fails at the first final exit that finds the other
    # client already dead, which may or may not have been reported by then
    assert restarted.count(True) == 2 and restarted.count(False) in (1, 2), restarted


def test_a_dead_superlink_fails_the_run_by_name_with_its_log_tail(tmp_path: Path) -> None:
    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "1.0", "7"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(CLIENT, "serve"))

    code, events, seconds = supervise(federated_plan(tmp_path, port), factory)

    finished = events.of(RunFinished)[0]
    assert code == 1 and finished.failed_process == "superlink"
    assert finished.log_tail[-1] == "superlink going down"
    assert summary(tmp_path)["exit_reason"] == "failed"
    assert seconds < 1.0 + 1.0 + 4.0  # its life, the stop grace, start-up on a busy machine


def test_flwr_run_ending_before_the_app_ends_fails_the_run_naming_server(tmp_path: Path) -> None:
    port = free_port()
    factory = scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "1", "exit"))

    code, events, _ = supervise(federated_plan(tmp_path, port), factory)

    finished = events.of(RunFinished)[0]
    assert code == 1 and finished.failed_process == "server"
    assert summary(tmp_path)["rounds_completed"] == 1


@pytest.mark.parametrize(("reason", "code"), [("terminated", EXIT_SIGTERM), ("hangup", EXIT_SIGHUP),
                                              ("interrupted", 130)])
def test_a_stop_kills_processes_that_ignore_sigterm_all_at_once(
    tmp_path: Path, reason: str, code: int,
) -> None:
    """Four processes ignore SIGTERM: stopped one after another that would be four stop timeouts
    (1 s each here); at once it is one."""
    port = free_port()
    factory = scripts(tmp_path, port, gateway=(CLIENT, "serve"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(CLIENT, "serve"))
    # a role the table does not special-case (a network gateway) in place of the SuperLink
    base = federated_plan(tmp_path, port)
    plan = dataclasses.replace(base, processes=(ProcessSpec("gateway", "gateway", ("x",)),
                                                *base.processes[1:]))

    exit_code, events, seconds = supervise(plan, factory, stop=(1.5, reason))

    assert exit_code == code
    assert events.of(RunFinished)[0].exit_reason == reason
    assert summary(tmp_path)["exit_reason"] == reason
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1] == {**records[-1], "event": "end", "exit_reason": reason}
    assert seconds < 1.5 + 1.0 + 2.5, seconds


def test_the_superlink_not_answering_fails_at_the_deadline_of_the_injected_clock(
    tmp_path: Path,
) -> None:
    """A minute of waiting for the SuperLink, in a fraction of a second: each reading of the
    monotonic clock advances it 5 s."""
    port = free_port()
    ticks = iter(range(0, 10_000, 5))
    factory = scripts(tmp_path, port, superlink=(CLIENT, "serve"),
                      client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                      server=(CLIENT, "serve"))

    code, events, seconds = supervise(federated_plan(tmp_path, port), factory,
                                      monotonic=lambda: float(next(ticks)))

    finished = events.of(RunFinished)[0]
    assert code == 1 and finished.failed_process == "superlink"
    assert any(f"did not answer on 127.0.0.1:{port} within 60 s" in n.text
               for n in events.of(Notice))
    assert "server" not in [e.name for e in events.of(ProcessStarted)]
    assert seconds < 5.0


def test_a_local_run_returns_once_its_end_record_is_written(tmp_path: Path) -> None:
    spec = ProcessSpec("local", "local", ("python", "-m", "fedcore.local"), client=0)
    plan = Plan("local", RunConfig(dataset="synthetic", epochs=2), tmp_path, Placement((), ()),
                (spec,), "", 0)

    factory = scripts(tmp_path, 0, local=(LOCAL, str(tmp_path / "metrics.jsonl")))

    code, events, seconds = supervise(plan, factory, finish_grace=0.2)

    assert code == 0 and events.of(RunFinished)[0].exit_reason == "completed"
    assert summary(tmp_path)["epochs_completed"] == 2
    assert seconds < 4.0


def test_every_child_carries_the_run_token_and_the_watchdog_sweeps_them(tmp_path: Path) -> None:
    from launcher.supervision.watchdog import TOKEN_VAR, Watchdog

    port = free_port()
    watchdog = Watchdog()
    seen: dict[str, str | None] = {}

    def factory(spec: ProcessSpec, log: Path, on_line: Callable[[str, str], None],
                env: dict[str, str], cwd: Path | None) -> ManagedProcess:
        seen[spec.name] = env.get(TOKEN_VAR)
        return scripts(tmp_path, port, superlink=(LINK, str(port), "0", "600", "0"),
                       client_0=(CLIENT, "serve"), client_1=(CLIENT, "serve"),
                       server=(SUBMIT, str(tmp_path / "metrics.jsonl"), "1", "linger"))(
            spec, log, on_line, env, cwd)

    code, _, _ = supervise(federated_plan(tmp_path, port), factory, watchdog=watchdog)

    assert code == 0
    assert seen == dict.fromkeys(["superlink", "client-0", "client-1", "server"], watchdog.token)
    assert watchdog.proc is not None
    assert watchdog.proc.wait(10) == 0  # the pipe closed with the run: it swept and left
    assert not [p for p in psutil.process_iter() if _carries(p, watchdog.token)]


def _carries(proc: psutil.Process, token: str) -> bool:
    from launcher.supervision.watchdog import carries

    return carries(proc, token)


def test_children_spin_briefly_in_openmp_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's OpenMP threads spinning long on a machine with one busy core made an epoch 12x
    slower (bench/busy_cores.py); children get a brief spin, or the user's own choice."""
    from launcher.supervision.startup import SPIN_COUNT, child_base_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert child_base_env()["GOMP_SPINCOUNT"] == SPIN_COUNT == "1000"

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = child_base_env()
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in env

    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "50000")
    assert child_base_env()["GOMP_SPINCOUNT"] == "50000"
