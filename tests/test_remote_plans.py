"""--serve / --join plans and `fedlaunch certs`: TLS files, addresses, command lines, and the
hints for a failed connection; no process is started (test_remote.py runs them end to end)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
import threading
import tomllib
from pathlib import Path

import pytest

from fedcore.errors import UsageError
from launcher.events import RunStarted
from launcher.network.certs import CertPaths, certs_main, generate, server_names
from launcher.network.gateway_limits import Limits
from launcher.network.nodeauth import generate_node_keys
from launcher.network.remote import (
    Address,
    join_plan,
    parse_address,
    root_ca,
    serve_plan,
)
from launcher.planning.bundle import write_flwr_config
from launcher.planning.gpus import GpuInfo
from launcher.planning.placement import Placement
from launcher.planning.pool import WorkerChoice
from launcher.supervision.follow import RunFollower
from launcher.supervision.hints import explain_failure
from launcher.tui.state import RunState
from tests.runs import run_cli
from tests.test_remote import CFG, cpu


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate(tmp_path_factory.mktemp("certs") / "tls", ["server.lan", "10.20.30.40"])


# ---- certificates -------------------------------------------------------------------------------

def test_certificate_names_the_hosts_and_loopback(certs: CertPaths) -> None:
    names = server_names(certs.server_cert)

    assert names == ["server.lan", "localhost", "10.20.30.40", "127.0.0.1"]


def test_keys_are_private_and_certificates_readable(certs: CertPaths) -> None:
    modes = {p.name: stat.S_IMODE(p.stat().st_mode)
             for p in (certs.ca_key, certs.server_key, certs.ca_cert, certs.server_cert)}

    assert modes == {"ca.key": 0o600, "server.key": 0o600, "ca.crt": 0o644, "server.pem": 0o644}
    assert stat.S_IMODE(certs.dir.stat().st_mode) == 0o700


def test_ca_verifies_server_certificate_in_a_tls_handshake(certs: CertPaths) -> None:
    """A client trusting only ca.crt completes a handshake for a listed name and refuses others."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))

    def handshake(name: str) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                with client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                    return str(tls.version())
            except ssl.SSLCertVerificationError as exc:
                return exc.verify_message

    results = {name: handshake(name) for name in ("127.0.0.1", "server.lan", "other.lan")}
    listener.close()

    assert results["127.0.0.1"].startswith("TLSv1.")
    assert results["server.lan"].startswith("TLSv1.")
    assert "mismatch" in results["other.lan"]


def test_certs_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = generate(tmp_path / "tls", ["a.lan"])
    ca_before = first.ca_cert.read_bytes()

    with pytest.raises(UsageError, match="already holds ca.crt.*--force"):
        generate(tmp_path / "tls", ["b.lan"])
    assert first.ca_cert.read_bytes() == ca_before
    again = generate(tmp_path / "tls", ["b.lan"], force=True)

    assert again.ca_cert.read_bytes() != ca_before
    assert "b.lan" in server_names(again.server_cert)
    assert stat.S_IMODE(again.ca_key.stat().st_mode) == 0o600


@pytest.mark.parametrize(("host", "message"), [
    ("server.lan:9092", "without a port"),
    ("0.0.0.0", "listen everywhere"),
    ("bad_name!", "not a host name"),
])
def test_certs_main_rejects_bad_hosts(tmp_path: Path, host: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        certs_main([str(tmp_path / "tls"), "--host", host])
    assert not (tmp_path / "tls").exists()


def test_certs_main_writes_and_tells_how_to_join(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = certs_main([str(tmp_path / "tls"), "--host", "gpu1.lan", "--host", "192.168.1.5"])

    out = capsys.readouterr().out
    assert code == 0
    assert "gpu1.lan, localhost, 192.168.1.5, 127.0.0.1" in out
    assert "fedlaunch --join gpu1.lan:9092 --root-certificates ca.crt" in out


# ---- addresses and plans ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:9092", Address("0.0.0.0", 9092)),
    ("server.lan:80", Address("server.lan", 80)),
    ("[::]:9092", Address("::", 9092)),
])
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert str(parse_address(text)) == text


@pytest.mark.parametrize("text", ["9092", "server.lan", "server.lan:0", "::1:9092", "[::1]", "h:99999"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_address(text, "--join")


def test_serve_beyond_loopback_needs_tls_or_insecure(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--certificates DIR.*fedlaunch certs.*--insecure"):
        serve_plan(CFG, tmp_path, cpu(0), Address("0.0.0.0", 9092), None, insecure=False)


def test_serve_insecure_warns(tmp_path: Path) -> None:
    plan = serve_plan(CFG, tmp_path, cpu(0), Address("0.0.0.0", 9092), None, insecure=True)

    by_role = {p.role: p.argv for p in plan.processes}
    assert "--insecure" in by_role["superlink"]
    assert by_role["superlink"][by_role["superlink"].index("--host") + 1] == "127.0.0.1"
    gateway = by_role["gateway"]  # plain HTTP, but still the Fleet API only
    assert gateway[gateway.index("--listen") + 1] == "0.0.0.0:9092"
    assert "--certfile" not in gateway and "--upstream-ca" not in gateway
    assert any("--insecure" in w and "unencrypted" in w for w in plan.placement.warnings)
    assert "warning: --insecure" in plan.describe()


def test_serve_on_loopback_without_certificates_is_plain_and_quiet(tmp_path: Path) -> None:
    plan = serve_plan(CFG, tmp_path, cpu(2), Address("127.0.0.1", 9092), None, insecure=False,
                      local_partitions=range(2))

    assert all("--insecure" in p.argv for p in plan.processes
               if p.role in ("superlink", "serverapp", "supernode"))
    assert plan.placement.warnings == ()
    assert plan.root_certificates == ""


def test_serve_plan_with_tls(tmp_path: Path, certs: CertPaths) -> None:
    plan = serve_plan(CFG.replace(clients=4), tmp_path, cpu(2), Address("0.0.0.0", 9092), certs.dir,
                      insecure=False, local_partitions=range(0, 2))

    by_name = {p.name: p for p in plan.processes}
    assert list(by_name) == ["superlink", "serverapp", "gateway", "client-0", "client-1", "server"]
    secret = str(tmp_path / "flwr" / "superexec.secret")
    link = by_name["superlink"].argv
    loopback = f"127.0.0.1:{link[link.index('--port') + 1]}"
    # the SuperLink (Control, Runtime and Fleet APIs) on loopback only, its runtime API keyed
    assert link[1:] == ("--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert),
                        "--ssl-keyfile", str(certs.server_key), "--host", "127.0.0.1",
                        "--port", loopback.split(":")[1], "--isolation", "process",
                        "--superexec-auth-secret-file", secret,
                        "--disable-runtime-dependency-installation")
    assert loopback != "127.0.0.1:9092"
    # the network reaches the gateway, with the same certificate, forwarding to loopback
    assert by_name["gateway"].argv[1:] == (
        "-m", "launcher.network.gateway", "--listen", "0.0.0.0:9092", "--upstream", loopback,
        "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key),
        "--upstream-ca", str(certs.ca_cert), *Limits().argv())  # the default caps
    serverapp = by_name["serverapp"].argv
    assert serverapp[1:] == ("-m", "launcher.shim.serverhost", "--root-certificates",
                             str(certs.ca_cert), "--runtime-api-address", loopback,
                             "--superexec-auth-secret-file", secret)
    client = by_name["client-1"].argv
    assert client[client.index("--superlink") + 1] == loopback
    assert client[client.index("--root-certificates") + 1] == str(certs.ca_cert)
    assert client[client.index("--superexec-auth-secret-file") + 1] == secret
    assert client[client.index("--node-config") + 1] == "partition-id=1 num-partitions=4"
    assert not any("--insecure" in p.argv for p in plan.processes)
    assert plan.superlink_address == loopback
    assert plan.root_certificates == str(certs.ca_cert)
    assert plan.placement.warnings == ()
    assert "listening on 0.0.0.0:9092 with TLS" in plan.describe()


def test_serve_refuses_a_certificate_for_other_names(tmp_path: Path, certs: CertPaths) -> None:
    with pytest.raises(UsageError, match="valid for .*server.lan.*not 10.9.9.9.*--host 10.9.9.9"):
        serve_plan(CFG, tmp_path, cpu(0), Address("10.9.9.9", 9092), certs.dir, insecure=False)


def test_serve_refuses_missing_or_foreign_certificates(tmp_path: Path, certs: CertPaths) -> None:
    with pytest.raises(UsageError, match="no ca.crt, server.pem, server.key there.*fedlaunch certs"):
        serve_plan(CFG, tmp_path, cpu(0), Address("0.0.0.0", 9092), tmp_path / "none", insecure=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(certs.dir, mixed)
    other = generate(tmp_path / "other", [])
    shutil.copy(other.ca_cert, mixed / "ca.crt")
    with pytest.raises(UsageError, match="server.pem was not signed by ca.crt"):
        serve_plan(CFG, tmp_path, cpu(0), Address("0.0.0.0", 9092), mixed, insecure=False)


def test_join_plan_starts_only_clients(tmp_path: Path, certs: CertPaths) -> None:
    plan = join_plan(CFG, tmp_path, cpu(2), Address("server.lan", 9092), range(2, 4), 4,
                     certs.ca_cert, insecure=False, max_restarts=5, connect_timeout=30.0)

    assert plan.mode == "join"
    assert [(p.name, p.role, p.client, p.restartable) for p in plan.processes] == [
        ("client-2", "supernode", 2, True), ("client-3", "supernode", 3, True)]
    argv = plan.processes[1].argv
    assert argv[argv.index("--superlink") + 1] == "server.lan:9092"
    assert argv[argv.index("--root-certificates") + 1] == str(certs.ca_cert)
    assert argv[argv.index("--max-wait-time") + 1] == "30.0"
    assert argv[argv.index("--node-config") + 1] == (
        f'partition-id=3 num-partitions=4 progress-dir="{tmp_path / "progress"}"')
    assert "--insecure" not in argv
    assert plan.max_restarts == 5
    assert plan.processes[0].env["FLWR_HOME"] == str(tmp_path / "flwr" / "client-2")


def test_serve_with_every_client_elsewhere_plans_only_the_server(tmp_path: Path) -> None:
    """`fedlaunch --serve` without --partition-ids: no client here, the SuperLink with node
    authentication and the run's submitter; the CLI, not just the plan function."""
    tls = generate(tmp_path / "tls", [])
    generate_node_keys(tls.dir / "nodes", 2)
    result = run_cli(["--serve", "127.0.0.1:9092", "--certificates", "tls", "--node-keys", "tls",
                      "--clients", "2", "--dataset", "synthetic", "--gpus", "cpu", "--dry-run"],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    assert "superlink" in result.stdout and "client-" not in result.stdout, result.stdout
    assert "--enable-supernode-auth" in result.stdout
    assert "only the 2 node key(s)" in result.stdout + result.stderr


def test_join_clients_are_named_by_partition_id_on_screen(tmp_path: Path) -> None:
    """Partitions 5 and 6 joined on GPUs 1 and 0: the TUI rows, their GPUs and the progress the
    ClientApps write are all keyed by partition id, not by the order of the local slots."""
    gpus = tuple(GpuInfo(i, f"GPU-{i}", "H200", 141 * 2**30, 140 * 2**30) for i in (0, 1))
    placement = Placement(gpus=gpus, client_gpu=(1, 0))
    plan = join_plan(CFG, tmp_path, placement, Address("h", 1), range(5, 7), 8, None, insecure=True)
    assert plan.client_gpus == {5: 1, 6: 0}
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plan.processes] == ["GPU-1", "GPU-0"]

    (tmp_path / "progress").mkdir()
    (tmp_path / "progress" / "client-6.json").write_text(json.dumps(
        {"client": 6, "state": "training", "round": 1, "epoch": 1, "epochs": 1, "batch": 3,
         "batches": 9, "samples": 100, "train_loss": 2.1}))
    progress = RunFollower(tmp_path, plan.client_gpus).poll()
    state = RunState()
    state.apply(RunStarted("j", "join", "cnn", "synthetic", "iid", 2, len(plan.client_gpus),
                           str(tmp_path), 0.0, plan.client_gpus))
    for event in progress:
        state.apply(event)
    assert {c: (row.gpu, row.state) for c, row in state.clients.items()} == {
        5: (1, "starting"), 6: (0, "training")}


def test_join_and_serve_plans_put_more_clients_than_workers_on_a_pool(
        tmp_path: Path, certs: CertPaths) -> None:
    keys = tmp_path / "keys"
    generate_node_keys(keys, 8)
    join = join_plan(CFG, tmp_path / "j", cpu(2), Address("server.lan", 9092), range(2, 8), 8,
                     certs.ca_cert, insecure=False, node_keys=keys,
                     workers=WorkerChoice(2, "--workers 2"))
    serve = serve_plan(CFG.replace(clients=8), tmp_path / "s", cpu(3), Address("0.0.0.0", 9092),
                       certs.dir, insecure=False, local_partitions=range(0, 5),
                       workers=WorkerChoice(3, "--workers 3"))

    assert [p.role for p in join.processes] == ["clienthost", "worker", "worker"]
    host = join.processes[0]
    assert host.clients == (2, 3, 4, 5, 6, 7)
    argv = list(host.argv)
    assert argv[argv.index("--partition-ids") + 1] == "2-7"
    assert argv[argv.index("--num-partitions") + 1] == "8"
    assert argv[argv.index("--node-config-extra") + 1].startswith("progress-dir=")
    assert ["--root-certificates", str(certs.ca_cert)] == argv[argv.index("--root-certificates"):][:2]
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(keys / "node-{partition}.key")
    assert join.pool_clients == 6 and "6 clients" in join.describe()
    assert list(join.client_gpus) == [2, 3, 4, 5, 6, 7]  # the joined ids, not 0-5
    # a join is not rung (the ServerApp writes the server's run folder): it polls as Flower does
    assert "--doorbell" not in argv and argv[argv.index("--idle-wait") + 1] == "0.24"
    roles = [p.role for p in serve.processes]
    assert roles.count("worker") == 3 and "clienthost" in roles and "supernode" not in roles
    served = next(p for p in serve.processes if p.role == "clienthost")
    assert served.clients == (0, 1, 2, 3, 4) and "--num-partitions" in served.argv
    assert "--doorbell" in served.argv
    assert served.argv[served.argv.index("--idle-wait") + 1] == "10.0"
    assert "partition-id 0-4" in serve.describe()


def test_join_plan_stock_executor_and_insecure(tmp_path: Path) -> None:
    plan = join_plan(CFG, tmp_path, cpu(1), Address("10.1.1.1", 9092), range(0, 1), 2, None,
                     insecure=True, executor="stock")

    argv = plan.processes[0].argv
    assert Path(argv[0]).name == "flower-supernode"
    assert argv[1] == "--insecure"
    assert any("clients connect to 10.1.1.1:9092 without TLS" in w for w in plan.placement.warnings)


@pytest.mark.parametrize(("ids", "parts", "message"), [
    (range(3, 5), 4, "outside 0-3"),
    (range(2, 2), 4, "A <= B"),
])
def test_join_plan_checks_partition_ids(tmp_path: Path, ids: range, parts: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        join_plan(CFG, tmp_path, cpu(len(ids)), Address("h", 1), ids, parts, None, insecure=True)


def test_join_tls_choices(tmp_path: Path, certs: CertPaths) -> None:
    with pytest.raises(UsageError, match="contradict"):
        join_plan(CFG, tmp_path, cpu(1), Address("h", 1), range(1), 1, certs.ca_cert, insecure=True)
    with pytest.raises(UsageError, match="not a wildcard"):
        join_plan(CFG, tmp_path, cpu(1), Address("0.0.0.0", 1), range(1), 1, certs.ca_cert, False)
    assert root_ca(certs.dir, None) == certs.ca_cert
    assert root_ca(None, certs.ca_cert) == certs.ca_cert
    with pytest.raises(UsageError, match="no CA certificate"):
        root_ca(None, tmp_path / "missing.crt")


def test_flwr_config_with_tls_is_read_by_flower(tmp_path: Path, certs: CertPaths,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    path = write_flwr_config(tmp_path / "submit", "127.0.0.1:9092", certs.ca_cert)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "submit"))
    connection = read_superlink_connection()

    assert tomllib.loads(path.read_text())["superlink"]["fedlaunch"] == {
        "address": "127.0.0.1:9092", "root-certificates": str(certs.ca_cert)}
    assert (connection.address, connection.root_certificates, connection.insecure) == (
        "127.0.0.1:9092", str(certs.ca_cert), False)
    plain = write_flwr_config(tmp_path / "plain", "127.0.0.1:9092", None)
    assert tomllib.loads(plain.read_text())["superlink"]["fedlaunch"]["insecure"] is True


@pytest.mark.parametrize(("line", "hint"), [
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in "
     "certificate chain (_ssl.c:1006)", "--root-certificates ca.crt"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate "
     "is not valid for '10.0.0.9'. (_ssl.c:1006)", "--host THAT_NAME"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", "runs --insecure"),
    ("All connection attempts failed: [Errno 111] Connection refused", "nothing answers"),
])
def test_explain_failure(line: str, hint: str) -> None:
    assert hint in (explain_failure(["x", line]) or "")
    assert explain_failure(["all fine"]) is None
