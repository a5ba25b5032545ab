"""The simulation engine's workers, and the zygote that forks them from a torch-loaded parent.

The simulation host (launcher.shim.simhost) imports torch, Flower and fedcore, then at once, before
any thread or torch operation runs and before CUDA is touched, forks the zygote: a one-thread
process that forks a worker whenever the host asks (at the start, and to replace one that died).
So no worker imports torch again, and none is forked from a process that has run multi-threaded
torch work (such forks hang) or holds a CUDA context (which a child cannot use).

A worker takes its environment from the host's order (CUDA_VISIBLE_DEVICES by GPU UUID, thread
counts), connects to the host's Unix socket, and runs fedcore's ClientApp for each (Message,
Context) it is sent (launcher.shim.simwire), with the run's own run config, on the data set the host
loaded before the fork (fedcore.shared_data.preload) and each client's partition by index.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from launcher.shim import simwire
from launcher.shim.hostparts import connect_to_host, die_with_parent, train_figures

SHARED_DATA = "FEDLAUNCH_SHARED_DATA"
CONNECT_PATIENCE = 60.0


def zygote(orders: int, closing: list[int]) -> None:
    """Fork a worker for each JSON line read from fd `orders`; end when the host closes it."""
    die_with_parent()
    for fd in closing:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped at once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with os.fdopen(orders, "rb", buffering=0) as pipe:
        buffer = b""
        while True:
            chunk = pipe.read(4096)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                order = json.loads(line)
                if os.fork() == 0:
                    code = 1
                    try:
                        pipe.close()
                        code = worker(order)
                    except BaseException:  # noqa: BLE001 - reported in the host's log
                        traceback.print_exc()
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)


def start_zygote() -> tuple[int, int]:
    """Fork the zygote; (its pid, the fd to write orders to). Call before any thread starts."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            zygote(read, [write])
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(read)
    return pid, write


def order_worker(fd: int, name: str, socket_path: str, gpu: str, env: dict[str, str],
                 run_config: dict[str, Any]) -> None:
    """Ask the zygote for a worker."""
    line = json.dumps({"name": name, "socket": socket_path, "gpu": gpu, "env": env,
                       "run_config": run_config}) + "\n"
    os.write(fd, line.encode())


def worker(order: dict[str, Any]) -> int:
    """One worker: serve the host's (Message, Context) frames until it closes the socket."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher stops the run with SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update({str(k): str(v) for k, v in order["env"].items()})
    os.environ[SHARED_DATA] = "1"
    import torch

    from fedcore.device import check_pinned_gpu

    if (why := check_pinned_gpu()) is not None:  # stop at once: never train on the CPU in silence
        print(f"fedlaunch: error: {order['name']}: {why}", file=sys.stderr, flush=True)
        return 2
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    from fedcore.client_app import app

    run_config = dict(order["run_config"])
    name = str(order["name"])
    sock = connect_to_host(str(order["socket"]), "simulation host", CONNECT_PATIENCE, 0.1)
    simwire.send_frame(sock, {"op": "hello", "name": name, "pid": os.getpid(),
                              "gpu": str(order["gpu"])})
    print(f"fedlaunch: {name} pid {os.getpid()} ready ({torch.get_num_threads()} torch "
          f"thread(s), {torch.get_num_interop_threads()} inter-op)", flush=True)
    while True:
        try:
            header, parts = simwire.recv_frame(sock)
        except (simwire.Closed, OSError):
            return 0
        if header.get("op") != "task" or len(parts) != 2:
            continue
        message = simwire.unpack_message(parts[0])
        context = simwire.with_state(header, parts[1], run_config)
        config = message.content["config"] if "config" in message.content else None
        started = time.time()
        try:
            reply = app(message=message, context=context)
        except Exception as exc:  # noqa: BLE001 - the task fails; this worker goes on
            traceback.print_exc()
            simwire.send_frame(sock, {"op": "failed", "app_start": started, "app_end": time.time(),
                                      "reason": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        simwire.send_frame(
            sock, {"op": "reply", "app_start": started, "app_end": time.time(),
                   "status": "completed" if not reply.has_error() else "error",
                   **train_figures(reply, config)},
            simwire.pack_message(reply), simwire.pack_state(context, message))
