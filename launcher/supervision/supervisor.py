"""The run's lifecycle: start processes in order, follow them, restart clients, stop everything."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from fedcore.rundir import RunDir, summarize
from launcher.events import (
    ClientProgress,
    EventBus,
    GpuSample,
    GpuStats,
    LogLine,
    Notice,
    ProcessExited,
    ProcessStarted,
    RunFinished,
    RunStarted,
)
from launcher.network import nodeauth
from launcher.planning.bundle import make_app, write_flwr_config
from launcher.planning.gpus import Nvml
from launcher.planning.plan import FEDERATION, FLWR_ENV, Plan, bin_path, run_config_toml
from launcher.supervision.departures import Departures
from launcher.supervision.follow import RunFollower
from launcher.supervision.hints import explain_failure
from launcher.supervision.procs import ManagedProcess, stop_all

EXIT_OK, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143
STOP_CODES = {"interrupted": EXIT_SIGINT, "terminated": EXIT_SIGTERM}


def child_base_env() -> dict[str, str]:
    """The environment children inherit, with this Python's scripts first on PATH.

    Flower's processes start helpers (flower-superexec, flwr-serverapp) by name.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_")}
    scripts = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    return env


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (Flower's SuperExec does not reap a killed ServerApp at once)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_serverapp(proc: psutil.Process) -> bool:
    try:
        return any("flwr-serverapp" in part for part in proc.cmdline())
    except psutil.Error:
        return False


class RunFailed(Exception):
    """A process the run cannot go on without has died."""

    def __init__(self, process: str, reason: str, tail: tuple[str, ...] = ()) -> None:
        super().__init__(f"{process} {reason}")
        self.process = process
        self.tail = tail


class Supervisor:
    """Runs one Plan to its end and publishes what happens on the bus."""

    def __init__(
        self,
        plan: Plan,
        bus: EventBus,
        *,
        nvml: Nvml | None = None,
        poll_interval: float = 0.25,
        gpu_interval: float = 1.0,
        stop_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.bus = bus
        self.nvml = nvml
        self.poll_interval = poll_interval
        self.gpu_interval = gpu_interval
        self.stop_timeout = stop_timeout
        self.clock = clock
        self.rundir = RunDir(plan.run_dir)
        self.follower = RunFollower(plan.run_dir, plan.client_gpus)
        self.processes: dict[str, ManagedProcess] = {}
        self.restarts: dict[str, int] = {}
        self.departures = Departures(self.rundir)
        self._stop_reason: str | None = None
        self._wake = asyncio.Event()
        self._base_env = child_base_env()
        self._serverapp: psutil.Process | None = None

    def request_stop(self, reason: str = "interrupted") -> None:
        """Ask the run to stop gracefully (Ctrl+C, q, SIGTERM); safe to call more than once."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self.bus.publish(Notice("warning", f"stopping ({reason})..."))
        self._wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "interrupted")
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "terminated")

    async def run(self) -> int:
        started = self.clock()
        plan = self.plan
        joined = plan.mode == "join"  # the model, data and rounds are the serving side's
        self.bus.publish(RunStarted(
            run_name=plan.run_dir.name, mode=plan.mode,  # type: ignore[arg-type]
            model="" if joined else plan.cfg.model, dataset="" if joined else plan.cfg.dataset,
            partition=plan.cfg.partition if plan.mode == "federated" else "none",
            total=plan.cfg.epochs if plan.mode == "local" else 0 if joined else plan.cfg.rounds,
            num_clients=plan.cfg.clients if plan.mode == "federated" else len(plan.client_gpus),
            out_dir=str(plan.run_dir), started_at=started, client_gpus=plan.client_gpus,
        ))
        for note in plan.placement.notes:
            self.bus.publish(Notice("info", note))
        for warning in plan.placement.warnings:
            self.bus.publish(Notice("warning", warning))
        reason, code, failed, tail = "completed", EXIT_OK, None, ()
        try:
            self._prepare()
            await self._start_all()
            reason = await self._follow()
            code = STOP_CODES.get(reason, EXIT_OK)
        except RunFailed as exc:
            reason, code, failed, tail = "failed", EXIT_FAILED, exc.process, exc.tail
            self.bus.publish(Notice("error", str(exc)))
            if hint := explain_failure(exc.tail):
                self.bus.publish(Notice("error", f"hint: {hint}"))
        finally:
            await self._stop_processes()
            self._publish_events()
        if self._stop_reason and reason == "failed":
            reason, code = self._stop_reason, STOP_CODES[self._stop_reason]
        summary = self._write_summary(reason, self.clock() - started)
        self.bus.publish(RunFinished(reason, code, summary, failed, tuple(tail)))
        return code

    def _prepare(self) -> None:
        plan = self.plan
        self.rundir.create()
        self.rundir.append_metric("launch", mode=plan.mode, resumed=plan.resumed)
        if plan.mode == "federated":
            make_app(plan.run_dir / "app", plan.cfg)
            (plan.run_dir / "run_config.toml").write_text(run_config_toml(plan.cfg))
            submit = next(p for p in plan.processes if p.role == "submit")
            ca = Path(plan.root_certificates) if plan.root_certificates else None
            write_flwr_config(plan.run_dir / "flwr" / "submit", plan.superlink_address, ca)
            assert submit.env["FLWR_HOME"] == str(plan.run_dir / "flwr" / "submit")

    async def _start(self, name: str) -> ManagedProcess:
        spec = next(p for p in self.plan.processes if p.name == name)
        proc = ManagedProcess(
            spec, self.plan.run_dir / "logs" / f"{name}.log", self._on_line, self._base_env,
            cwd=self.plan.run_dir,
        )
        self.processes[name] = proc
        await proc.start()
        assert proc.pid is not None
        self.bus.publish(ProcessStarted(name, proc.pid, spec.role, spec.gpu, spec.client))
        if spec.client is not None:
            self.bus.publish(ClientProgress(client=spec.client, state="starting", gpu=spec.gpu))
        return proc

    async def _stop_processes(self) -> None:
        """Clients first, while the SuperLink can still hear them leave; then the rest."""
        phases = (("submit", "local"), ("supernode",), ("superlink",))
        for roles in phases:
            group = [p for p in self.processes.values() if p.spec.role in roles]
            await stop_all(group, self.stop_timeout)
        await stop_all(list(self.processes.values()), self.stop_timeout)

    def _on_line(self, name: str, text: str) -> None:
        self.bus.publish(LogLine(name, text))

    async def _start_all(self) -> None:
        if self.plan.mode == "local":
            await self._start("local")
            return
        if self.plan.mode == "join":  # clients only: the SuperLink runs on another machine
            for spec in self.plan.processes:
                await self._start(spec.name)
            return
        await self._start("superlink")
        await self._wait_superlink()
        await self._register_node_keys()
        for spec in self.plan.processes:
            if spec.role == "supernode":
                await self._start(spec.name)
        await self._start("server")

    async def _register_node_keys(self) -> None:
        """With SuperNode authentication, register every node key before a SuperNode starts."""
        keys = list(self.plan.node_keys)
        if not keys or self._stop_reason:
            return
        env = {**self._base_env, **FLWR_ENV, "FLWR_HOME": str(self.plan.run_dir / "flwr" / "submit")}
        log = self.plan.run_dir / "logs" / "register.log"
        failed = await nodeauth.register(bin_path("flwr"), FEDERATION, keys, env,
                                         self.plan.run_dir, log)
        if failed:
            key, why = failed[0]
            raise RunFailed("register", f"could not register the node key {key}: {why}",
                            tuple(log.read_text().splitlines()[-12:]))
        self.bus.publish(Notice("info", f"registered {len(keys)} node key(s); only those "
                                "SuperNodes may join"))

    async def _wait_superlink(self, timeout: float = 60.0) -> None:
        """Wait until the SuperLink accepts connections; fail if it exits first."""
        host, port = self.plan.superlink_address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        link = self.processes["superlink"]
        while time.monotonic() < deadline:
            if link.returncode is not None:
                raise RunFailed("superlink", f"exited with code {link.returncode} at start",
                                tuple(link.tail))
            if self._stop_reason:
                return
            try:
                _, writer = await asyncio.open_connection(host, int(port))
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RunFailed("superlink", f"did not answer on {self.plan.superlink_address} "
                        f"within {timeout:.0f} s", tuple(link.tail))

    async def _follow(self) -> str:
        """Publish progress until the run ends or a stop is asked for; return the exit reason."""
        next_gpu = 0.0
        while True:
            self._publish_events()
            if self._stop_reason:
                # A stop that comes after the app finished its last round keeps the run completed.
                return "completed" if self.follower.ended() is not None else self._stop_reason
            if time.monotonic() >= next_gpu:
                self._publish_gpus()
                self._watch_descendants()
                next_gpu = time.monotonic() + self.gpu_interval
            outcome = await self._check_processes()
            if outcome is not None:
                return outcome
            self.departures.poll()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    def _publish_events(self) -> None:
        for event in self.follower.poll():
            self.bus.publish(event)
            if isinstance(event, ClientProgress) and event.error == "out of memory":
                self.bus.publish(Notice("error", self._oom_text(event)))

    def _oom_text(self, event: ClientProgress) -> str:
        """Which client, which GPU and how full it is, and what to change."""
        where = "the CPU" if event.gpu is None else f"GPU {event.gpu}"
        if event.gpu is not None and self.nvml is not None:
            for sample in self.nvml.sample([event.gpu]):
                if sample.memory_used is not None and sample.memory_total is not None:
                    where += (f" ({sample.name}, {sample.memory_used / 2**30:.1f} of "
                              f"{sample.memory_total / 2**30:.1f} GiB in use)")
        clients_here = sum(1 for g in self.plan.client_gpus.values() if g == event.gpu)
        return (f"client-{event.client} ran out of memory on {where} in round {event.round}: "
                f"{event.detail}. {clients_here} client(s) share it; use fewer clients per GPU "
                f"(more --gpus or fewer --clients) or a smaller --batch-size "
                f"(now {self.plan.cfg.batch_size})")

    def _publish_gpus(self) -> None:
        if self.nvml is None or not self.plan.placement.gpus:
            self.bus.publish(GpuStats((), cpu_mode=True))
            return
        indices = [g.index for g in self.plan.placement.gpus]
        samples: list[GpuSample] = self.nvml.sample(indices)
        self.bus.publish(GpuStats(tuple(samples)))

    def _watch_descendants(self) -> None:
        """Remember every process's descendants; fail at once if the ServerApp process died."""
        for proc in self.processes.values():
            found = proc.remember_descendants()
            if proc.spec.role == "superlink" and self._serverapp is None:
                self._serverapp = next((c for c in found if is_serverapp(c)), None)
        if self._serverapp is not None and not alive(self._serverapp):
            self._publish_events()
            if self.follower.ended() is None:
                server = self.processes.get("server")
                raise RunFailed("serverapp", "(the ServerApp process under the SuperLink) exited "
                                "before the run completed", tuple(server.tail) if server else ())

    async def _check_processes(self) -> str | None:
        for name, proc in list(self.processes.items()):
            if proc.returncode is None or proc.stopping:
                continue
            assert proc.reader is not None
            proc.send(signal.SIGKILL)  # its group's survivors would hold the log pipe open
            try:
                await asyncio.wait_for(asyncio.shield(proc.reader), 5.0)
            except TimeoutError:
                pass
            spec = proc.spec
            if spec.role in ("submit", "local"):
                self._publish_events()
                if self.follower.ended() is not None:
                    return "completed"
                raise RunFailed(name, f"ended (exit code {proc.returncode}) before the run "
                                "completed", tuple(proc.tail))
            if spec.role == "superlink":
                raise RunFailed(name, f"exited with code {proc.returncode}", tuple(proc.tail))
            await self._client_died(proc)
        return None

    async def _client_died(self, proc: ManagedProcess) -> None:
        name, spec = proc.name, proc.spec
        used = self.restarts.get(name, 0)
        again = spec.restartable and used < self.plan.max_restarts
        self.bus.publish(ProcessExited(
            name, proc.returncode, expected=False, restarts=used, will_restart=again,
            client=spec.client, log_tail=tuple(proc.tail)[-10:],
        ))
        if spec.client is not None:
            self.departures.died(spec.client)
            state = "restarting" if again else "failed"
            self.bus.publish(ClientProgress(client=spec.client, state=state, gpu=spec.gpu))
        if again:
            self.restarts[name] = used + 1
            self.bus.publish(Notice("warning", f"{name} exited with code {proc.returncode}; "
                                    f"restarting it (restart {used + 1} of "
                                    f"{self.plan.max_restarts})"))
            await self._start(name)
            return
        proc.stopping = True
        alive = [p for p in self.processes.values()
                 if p.spec.role == "supernode" and p.returncode is None]
        self.bus.publish(Notice("error", f"{name} exited with code {proc.returncode} and "
                                "will not be restarted"))
        if not alive:
            raise RunFailed(name, "exited and no client is left", tuple(proc.tail))

    def _write_summary(self, reason: str, wall: float) -> dict[str, object]:
        self.rundir.create()
        if self.follower.ended() is None and reason != "completed":
            self.rundir.append_metric("end", exit_reason=reason)
        summary = summarize(self.rundir, mode=self.plan.mode, exit_reason=reason, wall_seconds=wall)
        summary["restarts"] = dict(self.restarts)
        self.rundir.write_summary(summary)
        return summary
