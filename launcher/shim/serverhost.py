"""The warm ServerApp: Flower's ServerApp runtime, with torch imported before the run is submitted.

`python -m launcher.shim.serverhost --runtime-api-address 127.0.0.1:PORT
--superexec-auth-secret-file FILE (--insecure | --root-certificates CA)` takes the place of
`flower-superexec` and the `flwr-serverapp` process it would start, for the one run a launch
submits. Started with the SuperLink, it imports Flower's ServerApp runtime, torch and torchvision
while the SuperLink starts and `flwr run` submits, instead of after (seconds off every run's
start). Then it claims the ServerApp task from the SuperLink's runtime API as flower-superexec
does (AcquireTask, signed with the run's secret), refuses an app bundle that differs from the
installed fedcore (as the clients' executors do), and runs the task with Flower's own
`run_serverapp`, in this process, which ends with it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from queue import Queue
from typing import Any

from launcher.network.bundlecheck import BundleRefused, check_bundle, check_launch_key, installed_manifest
from launcher.network.runtime_secret import LAUNCH_KEY, launch_key
from launcher.shim import flwr_internals as fi

ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
REFUSED = "fedlaunch: the ServerApp refused run "  # the launcher's one-line reason (outcome.py)
POLL = 0.05  # seconds between AcquireTask calls until `flwr run` has submitted the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launcher.shim.serverhost")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--superexec-auth-secret-file", required=True)
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates")
    return parser.parse_args(argv)


def guard_bundle(runtime: Any, trusted: dict[str, str], key: str | None = None,
                 claimed: dict[str, int] | None = None) -> None:
    """Check the run's app bundle before Flower's ServerApp runtime installs a byte of it: the
    installed fedcore's, and (with `key`) the one this launch submitted. A run someone else
    submitted first is refused and named (`claimed["run_id"]`) in one line."""
    install = runtime.install_from_fab

    def checked_install(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            check_bundle(fab_file, trusted)
            if key is not None:
                check_launch_key(fab_file, key, LAUNCH_KEY)
        except BundleRefused as exc:
            run = (claimed or {}).get("run_id")
            print(f"{REFUSED}{run if run is not None else '?'}: {exc}", file=sys.stderr,
                  flush=True)
            raise
        return install(fab_file, *args, **kwargs)

    runtime.install_from_fab = checked_install


def claim(address: str, secret: bytes, certificates: bytes | None,
          stopping: Any, claimed: dict[str, int] | None = None) -> str | None:
    """The ServerApp task's token, once `flwr run` has submitted the run (None: told to stop).

    Until the SuperLink answers, each call fails at once and is tried again POLL later: Flower's
    own retries back off for up to 20 s, which would start the run that much later.
    """
    import httpx

    retry = fi.make_simple_http_retry_invoker()
    retry.should_giveup = lambda _exc: True
    client = fi.RuntimeHttpClient.from_server_address(
        server_address=address, insecure=certificates is None, root_certificates=certificates,
        interceptors=[fi.RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                      fi.SuperExecAuthHttpInterceptor(master_secret=secret,
                                                      protected_methods={ACQUIRE})],
        retry_invoker=retry)
    request = fi.AcquireTaskRequest(supported_task_types=[fi.TaskType.SERVER_APP])
    try:
        while not stopping():
            try:
                res = client.AcquireTask(request)
            except httpx.TransportError:  # the SuperLink is not up yet
                time.sleep(POLL)
                continue
            if res.HasField("task") and res.token:
                if claimed is not None:
                    claimed["run_id"] = int(res.task.run_id)
                return str(res.token)
            time.sleep(POLL)
    finally:
        client.close()
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret = Path(args.superexec_auth_secret_file).read_bytes()
    certificates = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    stop = {"now": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    trusted = installed_manifest()  # before any app folder is on sys.path
    runtime = importlib.import_module(fi.NAMES["run_serverapp"][0])  # the module, not the function
    import torch  # noqa: F401  - warm up while the SuperLink starts and `flwr run` submits
    import torchvision  # noqa: F401

    from fedcore.device import check_pinned_gpu

    if (why := check_pinned_gpu()) is not None:  # the run fails at once, naming the GPU and fix
        print(f"fedlaunch: error: the ServerApp's {why}", file=sys.stderr, flush=True)
        return 2
    claimed: dict[str, int] = {}
    guard_bundle(runtime, trusted, launch_key(secret), claimed)
    print(f"fedlaunch: warm ServerApp pid {os.getpid()} ready; waiting for the run", flush=True)
    token = claim(args.runtime_api_address, secret, certificates, lambda: stop["now"], claimed)
    if token is None:
        return 0
    log_queue: Queue[str | None] = Queue()
    fi.mirror_output_to_queue(log_queue)  # the ServerApp's output reaches `flwr run --stream` too
    fi.run_serverapp(  # registers Flower's own SIGTERM handling; exits with the ServerApp
        runtime_api_address=args.runtime_api_address, log_queue=log_queue, token=token,
        insecure=certificates is None, certificates=certificates, parent_pid=os.getppid(),
        runtime_dependency_install=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
