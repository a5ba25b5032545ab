"""The Fleet-only gateway of --serve: what it forwards to the SuperLink on loopback and what it refuses.

The refusals are checked on the ASGI app itself (an upstream that nothing listens on, so any
request that slipped through would come back 502); the forwarding against a real SuperLink on
loopback with a real Flower Fleet client, node signatures and TLS on both hops.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.network.certs import CertPaths, generate
from launcher.network.gateway import FLEET_ROUTES, FleetGateway
from launcher.network.nodeauth import generate_node_keys
from launcher.network.ports import free_port
from launcher.planning.bundle import write_flwr_config
from launcher.planning.plan import FLWR_ENV, bin_path

ROOT = Path(__file__).resolve().parents[1]
CONTROL_AND_RUNTIME = [
    "/v1/control/start-run", "/v1/control/list-runs", "/v1/control/stop-run",
    "/v1/control/stream-logs", "/v1/control/register-node", "/v1/control/unregister-node",
    "/v1/control/list-nodes", "/v1/control/pull-artifacts", "/v1/control/get-login-details",
    "/v1/runtime/acquire-task", "/v1/runtime/pull-task-input", "/v1/runtime/push-task-output",
    "/v1/runtime/create-task", "/v1/runtime/responses", "/v1/runtime/pull-object",
]
OTHER = ["/health", "/healthz", "/docs", "/openapi.json", "/", "/v1/fleet", "/v1/fleet/",
         "/v1/fleet/../control/list-runs", "/v1/fleet/get-run/", "/V1/fleet/get-run",
         "//v1/fleet/get-run", "/v1/fleet/get-run/../../control/list-runs",
         "/v1/fleet/%2e%2e/control/list-runs"]



# ---- refusals, on the ASGI app ------------------------------------------------------------------

async def call(app: FleetGateway, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "headers": [], "scheme": "https",
             "client": ("10.9.9.9", 5000)}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_every_non_fleet_route_is_refused_without_reaching_the_superlink() -> None:
    # Prepare: an upstream nothing listens on; anything forwarded would answer 502
    refused: list[str] = []
    app = FleetGateway(f"http://127.0.0.1:{free_port()}", log=refused.append)

    async def probe() -> dict[tuple[str, str], int]:
        await app.start()
        try:
            out = {}
            for path in CONTROL_AND_RUNTIME + OTHER:
                for method in ("POST", "GET"):
                    out[(method, path)] = (await call(app, method, path, b"\x08\x01"))[0]
            for path in sorted(FLEET_ROUTES):  # allowed routes with the wrong method
                out[("GET", path)] = (await call(app, "GET", path))[0]
            out[("POST", "/v1/fleet/get-run")] = (await call(app, "POST", "/v1/fleet/get-run"))[0]
            return out
        finally:
            await app.close()

    # Execute
    statuses = asyncio.run(probe())

    # Assert: Control and Runtime 403, the rest 404; only an allowed POST was forwarded (502)
    forwarded = statuses.pop(("POST", "/v1/fleet/get-run"))
    assert forwarded == 502
    assert {statuses[("POST", p)] for p in CONTROL_AND_RUNTIME} == {403}
    assert set(statuses.values()) <= {403, 404}
    assert statuses[("POST", "/health")] == 404 and statuses[("GET", "/docs")] == 403
    assert len([line for line in refused if line.startswith("refused ")]) == len(statuses)
    assert "refused POST /v1/control/start-run from 10.9.9.9 (403)" in refused


def test_the_allowed_routes_are_the_ones_flowers_fleet_client_calls() -> None:
    """The allow-list is exactly the paths in flwr's Fleet HTTP client and router, no more."""
    import re

    import flwr.superlink.routers.fleet.router as router
    import flwr.supernode.fleet_http_client as client

    client_paths = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', Path(client.__file__).read_text()))
    router_paths = {"/v1/fleet" + p for p in re.findall(r'@router\.post\("(/[a-z-]+)"\)',
                                                        Path(router.__file__).read_text())}
    assert FLEET_ROUTES == client_paths == router_paths


# ---- forwarding, against a real SuperLink on loopback ------------------------------------------

class Stack:
    """A SuperLink on 127.0.0.1 and the gateway in front of it, as `--serve` starts them."""

    def __init__(self, tmp: Path, tls: CertPaths | None, node_auth: bool = False,
                 gateway_args: tuple[str, ...] = ()) -> None:
        self.tmp, self.tls = tmp, tls
        self.link_port, self.gate_port = free_port(), free_port()
        self.env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(tmp / "flwr")}
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        link_tls = (["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                     "--ssl-keyfile", str(tls.server_key)] if tls else ["--insecure"])
        auth = ["--enable-supernode-auth"] if node_auth else []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.start("superlink", [bin_path("flower-superlink"), *link_tls, *auth, "--host",
                                 "127.0.0.1", "--port", str(self.link_port), "--isolation",
                                 "process", "--disable-runtime-dependency-installation"])
        gate_tls = (["--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key),
                     "--upstream-ca", str(tls.ca_cert)] if tls else [])
        self.start("gateway", [sys.executable, "-m", "launcher.network.gateway", "--listen",
                               f"127.0.0.1:{self.gate_port}", "--upstream",
                               f"127.0.0.1:{self.link_port}", *gate_tls, *gateway_args])
        self.wait(self.link_port)
        self.wait(self.gate_port)

    def start(self, name: str, argv: list[str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))

    def wait(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        logs = {p.name: p.read_text()[-2000:] for p in self.tmp.glob("*.log")}
        pytest.fail(f"port {port} did not open: {logs}")

    def url(self, port: int) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    def post(self, port: int, path: str, body: bytes = b"") -> httpx.Response:
        verify = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else False
        with httpx.Client(verify=verify, trust_env=False) as client:
            return client.post(self.url(port) + path, content=body,
                               headers={"content-type": "application/protobuf"})

    def fleet(self, keys: tuple[Any, Any] | None = None) -> Any:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperNode")]
        if keys is not None:
            interceptors.append(NodeAuthHttpInterceptor(*keys))
        return FleetHttpClient.from_server_address(
            f"127.0.0.1:{self.gate_port}", self.tls is None,
            str(self.tls.ca_cert) if self.tls else None, interceptors=interceptors)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(tls: CertPaths | None, node_auth: bool = False) -> Stack:
        stacks.append(Stack(tmp_path, tls, node_auth))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.close()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_plain_gateway_forwards_a_supernodes_calls_and_refuses_control(stack_factory: Any) -> None:
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, PullMessagesRequest, RegisterNodeFleetRequest
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

    # Prepare
    stack = stack_factory(None)
    private, public = generate_key_pairs()
    key = public_key_to_bytes(public)

    # Execute: a SuperNode's first calls, through the gateway; Control through it and direct
    with stack.fleet((private, public)) as fleet:
        fleet.RegisterNode(RegisterNodeFleetRequest(public_key=key))
        node_id = fleet.ActivateNode(ActivateNodeRequest(public_key=key, heartbeat_interval=30)).node_id
        beat = fleet.SendNodeHeartbeat(SendNodeHeartbeatRequest(node=Node(node_id=node_id),
                                                                heartbeat_interval=30))
        pulled = fleet.PullMessages(PullMessagesRequest(node=Node(node_id=node_id)))
    through = stack.post(stack.gate_port, "/v1/control/list-runs")
    direct = stack.post(stack.link_port, "/v1/control/list-runs")

    # Assert
    assert node_id != 0 and beat.success and list(pulled.messages_list) == []
    assert direct.status_code == 200  # the route is live on loopback ...
    assert through.status_code == 403  # ... and closed to the network
    assert b"Fleet API only" in through.content


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_tls_gateway_passes_node_signatures_and_keeps_registration_on_loopback(
        stack_factory: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    # Prepare: TLS on both hops, SuperNode authentication, node-0's key registered on loopback
    tls = generate(tmp_path / "tls", [])
    generate_node_keys(tmp_path / "keys", 2)
    stack = stack_factory(tls, node_auth=True)

    def keypair(i: int) -> tuple[Any, Any]:
        private = serialization.load_ssh_private_key((tmp_path / "keys" / f"node-{i}.key").read_bytes(), None)
        return private, private.public_key()

    write_flwr_config(tmp_path / "flwr", f"127.0.0.1:{stack.link_port}", tls.ca_cert)
    register = subprocess.run([bin_path("flwr"), "supernode", "register",
                               str(tmp_path / "keys" / "node-0.pub"), "fedlaunch"],
                              env=stack.env, capture_output=True, text=True, timeout=60)
    write_flwr_config(tmp_path / "flwr", f"127.0.0.1:{stack.gate_port}", tls.ca_cert)
    from_network = subprocess.run([bin_path("flwr"), "supernode", "register",
                                   str(tmp_path / "keys" / "node-1.pub"), "fedlaunch"],
                                  env=stack.env, capture_output=True, text=True, timeout=60)

    # Execute: the registered node and an unregistered one activate through the gateway
    registered, stranger = keypair(0), keypair(1)
    with stack.fleet(registered) as fleet:
        node_id = fleet.ActivateNode(ActivateNodeRequest(
            public_key=public_key_to_bytes(registered[1]), heartbeat_interval=30)).node_id
    with stack.fleet(stranger) as fleet:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            fleet.ActivateNode(ActivateNodeRequest(
                public_key=public_key_to_bytes(stranger[1]), heartbeat_interval=30))
        with pytest.raises(httpx.HTTPStatusError) as self_registration:
            fleet.RegisterNode(RegisterNodeFleetRequest(public_key=public_key_to_bytes(stranger[1])))
    unsigned = stack.post(stack.gate_port, "/v1/fleet/activate-node",
                          ActivateNodeRequest(public_key=public_key_to_bytes(registered[1]))
                          .SerializeToString())

    # Assert
    assert register.returncode == 0, register.stdout + register.stderr
    assert node_id != 0
    assert from_network.returncode != 0 and "403" in from_network.stdout + from_network.stderr, (
        from_network.stdout + from_network.stderr)
    assert refused.value.response.status_code in (401, 403, 412)  # 412: key not registered
    assert self_registration.value.response.status_code >= 400
    assert unsigned.status_code == 401  # the signature headers are what admitted node-0
