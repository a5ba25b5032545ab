"""The warm client: a SuperNode plus one long-lived process that runs each ClientApp task in-process.

`python -m launcher.shim.executor --superlink HOST:PORT --node-config "..." --runtime-port P` starts
`flower-supernode --isolation process` as its child and takes the SuperExec's place: it claims
each task from the SuperNode's runtime API and calls the ClientApp in this process, so torch,
CUDA, the model and the device-resident data stay loaded between rounds.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from launcher.network.bundlecheck import BundleRefused, check_bundle, installed_manifest
from launcher.shim import flwr_internals as fi

POLL = 0.05
STARTUP_GRACE = 60.0


class Executor:
    """Claims tasks from one SuperNode's runtime API and runs them, one at a time."""

    def __init__(self, runtime_address: str, log: Callable[..., None],
                 worth_retrying: Callable[[], bool] = lambda: True,
                 secret: bytes | None = None) -> None:
        self.address = runtime_address
        self.log = log
        self.worth_retrying = worth_retrying
        self.secret = secret  # the SuperExec shared secret: AcquireTask is signed with it
        self.apps: dict[str, Any] = {}
        self.app_dir: Path | None = None
        self.stopping = False
        self.trusted = installed_manifest()  # before any app folder is on sys.path
        self._acquirer = self._client(component="SuperExec")

    def _client(self, component: str, token: str | None = None) -> Any:
        interceptors: list[Any] = [fi.RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(fi.RuntimeTokenHttpInterceptor(token))
        if component == "SuperExec" and self.secret is not None:
            # as flower-superexec signs it (flwr/supercore/superexec/run_superexec.py)
            interceptors.append(fi.SuperExecAuthHttpInterceptor(
                master_secret=self.secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"}))
        retry = fi.make_simple_http_retry_invoker()
        giveup = retry.should_giveup
        # Flower retries a silent runtime API forever; stop once the SuperNode or launcher is gone.
        retry.should_giveup = lambda exc: not self.worth_retrying() or bool(giveup and giveup(exc))
        return fi.RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=interceptors, retry_invoker=retry,
        )

    def acquire(self) -> str | None:
        """A task token when the SuperNode has a ClientApp task waiting, else None."""
        request = fi.AcquireTaskRequest(supported_task_types=[fi.TaskType.CLIENT_APP])
        res = self._acquirer.AcquireTask(request)
        return res.token if res.HasField("task") and res.token else None

    def run_task(self, token: str) -> None:
        """What flwr-clientapp does for one task, without exiting afterwards."""
        client = self._client(component="flwr-clientapp", token=token)
        heartbeat = fi.HeartbeatSender(fi.make_task_heartbeat_fn_http(client))
        heartbeat.start()
        status = fi.SubStatus
        message = context = reply = None
        sub_status, details = status.FAILED, "ClientApp task failed for an unknown reason"
        try:
            message, context, run, fab = fi.pull_task_input(client)
            reply = self._app(run, fab)(message=message, context=context)
            sub_status, details = status.COMPLETED, ""
        except BundleRefused as exc:
            self.log(ERROR, "[fedlaunch] refused the run's app bundle: %s. This client runs only "
                     "the fedcore installed here; the task fails", exc)
            details = f"fedlaunch refused the app bundle: {exc}"
            if message is not None:
                from flwr.app import Error, Message

                code = fi.ErrorCode.INVALID_FAB
                reply = Message(Error(code=code, reason=details), reply_to=message)
        except Exception as exc:  # noqa: BLE001 - reported to the server as the task's error
            self.log(ERROR, "ClientApp raised an exception", exc_info=exc)
            details = f"{type(exc)}:<'{exc}'>"
            if message is not None:
                from flwr.app import Error, Message

                code = fi.ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    fi.push_message(
                        client, reply, context)
            finally:
                fi.push_task_output(
                    client=client, context=context, sub_status=sub_status, details=details)
                heartbeat.stop()
                client.close()

    def _app(self, run: Any, fab: Any) -> Any:
        """The ClientApp of this FAB, loaded once; a new FAB gets its own fresh modules."""
        key = fab.hash_str
        if key not in self.apps:
            check_bundle(fab.content, self.trusted)  # before a byte of it is written or imported
            started = time.perf_counter()
            app_dir = fi.get_project_dir(
                run.fab_id, run.fab_version, key)
            if not Path(app_dir).exists():
                fi.install_from_fab(fab.content, skip_prompt=True)
            forget_app_modules(self.app_dir, Path(app_dir))
            self.app_dir = Path(app_dir)
            self.apps = {key: fi.get_load_client_app_fn(
                "", None, True)(run.fab_id, run.fab_version, key)}
            self.log(INFO, "[fedlaunch] ClientApp of app %s loaded in %.2f s (kept warm)",
                     key[:8], time.perf_counter() - started)
        return self.apps[key]


def forget_app_modules(old_dir: Path | None, new_dir: Path) -> None:
    """Drop modules of the app's packages so a new FAB's code is imported, never stale code."""
    packages = {p.name for p in new_dir.iterdir() if (p / "__init__.py").exists()}
    if old_dir is not None:
        packages |= {p.name for p in old_dir.iterdir() if (p / "__init__.py").exists()}
        if str(old_dir) in sys.path:
            sys.path.remove(str(old_dir))
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]


def fast_object_pulls() -> None:
    """The stock ClientApp waits 1 s before re-pulling a message's objects; wait 20 ms instead."""
    module = sys.modules["flwr.supernode.runtime.run_clientapp"]
    pull = fi.pull_and_inflate_object_from_tree
    module.pull_and_inflate_object_from_tree = functools.partial(  # type: ignore[attr-defined]
        pull, initial_backoff=0.02, backoff_cap=0.2)


def die_with_parent() -> None:
    """In the SuperNode child: get SIGTERM when this executor dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m launcher.shim.executor")
    parser.add_argument("--superlink", required=True)
    parser.add_argument("--node-config", required=True)
    parser.add_argument("--runtime-port", type=int, required=True)
    parser.add_argument("--poll", type=float, default=POLL)
    parser.add_argument("--superexec-auth-secret-file",
                        help="the SuperExec shared secret; given to the SuperNode too")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, supernode_extra = parse_args(argv)
    address = f"127.0.0.1:{args.runtime_port}"
    secret = Path(args.superexec_auth_secret_file).read_bytes() if args.superexec_auth_secret_file else None
    if args.superexec_auth_secret_file:
        supernode_extra += ["--superexec-auth-secret-file", args.superexec_auth_secret_file]
    supernode = subprocess.Popen([
        sys.executable, "-m", "launcher.shim.supernode", "--superlink", args.superlink,
        "--node-config", args.node_config, "--isolation", "process",
        "--host", "127.0.0.1", "--port", str(args.runtime_port), *supernode_extra,
    ], preexec_fn=die_with_parent)
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    import torch  # noqa: F401  - warm up while the SuperNode connects
    import torchvision  # noqa: F401
    from flwr.common import log

    from fedcore.device import check_pinned_gpu

    if (why := check_pinned_gpu()) is not None:  # stop at once: never train on the CPU in silence
        print(f"fedlaunch: error: {why}", file=sys.stderr, flush=True)
        supernode.terminate()
        supernode.wait()
        return 2
    fast_object_pulls()
    launcher = os.getppid()
    executor = Executor(address, log, worth_retrying=lambda: supernode.poll() is None
                        and os.getppid() == launcher, secret=secret)

    def stop(signum: int, _frame: object) -> None:
        executor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(INFO, "[fedlaunch] warm executor pid %d serving SuperNode pid %d on %s",
        os.getpid(), supernode.pid, address)
    code = serve(executor, supernode, args.poll)
    if supernode.poll() is None:
        supernode.terminate()
        try:
            supernode.wait(10)
        except subprocess.TimeoutExpired:
            supernode.kill()
    return code


def serve(executor: Executor, supernode: subprocess.Popen[bytes], poll: float) -> int:
    """Claim and run tasks until stopped; exit with the SuperNode's code if it dies."""
    import httpx

    started = time.monotonic()
    parent = os.getppid()
    while not executor.stopping:
        if os.getppid() != parent:
            print("fedlaunch: the launcher is gone; stopping", file=sys.stderr, flush=True)
            return 1
        if (code := supernode.poll()) is not None:
            print(f"fedlaunch: SuperNode exited with code {code}", file=sys.stderr, flush=True)
            return code or 1
        try:
            token = executor.acquire()
        except httpx.HTTPError as exc:
            if time.monotonic() - started > STARTUP_GRACE:
                print(f"fedlaunch: SuperNode runtime API not answering: {exc}", file=sys.stderr,
                      flush=True)
            time.sleep(max(poll, 0.5))
            continue
        if token is not None:
            executor.run_task(token)
        else:
            time.sleep(poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
