"""The run's SuperExec secret: written private, and what Flower's runtime APIs then refuse.

Against a real SuperLink and a real SuperNode on loopback, both started the way the plans start
them: an AcquireTask without the secret's signature (another local user's) is refused; the warm
executor's, signed with the secret, is answered.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from launcher.network.ports import free_port
from launcher.network.runtime_secret import secret_path, write_secret
from launcher.planning.plan import FLWR_ENV, bin_path
from tests.runs import wait_for_port

ROOT = Path(__file__).resolve().parents[1]



def test_secret_is_random_private_and_new_each_launch(tmp_path: Path) -> None:
    first = write_secret(tmp_path).read_bytes()
    again = write_secret(tmp_path)

    assert again == secret_path(tmp_path) == tmp_path / "flwr" / "superexec.secret"
    assert stat.S_IMODE(again.stat().st_mode) == 0o600
    assert len(first) == 64 and first != again.read_bytes()


def acquire_unsigned(port: int, guess: bytes | None = None) -> int:
    """An AcquireTask the way a stranger on this machine would send it: Flower's own client,
    unsigned or signed with a guessed secret (no retries: on 401 Flower's would SIGINT us)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if guess is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=guess, protected_methods={"/flwr.proto.Runtime/AcquireTask"}))
    client = RuntimeHttpClient.from_server_address(
        f"127.0.0.1:{port}", True, None, interceptors=interceptors)  # type: ignore[arg-type]
    try:
        client.AcquireTask(AcquireTaskRequest(supported_task_types=[
            TaskType.CLIENT_APP, TaskType.SERVER_APP]))
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code
    finally:
        client.close()
    return 200


def wait_port(port: int, procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    def tails() -> str:
        return " | ".join(log.read_text()[-1500:] for log in logs.glob("*.log"))

    wait_for_port(port, 90, detail=tails, abort=lambda: next(
        (f"a process exited with {p.returncode}" for p in procs if p.poll() is not None), None))


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_runtime_apis_hand_tasks_only_to_callers_with_the_secret(tmp_path: Path) -> None:
    from launcher.shim.executor import Executor

    # Prepare: a SuperLink and a SuperNode (process isolation) with the run's secret
    secret = write_secret(tmp_path)
    link_port, node_port = free_port(), free_port()
    env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(tmp_path / "flwr"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> None:
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))

    try:
        start("superlink", [bin_path("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                            "--port", str(link_port), "--isolation", "process",
                            "--superexec-auth-secret-file", str(secret),
                            "--disable-runtime-dependency-installation"])
        wait_port(link_port, procs, tmp_path)
        start("supernode", [sys.executable, "-m", "launcher.shim.supernode", "--insecure",
                            "--superlink", f"127.0.0.1:{link_port}", "--node-config",
                            "partition-id=0 num-partitions=1", "--isolation", "process",
                            "--host", "127.0.0.1", "--port", str(node_port),
                            "--superexec-auth-secret-file", str(secret)])
        wait_port(node_port, procs, tmp_path)

        # Execute
        strangers = {"superlink": acquire_unsigned(link_port),
                     "supernode": acquire_unsigned(node_port)}
        lines: list[str] = []
        keyed = Executor(f"127.0.0.1:{node_port}", lambda *a, **k: lines.append(str(a)),
                         secret=secret.read_bytes())
        signed = keyed.acquire()
        guessed = acquire_unsigned(node_port, guess=b"guessed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(15)

    # Assert: without the secret, refused by both; with it, answered (no task waiting)
    assert strangers == {"superlink": 401, "supernode": 401}, strangers
    assert signed is None and not lines
    assert guessed == 401
