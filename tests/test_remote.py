"""--serve / --join end to end: runs across machines.

Each role (serve, join) starts as its own process tree, as on separate machines: this file
doubles as the role runner (`python tests/test_remote.py ROLE JSON`). The plans and
`fedlaunch certs` are tested without processes in test_remote_plans.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from fedcore.config import RunConfig
from launcher.network.certs import generate
from launcher.network.gateway_limits import Limits
from launcher.network.nodeauth import generate_node_keys
from launcher.network.ports import free_port
from launcher.network.remote import (
    join_plan,
    parse_address,
    serve_plan,
)
from launcher.planning.bundle import write_flwr_config
from launcher.planning.placement import Placement
from launcher.planning.pool import WorkerChoice
from launcher.supervision.hints import explain_failure
from tests.runs import read_metrics, role_of, rounds, wait_until

ROOT = Path(__file__).resolve().parents[1]
CFG = RunConfig(dataset="synthetic", model="cnn", limit_train=600, limit_test=200, clients=2,
                rounds=2, batch_size=32, round_timeout=120.0)


def cpu(clients: int) -> Placement:
    return Placement(gpus=(), client_gpu=(None,) * clients)


# ---- end to end: each role its own process tree -----------------------------------------------

def run_role(role: str, spec: dict[str, Any]) -> int:
    """Build the role's plan here (its ports are this machine's) and supervise it to the end."""
    from fedcore.rundir import RunDir
    from launcher.events import EventBus, Notice, RunFinished
    from launcher.supervision.supervisor import Supervisor

    run_dir = Path(spec["run_dir"])
    cfg = CFG.replace(clients=spec["clients"], rounds=spec.get("rounds", CFG.rounds))
    keys = Path(spec["keys"]) if spec.get("keys") else None
    if role == "serve":
        cfg = cfg.replace(out_dir=str(run_dir))
        RunDir(run_dir).create().write_config({"mode": "federated", **cfg.to_json()})
        local = range(*spec.get("local", (0, 0)))
        plan = serve_plan(cfg, run_dir, cpu(len(local)), parse_address(spec["address"]),
                          Path(spec["certs"]) if spec.get("certs") else None, insecure=False,
                          local_partitions=local, node_keys=keys,
                          limits=Limits(**spec.get("limits", {})))
    else:
        ids = range(*spec["ids"])
        pool = WorkerChoice(spec["workers"], "test") if spec.get("workers") else None
        plan = join_plan(cfg, run_dir, cpu(pool.workers if pool else len(ids)),
                         parse_address(spec["address"], "--join"), ids, spec["clients"],
                         Path(spec["ca"]) if spec.get("ca") else None,
                         insecure=spec.get("insecure", False),
                         max_restarts=0, connect_timeout=60.0, node_keys=keys, workers=pool)

    def report(event: object) -> None:
        if isinstance(event, (Notice, RunFinished)):
            print(json.dumps({"event": type(event).__name__, **dataclasses.asdict(event)}), flush=True)

    bus = EventBus()
    bus.subscribe(report)
    supervisor = Supervisor(plan, bus, stop_timeout=5.0)

    async def main() -> int:
        supervisor.install_signal_handlers()
        return await supervisor.run()

    return asyncio.run(main())


class Role:
    """One role's process tree, started the way a user on another machine would start it."""

    def __init__(self, name: str, spec: dict[str, Any], prefix: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.out = Path(spec["run_dir"]).with_suffix(".out")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(path)}
        with self.out.open("w") as out:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, __file__, name, json.dumps(spec)], stdout=out,
                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the role's exit; its RunFinished event."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name} did not finish in {timeout:.0f} s:\n{self.out.read_text()[-3000:]}")
        for line in reversed(self.out.read_text().splitlines()):
            if line.startswith('{"event": "RunFinished"'):
                return dict(json.loads(line))
        pytest.fail(f"{self.name} exited {self.proc.returncode} without RunFinished:\n"
                    f"{self.out.read_text()[-3000:]}")

    def stop(self) -> dict[str, Any] | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return None
        return self.finish(0)


def rounds_of(run_dir: Path) -> list[dict[str, Any]]:
    return rounds(run_dir)


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_serve_and_two_joins_over_tls_and_a_join_without_the_ca(tmp_path: Path) -> None:
    # Prepare: TLS files; a SuperLink on 127.0.0.1 waiting for 2 nodes; two joins with the CA,
    # one without it.
    tls = generate(tmp_path / "tls", [])
    address = f"127.0.0.1:{free_port()}"
    roles: list[Role] = []
    started = time.monotonic()
    try:
        serve = Role("serve", {"run_dir": str(tmp_path / "serve"), "clients": 2, "address": address,
                               "certs": str(tls.dir)})
        roles.append(serve)
        joins = [Role("join", {"run_dir": str(tmp_path / f"join{i}"), "clients": 2, "ids": [i, i + 1],
                               "address": address, "ca": str(tls.ca_cert)}) for i in (0, 1)]
        roles.extend(joins)
        stranger = Role("join", {"run_dir": str(tmp_path / "stranger"), "clients": 2, "ids": [1, 2],
                                 "address": address})
        roles.append(stranger)

        # Execute
        refused = stranger.finish(120)
        refused_after = time.monotonic() - started
        served = serve.finish(300)
        served_after = time.monotonic() - started
        left = [join.stop() for join in joins]
    finally:
        for role in roles:
            role.stop()

    # Assert: the run completed both rounds with both remote clients replying
    assert served["exit_code"] == 0, serve.out.read_text()[-3000:]
    rounds = rounds_of(tmp_path / "serve")
    assert [(r["round"], r["replies"], r["failures"]) for r in rounds] == [(1, 2, 0), (2, 2, 0)]
    for i, join in enumerate(left):
        assert join is not None and join["exit_reason"] == "terminated", joins[i].out.read_text()[-2000:]
        log = (tmp_path / f"join{i}" / "logs" / f"client-{i}.log").read_text()
        assert log.count("Receiving: train message") == 2
    # the client without the CA stopped on its own, quickly, and says why
    assert refused["exit_code"] == 1 and refused["failed_process"] == "client-1"
    tail = "\n".join(refused["log_tail"])
    assert "CERTIFICATE_VERIFY_FAILED" in tail
    assert "--root-certificates ca.crt" in (explain_failure(refused["log_tail"]) or "")
    assert refused_after < 90
    print(f"\nrefused after {refused_after:.1f} s; 2 rounds served after {served_after:.1f} s")


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_a_join_of_four_clients_on_one_worker_signs_each_in_with_its_key(tmp_path: Path) -> None:
    """A joining machine with more clients than workers: its 4 clients are SuperNodes of one
    client host, each signing in over TLS with its own node key, and 1 worker trains them all."""
    tls = generate(tmp_path / "tls", [])
    generate_node_keys(tls.dir / "nodes", 4)
    address = f"127.0.0.1:{free_port()}"
    roles: list[Role] = []
    try:
        serve = Role("serve", {"run_dir": str(tmp_path / "serve"), "clients": 4, "address": address,
                               "certs": str(tls.dir), "keys": str(tls.dir)})
        roles.append(serve)
        join = Role("join", {"run_dir": str(tmp_path / "join"), "clients": 4, "ids": [0, 4],
                             "workers": 1, "address": address, "ca": str(tls.ca_cert),
                             "keys": str(tls.dir / "nodes")})
        roles.append(join)
        served = serve.finish(300)
        joined = join.stop()
    finally:
        for role in roles:
            role.stop()

    assert served["exit_code"] == 0, serve.out.read_text()[-3000:]
    assert [(r["round"], r["replies"]) for r in rounds_of(tmp_path / "serve")] == [(1, 4), (2, 4)]
    assert joined is not None and joined["exit_reason"] == "terminated", join.out.read_text()[-3000:]
    tasks = [json.loads(line) for line in
             (tmp_path / "join" / "workers.jsonl").read_text().splitlines()]
    trained = [t for t in tasks if t.get("type") == "train" and t.get("status") == "completed"]
    assert sorted(t["client"] for t in trained) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {t["worker"] for t in trained} == {"worker-0"}
    for round_ in (1, 2):  # the worker pulls a round's model once, then only each task's head
        kept = sorted(t["kept_objects"] for t in trained if t["round"] == round_)
        assert kept[0] == 0 and all(k >= 4 for k in kept[1:]), trained
    register = (tmp_path / "serve" / "logs" / "register.log").read_text()
    assert register.count("registered successfully") == 4


BAD_REPLIES = ("nan", "shape", "names", "count-huge", "count-negative", "count-fraction",
               "no-partition", "metric-list")


@pytest.mark.e2e
@pytest.mark.slow  # nine rounds across two process trees: 3.5 min on 2 loaded cores
@pytest.mark.timeout(420)
def test_a_joined_client_with_bad_replies_is_dropped_and_named_and_the_run_goes_on(
        tmp_path: Path) -> None:
    """Issue 21 item 1: a joined client whose reply is broken a different way each round (NaN
    weights, a wrong shape, other array names, a count of 1e15, a negative or fractional count,
    no partition id, a list for the loss): every bad reply is dropped and named, the model the
    good client trains stays finite, and the run completes (before: a crash after 0 rounds, or
    a NaN model and exit 0)."""
    # Prepare: a server with partition 0 here, partition 1 joined and misbehaving
    tls = generate(tmp_path / "tls", [])
    address = f"127.0.0.1:{free_port()}"
    total = len(BAD_REPLIES) + 1  # the last round: the joined client behaves
    roles: list[Role] = []
    try:
        serve = Role("serve", {"run_dir": str(tmp_path / "serve"), "clients": 2, "rounds": total,
                               "address": address, "local": [0, 1], "certs": str(tls.dir)})
        roles.append(serve)
        join = Role("join", {"run_dir": str(tmp_path / "join"), "clients": 2, "rounds": total,
                             "ids": [1, 2], "address": address, "ca": str(tls.ca_cert)},
                    env={"FEDLAUNCH_SIMULATE_BAD_REPLY": ",".join(BAD_REPLIES)})
        roles.append(join)

        # Execute
        served = serve.finish(360)
    finally:
        for role in roles:
            role.stop()

    # Assert: every round completed; the bad ones kept partition 0's reply alone
    assert served["exit_code"] == 0, serve.out.read_text()[-3000:]
    records = read_metrics(tmp_path / "serve")
    ends = [r for r in records if r["event"] == "round"]
    assert [(r["round"], r["clients"], r["rejected"]) for r in ends] == [
        *((n, [0], 1) for n in range(1, total)), (total, [0, 1], 0)]
    assert all(np.isfinite(r["loss"]) for r in ends)
    rejected = [r for r in records if r["event"] == "rejected"]
    assert [r["round"] for r in rejected] == list(range(1, total))
    node = rejected[0]["node_id"]
    assert all(r["node_id"] == node for r in rejected)
    assert [r["partition_id"] for r in rejected] == [1, 1, 1, 1, 1, 1, None, 1]
    reasons = [r["reason"] for r in rejected]
    for reason, expected in zip(reasons, ["NaN or infinite", "the model's is float32",
                                          "instead of the model's", "num-examples 1000000000000000",
                                          "num-examples -5", "num-examples 2.5",
                                          "metric partition-id missing",
                                          "metric train-loss is list"], strict=True):
        assert expected in reason, reasons
    for end, bad in zip(ends, rejected, strict=False):
        assert end["rejections"] == [{k: bad[k] for k in ("node_id", "partition_id", "reason")}]
    log = (tmp_path / "serve" / "logs" / "server.log").read_text()
    assert f"round 4: rejected the reply of node {node} (partition 1): num-examples" in log
    out = serve.out.read_text()  # the Notice each rejection becomes, as the TUI and log show it
    assert f"round 1: rejected the reply of node {node} (partition 1)" in out
    summary = json.loads((tmp_path / "serve" / "summary.json").read_text())
    assert summary["exit_reason"] == "completed" and summary["rounds_completed"] == total


@pytest.mark.e2e
@pytest.mark.slow  # over a minute: the restarted node waits out Flower's heartbeat window
@pytest.mark.timeout(420)
def test_node_keys_admit_registered_nodes_only_and_a_restarted_one_signs_in_again(
        tmp_path: Path) -> None:
    """--node-keys: the SuperLink registers nodes/*.pub; local client 0 and a joined client 1
    sign in with their keys and train; a join with a key that was never registered is refused;
    local client 0, killed, signs in again under the same node id once the SuperLink lets go of
    the dead one (up to 60 s), and trains again."""
    tls = generate(tmp_path / "tls", [])
    generate_node_keys(tls.dir / "nodes", 2)
    joiner = tmp_path / "joiner-keys"  # what a user copies to the joining machine
    joiner.mkdir()
    shutil.copy(tls.dir / "nodes" / "node-1.key", joiner)
    stranger_keys = tmp_path / "stranger-keys"
    generate_node_keys(stranger_keys, 2)  # well-formed keys the SuperLink never saw
    address = f"127.0.0.1:{free_port()}"
    serve_dir = tmp_path / "serve"
    departed = serve_dir / "departed-nodes.txt"
    roles: list[Role] = []
    try:
        serve = Role("serve", {"run_dir": str(serve_dir), "clients": 2, "rounds": 2000,
                               "address": address, "certs": str(tls.dir), "keys": str(tls.dir),
                               "local": [0, 1]})
        roles.append(serve)
        join = Role("join", {"run_dir": str(tmp_path / "join"), "clients": 2, "ids": [1, 2],
                             "address": address, "ca": str(tls.ca_cert), "keys": str(joiner)})
        roles.append(join)
        wait_for(lambda: replies(serve_dir)[:2] == [2, 2], 180, serve)
        stranger = Role("join", {"run_dir": str(tmp_path / "stranger"), "clients": 2,
                                 "ids": [1, 2], "address": address, "ca": str(tls.ca_cert),
                                 "keys": str(stranger_keys)})
        roles.append(stranger)
        node_id = (serve_dir / "progress" / "client-0.node").read_text().strip()
        client = next(p for p in psutil.Process(serve.proc.pid).children(recursive=True)
                      if "launcher.shim.executor" in " ".join(p.cmdline()))
        client.kill()
        killed = time.monotonic()
        wait_for(lambda: departed.exists() and f"+{node_id}" in departed.read_text().split(),
                 120, serve)
        back_after = time.monotonic() - killed
        back_at = len(replies(serve_dir))
        wait_for(lambda: 2 in replies(serve_dir)[back_at:], 60, serve)
        refused = stranger.finish(120)
        served = serve.stop()
        joined = join.stop()
    finally:
        for role in roles:
            role.stop()

    assert served is not None and served["exit_reason"] == "terminated", serve.out.read_text()[-3000:]
    got = replies(serve_dir)
    assert 1 in got[2:back_at], "rounds went on with the joined client while client 0 was away"
    assert (serve_dir / "progress" / "client-0.node").read_text().strip() == node_id
    assert departed.read_text().split() == [node_id, f"+{node_id}"]
    assert back_after < 90, f"client 0 signed in again after {back_after:.0f} s"
    register = (serve_dir / "logs" / "register.log").read_text()
    assert register.count("registered successfully") == 2
    assert joined is not None and joined["exit_reason"] == "terminated"
    assert refused["exit_code"] == 1 and refused["failed_process"] == "client-1"
    tail = "\n".join(refused["log_tail"])
    assert "Failed to activate SuperNode" in tail and "does not admit this node's key" in tail
    print(f"\nclient 0 back {back_after:.1f} s after its kill")


def replies(run_dir: Path) -> list[int]:
    """Replies per round so far."""
    if not (run_dir / "metrics.jsonl").exists():
        return []
    return [r["replies"] for r in rounds_of(run_dir)]


def wait_for(condition: Any, timeout: float, role: Role) -> None:
    """runs.wait_until, giving up as soon as the role's fedlaunch has exited."""
    wait_until(condition, timeout, f"{role.name}: condition", interval=0.2,
               abort=lambda: None if role.proc.poll() is None else f"exit {role.proc.returncode}",
               detail=lambda: role.out.read_text()[-3000:])


# ---- the same across two network namespaces (root only) ---------------------------------------

def _can_make_namespaces() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str, str]]:
    """Namespaces A (10.213.N.1) and B (10.213.N.2) joined by a veth pair made here, removed after."""
    if not _can_make_namespaces():
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = f"fl{os.getpid() % 100000}"
    net = f"10.213.{os.getpid() % 250 + 1}"
    a, b = f"{tag}a", f"{tag}b"
    steps = [
        ["ip", "netns", "add", a], ["ip", "netns", "add", b],
        ["ip", "link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb"],
        ["ip", "link", "set", f"{tag}va", "netns", a], ["ip", "link", "set", f"{tag}vb", "netns", b],
        ["ip", "-n", a, "addr", "add", f"{net}.1/24", "dev", f"{tag}va"],
        ["ip", "-n", b, "addr", "add", f"{net}.2/24", "dev", f"{tag}vb"],
        ["ip", "-n", a, "link", "set", f"{tag}va", "up"], ["ip", "-n", b, "link", "set", f"{tag}vb", "up"],
        ["ip", "-n", a, "link", "set", "lo", "up"], ["ip", "-n", b, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make network namespaces here: {' '.join(step)}: {done.stderr.strip()}")
        yield a, b, f"{net}.1", f"{net}.2"
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_serve_and_join_across_network_namespaces(tmp_path: Path,
                                                  two_hosts: tuple[str, str, str, str]) -> None:
    """Namespace A serves 10.213.N.1:9092 with TLS and node keys and runs partition 0; namespace B
    joins with partition 1 and only the CA and its key. The run completes, and from B, mid-run,
    the served address answers nothing but the Fleet API: every Control and Runtime route gets
    403/404, the SuperLink's own port is closed, and `flwr supernode register` and a stranger's
    `flwr run` against the served address fail."""
    # Prepare
    ns_a, ns_b, host_a, _ = two_hosts
    tls = generate(tmp_path / "tls", [host_a])
    generate_node_keys(tls.dir / "nodes", 2)
    machine_b = tmp_path / "client-machine"
    (machine_b / "keys").mkdir(parents=True)
    ca_copy = machine_b / "ca.crt"
    shutil.copy(tls.ca_cert, ca_copy)
    shutil.copy(tls.dir / "nodes" / "node-1.key", machine_b / "keys")
    generate_node_keys(machine_b / "stranger", 1)
    address = f"{host_a}:9092"
    serve_dir = tmp_path / "serve"
    serve = Role("serve", {"run_dir": str(serve_dir), "clients": 2, "rounds": 6, "address": address,
                           "certs": str(tls.dir), "keys": str(tls.dir), "local": [0, 1]},
                 ("ip", "netns", "exec", ns_a))
    join = Role("join", {"run_dir": str(machine_b / "join"), "clients": 2, "ids": [1, 2],
                         "address": address, "ca": str(ca_copy), "keys": str(machine_b / "keys")},
                ("ip", "netns", "exec", ns_b))
    try:
        # Execute: probe from B once round 1 is in, with the rounds held meanwhile (the ServerApp
        # suspended): six rounds take seconds, the probe's two `flwr` commands longer on a busy
        # machine, and the served address must still be up for its last call
        wait_for(lambda: len(replies(serve_dir)) >= 1, 400, serve)
        link = tomllib.loads((serve_dir / "flwr" / "submit" / "config.toml").read_text())
        link_port = int(link["superlink"]["fedlaunch"]["address"].rsplit(":", 1)[1])
        serverapp = wait_until(lambda: next((p for p in psutil.Process(serve.proc.pid).children(
            recursive=True) if role_of(p) == "serverapp"), None), 30, "the served ServerApp")
        serverapp.suspend()
        held = time.monotonic()
        try:
            probe = subprocess.run(
                ["ip", "netns", "exec", ns_b, sys.executable, __file__, "probe", json.dumps({
                    "address": address, "link": f"{host_a}:{link_port}", "ca": str(ca_copy),
                    "home": str(machine_b / "stranger-flwr"), "app": str(machine_b / "app"),
                    "key": str(machine_b / "stranger" / "node-0.pub")})],
                capture_output=True, text=True, timeout=240,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        finally:
            serverapp.resume()
        print(f"\nthe probe held the rounds for {time.monotonic() - held:.1f} s")
        served = serve.finish(400)
        left = join.stop()
    finally:
        serve.stop()
        join.stop()

    # Assert: the run completed with both clients
    assert served["exit_code"] == 0, serve.out.read_text()[-3000:]
    assert [(r["round"], r["replies"]) for r in rounds_of(serve_dir)] == [(i, 2) for i in range(1, 7)]
    assert left is not None and left["exit_reason"] == "terminated"
    log = (machine_b / "join" / "logs" / "client-1.log").read_text()
    assert log.count("Receiving: train message") == 6
    # ... and from B nothing but the Fleet API answered
    assert probe.returncode == 0, probe.stdout + probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    routes = found["routes"]
    assert len(routes) > 40 and all(str(code) in ("403", "404") for code in routes.values()), routes
    assert found["fleet"] == 401, found  # the gateway was up, forwarding to the SuperLink
    assert found["superlink_port"] == "refused", found
    for command in ("register", "run"):  # refused by the gateway, not unreachable
        assert found[command]["code"] != 0 and "403" in found[command]["out"], found[command]["out"]
    refusals = (serve_dir / "logs" / "gateway.log").read_text()
    assert "refused POST /v1/control/start-run from 10.213." in refusals
    assert "refused POST /v1/control/register-node from 10.213." in refusals


def probe_served_address(spec: dict[str, Any]) -> int:
    """From the joining machine: every Control and Runtime route (read from Flower's routers),
    the SuperLink's loopback port, `flwr supernode register` and a stranger's `flwr run`."""
    import importlib.util
    import re

    import httpx

    from launcher.planning.bundle import make_app
    from launcher.planning.plan import FLWR_ENV, bin_path

    def routes(prefix: str, module: str) -> list[str]:
        source = Path(str(importlib.util.find_spec(module).origin)).read_text()  # type: ignore[union-attr]
        return [prefix + p for p in re.findall(r'@router\.post\("(/[a-z-]+)"\)', source)]

    paths = routes("/v1/control", "flwr.superlink.routers.control.router")
    paths += routes("/v1/runtime", "flwr.supercore.routers.runtime.router")
    paths += ["/v1/runtime/responses", "/health", "/docs", "/openapi.json"]
    base = f"https://{spec['address']}"
    out: dict[str, Any] = {"routes": {}}
    home = Path(spec["home"])
    write_flwr_config(home, spec["address"], Path(spec["ca"]))
    make_app(Path(spec["app"]), CFG)
    env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(home)}
    for name, argv in (("register", ["supernode", "register", spec["key"], "fedlaunch"]),
                       ("run", ["run", spec["app"], "fedlaunch"])):
        done = subprocess.run([bin_path("flwr"), *argv], env=env, capture_output=True, text=True,
                              timeout=90)
        out[name] = {"code": done.returncode, "out": (done.stdout + done.stderr)[-2000:]}
    with httpx.Client(verify=ssl.create_default_context(cafile=spec["ca"]), trust_env=False,
                      timeout=15) as client:
        for path in paths:
            try:
                code: object = client.post(base + path, content=b"",
                                           headers={"content-type": "application/protobuf"}).status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            out["routes"][path] = code
        # last: a Fleet call still goes through to the SuperLink, whose node authentication
        # refuses it (401), so the gateway was up during every probe above
        out["fleet"] = client.post(base + "/v1/fleet/get-run", content=b"",
                                   headers={"content-type": "application/protobuf"}).status_code
    host, port = spec["link"].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        out["superlink_port"] = "open"
    except OSError:
        out["superlink_port"] = "refused"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        sys.exit(probe_served_address(json.loads(sys.argv[2])))
    sys.exit(run_role(sys.argv[1], json.loads(sys.argv[2])))
