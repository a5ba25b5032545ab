"""What one request to a SuperNode's runtime API costs: wall time, and CPU on each side.

    python bench/runtime_api.py [--requests 1000]

Starts Flower's own SuperNode runtime API app (`flwr.supernode.main.create_app`, in-memory node
state, uvicorn, as `flower-supernode` serves it) in a child process, twice: as Flower ships it,
and with fedlaunch's `inline_sync_dependencies` (launcher/shim/supernode.py). Each time, Flower's
own `RuntimeHttpClient` sends AcquireTask (every dependency resolved, no task pending) in a loop
and the script prints, per request: the round trip, the client's CPU and the server's CPU (from
/proc/<pid>/stat). A pool task makes 14 to 19 such requests to its SuperNode (the claim, the
worker's pulls and pushes; 14 once the worker keeps the round's model), so the server's CPU figure
times that is what the SuperNode spends per task.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(port: int, inline: bool) -> None:
    import uvicorn
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.main import create_app
    from flwr.supernode.nodestate import NodeStateFactory

    if inline:
        from launcher.shim.supernode import inline_sync_dependencies

        inline_sync_dependencies()
    app = create_app(NodeStateFactory(objectstore_factory=ObjectStoreFactory()))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure(inline: bool, requests: int) -> tuple[float, float, float]:
    from launcher.shim import flwr_internals as fi

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)]
                              + (["--inline"] if inline else []), cwd=ROOT)
    try:
        client = fi.RuntimeHttpClient.from_server_address(
            server_address=f"127.0.0.1:{port}", insecure=True, root_certificates=None,
            interceptors=[fi.RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        request = fi.AcquireTaskRequest(supported_task_types=[fi.TaskType.CLIENT_APP])
        deadline = time.monotonic() + 60
        while True:
            try:
                client.AcquireTask(request)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for _ in range(50):  # warm up
            client.AcquireTask(request)
        server_before, client_before = cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        for _ in range(requests):
            client.AcquireTask(request)
        wall = time.perf_counter() - started
        return (wall / requests * 1000, (time.process_time() - client_before) / requests * 1000,
                (cpu_seconds(server.pid) - server_before) / requests * 1000)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.inline)
        return
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} CPU x{os.cpu_count()}, load {load:.1f}; "
          f"{args.requests} AcquireTask requests each")
    print("| SuperNode runtime API | round trip | client CPU | server CPU |")
    print("|---|---|---|---|")
    for inline in (False, True, False, True):
        wall, client, server = measure(inline, args.requests)
        name = "dependencies inlined (fedlaunch)" if inline else "as Flower ships it"
        print(f"| {name} | {wall:.2f} ms | {client:.2f} ms | {server:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
