"""The run's lifecycle: start processes in order, follow them, restart clients, stop everything.

Like honcho's Manager, the Supervisor takes its process factory and its clocks as parameters, so
tests run it with tiny scripts in place of Flower and a clock of their own.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

from fedcore.rundir import RunDir
from launcher.events import (
    ClientProgress,
    EventBus,
    LogLine,
    Notice,
    ProcessExited,
    ProcessStarted,
    RunFinished,
    RunStarted,
)
from launcher.network.runtime_secret import write_secret
from launcher.planning.gpus import Nvml
from launcher.planning.plan import Plan
from launcher.supervision.departures import Departures
from launcher.supervision.follow import RunFollower
from launcher.supervision.hints import TOKEN_REFUSED, explain_failure
from launcher.supervision.outcome import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    STOP_CODES,
    STOP_SIGNALS,
    RunFailed,
    folder_failed,
    serverapp_folder_failure,
    write_summary,
)
from launcher.supervision.poolwait import wait_for_pool
from launcher.supervision.procs import ManagedProcess, ProcessFactory, stop_all
from launcher.supervision.publish import RunPublisher
from launcher.supervision.roles import role, starts_at_once
from launcher.supervision.startup import (
    child_base_env,
    register_node_keys,
    wait_for_superlink,
    write_flower_files,
)
from launcher.supervision.watchdog import Watchdog
from launcher.tracking.tracker import Tracking

SERVERAPP_GRACE = 5.0  # seconds a failed ServerApp may take to end after `flwr run` did

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_SIGINT", "EXIT_SIGTERM", "RunFailed", "Supervisor"]

HANGUP_GRACE = 1.0  # SIGTERM to SIGKILL after SIGHUP (see _stop_processes)


class Supervisor:
    """Runs one Plan to its end and publishes what happens on the bus."""

    def __init__(
        self,
        plan: Plan,
        bus: EventBus,
        *,
        nvml: Nvml | None = None,
        poll_interval: float = 0.1,
        gpu_interval: float = 1.0,
        stop_timeout: float = 3.0,
        finish_grace: float = 0.1,
        log_grace: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        factory: ProcessFactory = ManagedProcess,
        watchdog: Watchdog | None = None,
        afterwards: Callable[[Path], object] | None = None,
        tracking: Tracking | None = None,
    ) -> None:
        self.plan = plan
        self.bus = bus
        self.nvml = nvml
        self.poll_interval = poll_interval
        self.gpu_interval = gpu_interval
        self.stop_timeout = stop_timeout  # a stop asked for, or a failure: SIGTERM, then SIGKILL
        self.finish_grace = finish_grace  # a completed run: its processes have nothing left to do
        self.log_grace = log_grace  # ... but `flwr run` streams the ServerApp's last log lines
        self.clock = clock  # wall time, for the summary and the events
        self.monotonic = monotonic  # deadlines and intervals
        self.factory = factory
        self.watchdog = watchdog
        self.afterwards = afterwards
        self.rundir = RunDir(plan.run_dir)
        self._unechoed = {p.name for p in plan.processes if not role(p.role).echo}
        self._refused = ""  # the last line refusing a task token (see _serverapp_tail)
        self.follower = RunFollower(plan.run_dir, plan.client_gpus, log_files={  # SuperNodes' own
            f"client-{c}": plan.run_dir / "logs" / f"client-{c}.log" for c in plan.pooled
            if plan.engine == "deployment"})
        self.processes: dict[str, ManagedProcess] = {}
        self.restarts: dict[str, int] = {}
        self.departures = Departures(self.rundir)
        self._stop_reason: str | None = None
        self._wake = asyncio.Event()
        self._base_env = {**child_base_env(), **(watchdog.env if watchdog else {})}
        self.publisher = RunPublisher(plan, bus, self.follower, nvml, tracking)

    def request_stop(self, reason: str = "interrupted") -> None:
        """Ask the run to stop (Ctrl+C, q, SIGTERM, SIGHUP); safe to call more than once."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self.bus.publish(Notice("warning", f"stopping ({reason})..."))
        self._wake.set()

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, reason in STOP_SIGNALS.items():
            loop.add_signal_handler(sig, self.request_stop, reason)

    async def run(self) -> int:
        started = self.clock()
        if self.watchdog is not None:
            self.watchdog.start()
        self._announce(started)
        reason, code, failed = "completed", EXIT_OK, None
        tail: tuple[str, ...] = ()
        try:
            self._prepare()
            await self._start_all()
            reason = await self._follow()
            code = STOP_CODES.get(reason, EXIT_OK)
        except (RunFailed, OSError) as error:
            exc = error if isinstance(error, RunFailed) else folder_failed(error, self.plan.run_dir)
            if exc is None:  # not the run folder's: a bug, with its traceback
                raise
            reason, code, failed, tail = "failed", EXIT_FAILED, exc.process, exc.tail
            self.bus.publish(Notice("error", str(exc)))
            if hint := explain_failure(exc.tail):
                self.bus.publish(Notice("error", f"hint: {hint}"))
        finally:
            await self._stop_processes(reason)
            if self.watchdog is not None:
                self.watchdog.close()
            self.publisher.records()
        if self.publisher.out_of_memory is not None and reason == "completed":  # seen only at the very end
            reason, code, failed = "failed", EXIT_FAILED, self.publisher.out_of_memory.split(" ", 1)[0]
            self.bus.publish(Notice("error", self.publisher.out_of_memory))
        if self._stop_reason and reason == "failed":
            reason, code = self._stop_reason, STOP_CODES[self._stop_reason]
        summary, unwritten = write_summary(self.rundir, self.follower.records, self.follower.ended(),
                                           self.plan.mode, reason, self.clock() - started,
                                           self.restarts)
        if unwritten is not None:  # the run folder cannot be written: the run fails, named
            if (exc := folder_failed(unwritten, self.plan.run_dir)) is None:
                raise unwritten
            if failed is None:  # else the failure already named is the one line
                self.bus.publish(Notice("error", str(exc)))
                failed, tail = exc.process, ()
            if code == EXIT_OK:
                reason, code = "failed", EXIT_FAILED
                summary["exit_reason"] = reason
        await self.publisher.close_tracking(reason)
        self.bus.publish(RunFinished(reason, code, summary, failed, tuple(tail)))
        if self.afterwards is not None and unwritten is None:
            self.afterwards(self.plan.run_dir)
        return code

    def _announce(self, started: float) -> None:
        plan = self.plan
        joined = plan.mode == "join"  # the model, data and rounds are the serving side's
        self.bus.publish(RunStarted(
            run_name=plan.run_dir.name, mode=plan.mode,  # type: ignore[arg-type]
            model="" if joined else plan.cfg.model, dataset="" if joined else plan.cfg.dataset,
            partition=plan.cfg.partition if plan.mode == "federated" else "none",
            total=plan.cfg.epochs if plan.mode == "local" else 0 if joined else plan.cfg.rounds,
            num_clients=plan.cfg.clients if plan.mode == "federated" else len(plan.client_gpus),
            out_dir=str(plan.run_dir), started_at=started, client_gpus=plan.client_gpus,
            unplaced=plan.unplaced,
        ))
        for note in plan.placement.notes:
            self.bus.publish(Notice("info", note))
        for warning in plan.placement.warnings:
            self.bus.publish(Notice("warning", warning))

    def _prepare(self) -> None:
        self.rundir.create()
        self.rundir.append_metric("launch", mode=self.plan.mode, resumed=self.plan.resumed)
        if self.plan.mode != "local":  # a new SuperExec secret for this launch's runtime APIs
            write_secret(self.plan.run_dir)
        if any(p.role == "superlink" for p in self.plan.processes):
            write_flower_files(self.plan)

    # -- start ----------------------------------------------------------------------------------

    async def _start(self, name: str) -> ManagedProcess:
        spec = next(p for p in self.plan.processes if p.name == name)
        proc = self.factory(spec, self.plan.run_dir / "logs" / f"{name}.log", self._on_line,
                            self._base_env, self.plan.run_dir)
        self.processes[name] = proc
        await proc.start()
        assert proc.pid is not None
        self.bus.publish(ProcessStarted(name, proc.pid, spec.role, spec.gpu, spec.client))
        if spec.client is not None:
            self.bus.publish(ClientProgress(client=spec.client, state="starting", gpu=spec.gpu))
        return proc

    async def _start_all(self) -> None:
        """The first wave at once (the SuperLink, and clients, which retry until it answers);
        the rest once the SuperLink answers and any node keys are registered (see roles.py)."""
        keyed = bool(self.plan.node_keys)
        first = [s for s in self.plan.processes if starts_at_once(s.role, keyed)]
        later = [s for s in self.plan.processes if s not in first]
        for spec in first:
            if self._stop_reason:
                return
            await self._start(spec.name)
        if not later:
            return
        if "superlink" in self.processes:
            await wait_for_superlink(self.plan.superlink_address, self.processes["superlink"],
                                     lambda: self._stop_reason is not None, self.monotonic)
        if keyed and not self._stop_reason:
            count = await register_node_keys(self.plan, self._base_env)
            self.bus.publish(Notice("info", f"registered {count} node key(s); only those "
                                    "SuperNodes may join"))
        for spec in later:
            if self._stop_reason:
                return
            if spec.role == "submit" and self.plan.pool_clients:  # see poolwait.py
                workers = sum(1 for p in self.plan.processes if p.role == "worker")
                await wait_for_pool(self.plan.run_dir, self.plan.pool_clients, workers,
                                    lambda: self._stop_reason is not None, self.monotonic)
            await self._start(spec.name)

    # -- follow ---------------------------------------------------------------------------------

    def _on_line(self, name: str, text: str) -> None:
        if TOKEN_REFUSED in text:  # kept apart: the SuperLink's request log soon buries it
            self._refused = text
        if name not in self._unechoed:  # roles.py: its copy stays in its log and failure tail
            self.bus.publish(LogLine(name, text))

    async def _follow(self) -> str:
        """Publish progress until the run ends or a stop is asked for; return the exit reason."""
        next_gpu = 0.0
        while True:
            self.publisher.records()
            if self.publisher.out_of_memory is not None:
                # Out of memory repeats every round with the same settings: stop now, exit 1.
                client, text = self.publisher.out_of_memory.split(" ", 1)
                raise RunFailed(client, text)
            if self.follower.ended() is not None:
                # The app wrote its 'end' record: the run is complete, whatever is still running.
                return "completed"
            for proc in self.processes.values():  # a log file of the run folder failed
                if proc.write_error is not None:
                    raise folder_failed(proc.write_error, self.plan.run_dir) or RunFailed(
                        proc.name, f"cannot write its log ({proc.write_error})")
            if self._stop_reason:
                return self._stop_reason
            if self.monotonic() >= next_gpu:
                self._watch_descendants()
                self.publisher.gpus(self.processes)
                next_gpu = self.monotonic() + self.gpu_interval
            outcome = await self._check_processes()
            if outcome is not None:
                return outcome
            self.departures.poll()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    def _watch_descendants(self) -> None:
        """Remember every process's descendants (those that leave its group are still stopped)."""
        for proc in self.processes.values():
            proc.remember_descendants()

    def _serverapp_tail(self, proc: ManagedProcess) -> tuple[str, ...]:
        """The ServerApp's last lines, and the SuperLink's refusal of its task token if any (the
        ServerApp starved of CPU: see hints.py)."""
        return (*proc.tail, *((self._refused,) if self._refused else ()))

    async def _serverapp_failed(self) -> RunFailed | None:
        """When a process the run lives by has ended: the ServerApp's failure, if it failed
        (given up to SERVERAPP_GRACE to end, as `flwr run` may end first, with 0)."""
        proc = next((p for p in self.processes.values() if p.spec.role == "serverapp"), None)
        if proc is None:
            return None
        if proc.returncode is None and not serverapp_folder_failure(proc.name, tuple(proc.tail)):
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), SERVERAPP_GRACE)
            except TimeoutError:
                pass
        if (failed := serverapp_folder_failure(proc.name, tuple(proc.tail))) is not None:
            return failed
        if proc.returncode in (None, 0):
            return None
        return RunFailed(
            proc.name, f"(the ServerApp) exited with code {proc.returncode} before the run "
            "completed", self._serverapp_tail(proc))

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
            on_exit = role(proc.spec.role).on_exit
            if on_exit == "lifeline":
                self.publisher.records()
                if self.follower.ended() is not None:
                    return "completed"
                if (failed := await self._serverapp_failed()) is not None:
                    raise failed  # the ServerApp's own failure, not `flwr run` ending with 0
                raise RunFailed(name, f"ended (exit code {proc.returncode}) before the run "
                                "completed", tuple(proc.tail))
            if on_exit == "fatal":
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
        for client in spec.served():  # a client host takes every client's node with it
            self.departures.died(client)
            self.bus.publish(ClientProgress(client=client, gpu=spec.gpu,
                                            state="restarting" if again else "failed"))
        if again:
            self.restarts[name] = used + 1
            self.bus.publish(Notice("warning", f"{name} exited with code {proc.returncode}; "
                                    f"restarting it (restart {used + 1} of "
                                    f"{self.plan.max_restarts})"))
            await self._start(name)
            return
        proc.stopping = True
        left = [p for p in self.processes.values()  # of its kind: clients, or pool workers
                if p.spec.role == spec.role and p.returncode is None]
        self.bus.publish(Notice("error", f"{name} exited with code {proc.returncode} and "
                                "will not be restarted"))
        if not left:
            raise RunFailed(name, "exited and no client is left", tuple(proc.tail))

    # -- stop -----------------------------------------------------------------------------------

    async def _stop_processes(self, reason: str) -> None:
        """Every process at once: a completed run's after a short grace (Flower's goodbyes are not
        worth seconds), a stopped or failed run's after stop_timeout; SIGKILL after that."""
        grace = self.finish_grace if reason == "completed" else self.stop_timeout
        if reason == "hangup":  # the terminal is gone: nobody waits for a graceful end, and the
            grace = min(grace, HANGUP_GRACE)  # launcher must be gone within 5 s of it closing
        if reason == "completed":
            # Clients at once; the server side gets up to log_grace to finish on its own, so that
            # `flwr run --stream` (ended when the run is) writes the ServerApp's last lines.
            clients = [p for p in self.processes.values() if role(p.spec.role).on_exit == "client"]
            submit = [p for p in self.processes.values()
                      if p.spec.role == "submit" and p.returncode is None]
            waits = [asyncio.wait_for(asyncio.shield(p.wait()), self.log_grace) for p in submit]
            await asyncio.gather(stop_all(clients, grace), *waits, return_exceptions=True)
        await stop_all(list(self.processes.values()), grace)

