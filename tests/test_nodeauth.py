"""SuperNode authentication: the keys `fedlaunch certs --node-keys` makes, the checks on them,
the plans that use them, and the departed-nodes file that a returning node id is marked back in."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedcore.config import RunConfig
from fedcore.errors import UsageError
from fedcore.rundir import DEPARTED, RunDir
from fedcore.server_app import departed_nodes
from launcher.network.certs import certs_main, generate
from launcher.network.nodeauth import generate_node_keys, key_folder, private_key, public_keys
from launcher.network.remote import Address, join_plan, serve_plan
from launcher.planning.placement import Placement

CFG = RunConfig(dataset="synthetic", model="cnn", clients=2, rounds=2)


def test_keys_are_flower_compatible_and_private_keys_stay_private(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    keys = generate_node_keys(tmp_path / "nodes", 3)
    assert [k.name for k in keys] == ["node-0.key", "node-1.key", "node-2.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.with_suffix(".pub").stat().st_mode) == 0o644
        serialization.load_ssh_private_key(key.read_bytes(), None)  # what flower-supernode does
        assert try_load_public_key(key.with_suffix(".pub"))  # what `flwr supernode register` does
    with pytest.raises(UsageError, match="--force"):
        generate_node_keys(tmp_path / "nodes", 3)
    assert generate_node_keys(tmp_path / "nodes", 1, force=True) == keys[:1]


def test_certs_makes_node_keys_beside_the_certificates(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main([str(tmp_path / "tls"), "--node-keys", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "tls" / "nodes").iterdir()) == [
        "node-0.key", "node-0.pub", "node-1.key", "node-1.pub"]
    assert "--node-keys" in capsys.readouterr().out
    # --node-keys accepts the certificates folder or the keys' folder itself
    assert key_folder(tmp_path / "tls") == key_folder(tmp_path / "tls" / "nodes")


def test_missing_or_unusable_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        key_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no .pub files"):
        public_keys(tmp_path / "empty")
    with pytest.raises(UsageError, match="no node-4.key for partition 4"):
        private_key(tmp_path / "empty", 4)
    edwards = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "empty" / "node-0.key").write_bytes(edwards.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    with pytest.raises(UsageError, match="not an EC key"):
        private_key(tmp_path / "empty", 0)
    (tmp_path / "empty" / "node-0.pub").write_text("ssh-rsa garbage\n")
    with pytest.raises(UsageError, match="not an OpenSSH public key"):
        public_keys(tmp_path / "empty")


def test_plans_with_node_keys(tmp_path: Path) -> None:
    tls = generate(tmp_path / "tls", [])
    generate_node_keys(tls.dir / "nodes", 3)
    cpu = Placement(gpus=(), client_gpu=(None,))
    serve = serve_plan(CFG.replace(clients=3), tmp_path / "s", cpu, Address("127.0.0.1", 9092),
                       tls.dir, insecure=False, local_partitions=range(2, 3), node_keys=tls.dir)
    by_role = {p.role: p for p in serve.processes}
    superlink, client = by_role["superlink"], by_role["supernode"]
    assert "--enable-supernode-auth" in superlink.argv
    # keys are registered through the Control API, which only the loopback port serves
    assert serve.superlink_address == f"127.0.0.1:{superlink.argv[superlink.argv.index('--port') + 1]}"
    assert serve.superlink_address != "127.0.0.1:9092"
    assert client.argv[client.argv.index("--auth-supernode-private-key") + 1] == str(
        tls.dir / "nodes" / "node-2.key")
    assert [Path(k).name for k in serve.node_keys] == ["node-0.pub", "node-1.pub", "node-2.pub"]

    join = join_plan(CFG, tmp_path / "j", cpu, Address("h", 1), range(1, 2), 3, tls.ca_cert,
                     insecure=False, node_keys=tls.dir / "nodes")
    assert join.processes[0].argv[-1] == str(tls.dir / "nodes" / "node-1.key")
    assert join.node_keys == ()  # the serving side registers keys, not a joining one

    with pytest.raises(UsageError, match="--node-keys needs TLS: give --certificates"):
        serve_plan(CFG, tmp_path / "s2", cpu, Address("127.0.0.1", 9092), None, insecure=False,
                   local_partitions=range(0, 1), node_keys=tls.dir)
    with pytest.raises(UsageError, match="--node-keys needs TLS: give --root-certificates"):
        join_plan(CFG, tmp_path / "j2", cpu, Address("h", 1), range(0, 1), 2, None,
                  insecure=True, node_keys=tls.dir)


def test_a_departed_node_id_can_come_back(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    assert departed_nodes(tmp_path / DEPARTED) == set()
    run.add_departed_node(11)
    run.add_departed_node(22)
    assert departed_nodes(tmp_path / DEPARTED) == {11, 22}
    run.add_returned_node(11)
    assert departed_nodes(tmp_path / DEPARTED) == {22}
    run.add_departed_node(11)  # died again
    assert departed_nodes(tmp_path / DEPARTED) == {11, 22}


def test_departures_mark_back_only_a_node_id_signed_in_again(tmp_path: Path) -> None:
    import os
    import time

    from launcher.planning.plan import node_id_file
    from launcher.supervision.departures import Departures

    run = RunDir(tmp_path).create()
    run.progress_dir.mkdir()
    node_id_file(tmp_path, 0).write_text("11\n")  # recorded at sign-in, before any task
    node_id_file(tmp_path, 1).write_text("22\n")
    departures = Departures(run)
    departures.died(0)
    departures.died(1)
    departures.poll()  # nobody signed in again yet
    assert departed_nodes(tmp_path / DEPARTED) == {11, 22}

    later = time.time() + 1
    node_id_file(tmp_path, 0).write_text("11\n")  # authenticated: the same id again
    node_id_file(tmp_path, 1).write_text("33\n")  # a new id: 22 stays departed
    for client in (0, 1):
        os.utime(node_id_file(tmp_path, client), (later, later))
    departures.poll()
    assert departed_nodes(tmp_path / DEPARTED) == {22}
    assert departures.waiting == {}
