"""Bad input: `fedlaunch` exits 2 with one `fedlaunch: ...` line naming the problem, and touches nothing.

Every case is a real `fedlaunch` subprocess in a folder of its own. Most cases import torch before
they fail (~4 s each on two cores), so the module runs them all at once, a few at a time, and each
test then checks its own outcome.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import write_batches_py, write_image_folder, write_tar_gz
from tests.runs import run_cli

SYN = ("--dataset", "synthetic")
PARALLEL = 4
# An HTTP(S) proxy nobody listens on: a download attempt fails at once, online or not.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "no_proxy": "", "NO_PROXY": ""}

Setup = Callable[[Path], list[str]]


@dataclass(frozen=True)
class Case:
    """`fedlaunch ARGS + setup(folder)` run in `folder`; the error line must contain every `expect`."""

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    setup: Setup | None = None
    out: bool = True  # add `--out run` (a folder that must not appear)
    env: dict[str, str] = field(default_factory=dict)


def file_tree(root: Path) -> dict[str, str]:
    """Every path under root with a hash of its content ('dir' for folders)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        tree[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


# --- setups: each makes its files in the case's folder and returns extra arguments ----------

def corrupt_batch(folder: Path) -> list[str]:
    write_batches_py(folder / "data", n_train=50, n_test=20)
    batch = folder / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated mid-pickle
    return ["--data-dir", "data"]


def corrupt_tarball(folder: Path) -> list[str]:
    write_tar_gz(folder / "data", n_train=50, n_test=20)
    tarball = folder / "data" / "cifar-10-python.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:200])
    return ["--data-dir", "data"]


def corrupt_image(folder: Path) -> list[str]:
    write_image_folder(folder / "data", n_train=30, n_test=10)
    (folder / "data" / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    return ["--data-dir", "data"]


def wrong_size_image(folder: Path) -> list[str]:
    from PIL import Image

    write_image_folder(folder / "data", n_train=30, n_test=10)
    Image.new("RGB", (64, 48)).save(folder / "data" / "test" / "dog" / "big.png")
    return ["--data-dir", "data"]


def empty_dir(folder: Path) -> list[str]:
    (folder / "data").mkdir()
    return ["--data-dir", "data"]


def a_file(name: str, flag: str | None = None) -> Setup:
    """A file of the user's named `name`; passed as `flag NAME` when a flag is given."""
    def setup(folder: Path) -> list[str]:
        (folder / name).write_text("my notes\n")
        return [flag, name] if flag else []
    return setup


def profile(text: str) -> Setup:
    def setup(folder: Path) -> list[str]:
        (folder / "mine.toml").write_text(text)
        return ["--profile", "mine.toml"]
    return setup


def out_with_files(folder: Path) -> list[str]:
    (folder / "thesis").mkdir()
    (folder / "thesis" / "chapter1.tex").write_text("\\chapter{One}\n")
    (folder / "thesis" / "figures").mkdir()
    (folder / "thesis" / "figures" / "plot.png").write_bytes(b"\x89PNG fake")
    return ["--out", "thesis"]


def out_previous_run(folder: Path) -> list[str]:
    (folder / "old").mkdir()
    (folder / "old" / "config.json").write_text('{"mode": "federated"}\n')
    (folder / "old" / "metrics.jsonl").write_text('{"event": "start"}\n')
    return ["--out", "old"]


def taken_port(folder: Path) -> list[str]:
    # The socket is kept open (referenced) by `outcomes` until every case has run.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    HELD.append(sock)
    return ["--port", str(sock.getsockname()[1])]


HELD: list[Any] = []


def node_keys_without_tls(folder: Path) -> list[str]:
    from launcher.network.nodeauth import generate_node_keys

    generate_node_keys(folder / "keys", 2)
    return ["--serve", "127.0.0.1:9092", "--clients", "2", "--node-keys", "keys", "--dry-run"]


def join_without_its_node_key(folder: Path) -> list[str]:
    from launcher.network.certs import generate
    from launcher.network.nodeauth import generate_node_keys

    tls = generate(folder / "tls", [])
    generate_node_keys(folder / "tls" / "nodes", 2)
    (folder / "tls" / "nodes" / "node-1.key").unlink()
    return ["--join", "127.0.0.1:9092", "--partition-ids", "1-1", "--num-partitions", "2",
            "--root-certificates", str(tls.ca_cert), "--node-keys", "tls", "--dry-run"]

def profile_bytes(data: bytes) -> Setup:
    def setup(folder: Path) -> list[str]:
        (folder / "mine.toml").write_bytes(data)
        return ["--profile", "mine.toml"]
    return setup


def a_run_folder(metrics: bytes, config: str | None = None, link: str | None = None) -> Setup:
    """`old/`: a run folder received from elsewhere, with this metrics.jsonl (and config.json),
    and optionally a symlink `old/LINK` to a file of the user's outside it."""
    def setup(folder: Path) -> list[str]:
        run = folder / "old"
        run.mkdir()
        (run / "metrics.jsonl").write_bytes(metrics)
        if config is not None:
            (run / "config.json").write_text(config)
        if link is not None:
            (folder / "precious.txt").write_text("the user's own file\n")
            (run / link).symlink_to(folder / "precious.txt")
        return []
    return setup


GOOD_METRICS = (b'{"event": "start", "mode": "federated", "total": 1, "model": "cnn"}\n'
                b'{"event": "round", "round": 1, "total": 1, "accuracy": 0.4, "loss": 1.7}\n')
SAVED_CONFIG = '{"mode": "federated", "dataset": "synthetic", "clients": 2, "rounds": 2}\n'


def certificates(mode: int | None = None, owner: int | None = None, what: str = "") -> Setup:
    """`fedlaunch certs tls`, then `tls` (or `tls/WHAT`) given another mode or owner."""
    def setup(folder: Path) -> list[str]:
        from launcher.network.certs import generate

        generate(folder / "tls", [])
        target = folder / "tls" / what if what else folder / "tls"
        if mode is not None:
            target.chmod(mode)
        if owner is not None:
            os.chown(target, owner, owner)
        return ["--serve", "127.0.0.1:9092", "--certificates", "tls", "--dry-run"]
    return setup


def join_trusting(mode: int) -> Setup:
    def setup(folder: Path) -> list[str]:
        from launcher.network.certs import generate

        tls = generate(folder / "tls", [])
        tls.ca_cert.chmod(mode)
        return ["--join", "127.0.0.1:9092", "--partition-ids", "0-0", "--num-partitions", "1",
                "--root-certificates", str(tls.ca_cert), "--dry-run"]
    return setup


NOT_UTF8 = os.fsdecode(b"caf\xe9")  # a Latin-1 name: no UTF-8 text can hold it
NOBODY = 65534

CASES = [
    Case("unknown-flag", ("--bogus",), ("--bogus",)),
    Case("clients-not-a-number", ("--clients", "three"), ("--clients", "'three' is not a whole number")),
    Case("lr-not-a-number", ("--lr", "fast"), ("--lr", "'fast' is not a number")),
    Case("clients-zero", ("--clients", "0"), ("--clients", "0")),
    Case("rounds-negative", ("--rounds", "-1"), ("--rounds", "-1")),
    Case("local-epochs-zero", ("--local-epochs", "0"), ("--local-epochs",)),
    Case("lr-zero", ("--lr", "0"), ("--lr",)),
    Case("max-restarts-negative", ("--max-restarts", "-1"), ("--max-restarts",)),
    Case("more-clients-than-samples", (*SYN, "--limit-train", "5", "--clients", "10"),
         ("--clients 10", "5 training samples")),
    Case("absurd-clients", (*SYN, "--clients", "99999999999"), ("--clients 99999999999",)),
    Case("unknown-model", (*SYN, "--model", "vgg99"), ("--model", "vgg99", "cnn")),
    Case("unknown-dataset", ("--dataset", "mnist"), ("dataset", "mnist", "synthetic")),
    Case("unknown-dataset-dry-run", ("--dry-run", "--dataset", "mnist"), ("dataset", "mnist")),
    Case("unknown-partition", (*SYN, "--partition", "zipf"), ("--partition", "zipf")),
    Case("dirichlet-zero", (*SYN, "--partition", "dirichlet:0"), ("--partition", "dirichlet:0")),
    Case("dirichlet-negative", (*SYN, "--partition", "dirichlet:-1"),
         ("--partition", "dirichlet:-1")),
    Case("classes-too-many", (*SYN, "--partition", "classes:11"), ("--partition", "classes:11")),
    Case("unknown-strategy", (*SYN, "--strategy", "fedbest"), ("--strategy", "fedbest", "fedavg")),
    Case("gpu-that-does-not-exist", (*SYN, "--gpus", "7"), ("--gpus 7", "no such gpu")),
    Case("gpus-not-ids", (*SYN, "--gpus", "abc"), ("--gpus", "'abc'", "cpu")),
    Case("data-dir-missing", ("--data-dir", "nowhere"), ("nowhere", "does not exist")),
    Case("data-dir-is-a-file", (), ("notes.txt", "file"), a_file("notes.txt", "--data-dir")),
    Case("data-dir-empty-offline", (), ("cifar-10", "synthetic"), empty_dir, env=NO_NETWORK),
    Case("corrupt-batch-file", (), ("data_batch_3", "corrupt"), corrupt_batch),
    Case("corrupt-tarball", (), ("cifar-10-python.tar.gz", "re-download"), corrupt_tarball),
    Case("corrupt-image", (), ("cat/broken.png", "not a readable image"), corrupt_image),
    Case("image-not-32x32", (), ("big.png", "64x48"), wrong_size_image),
    Case("profile-bad-toml", SYN, ("mine.toml", "not valid toml"), profile("rounds = [\n")),
    Case("profile-unknown-key", SYN, ("mine.toml", "unknown setting 'colour'"),
         profile("colour = 'blue'\n")),
    Case("profile-wrong-type", SYN, ("mine.toml", "'rounds' must be int", "'three'"),
         profile('rounds = "three"\n')),
    Case("profile-wrong-type-launcher-key", SYN, ("mine.toml", "'local' must be bool"),
         profile('local = "yes"\n')),
    Case("profile-table", SYN, ("mine.toml", "table"), profile("[training]\nrounds = 3\n")),
    Case("profile-unknown-name", (*SYN, "--profile", "fastest"), ("--profile 'fastest'", "quick")),
    Case("out-holds-unrelated-files", SYN, ("--out thesis", "not empty"), out_with_files, out=False),
    Case("out-holds-a-previous-run", SYN, ("--out old", "already holds"), out_previous_run,
         out=False),
    Case("out-is-a-file", SYN, ("--out results.csv", "is a file"),
         a_file("results.csv", "--out"), out=False),
    Case("out-under-a-file", (*SYN, "--out", "results.csv/run"), ("results.csv", "--out"),
         a_file("results.csv"), out=False),
    Case("port-taken", SYN, ("--port", "in use"), taken_port),
    Case("port-out-of-range", (*SYN, "--port", "70000"), ("--port", "70000", "65535")),
    Case("node-keys-alone", (*SYN, "--node-keys", "keys"), ("--node-keys", "--serve or --join")),
    Case("node-keys-without-tls", SYN, ("--node-keys needs TLS", "--certificates"),
         node_keys_without_tls),
    Case("join-without-its-node-key", SYN, ("no node-1.key", "partition 1"),
         join_without_its_node_key),
    # issue 11, item 7
    Case("profile-not-utf8", SYN, ("mine.toml", "not utf-8"),
         profile_bytes(b"rounds = 3\n# r\xe9sum\xe9 in Latin-1\n")),
    Case("report-metrics-not-utf8", ("report", "old"), ("metrics.jsonl", "utf-8"),
         a_run_folder(b"\xff\xfe{\x00\"\x00e\x00\n"), out=False),
    Case("report-metrics-wrongly-typed", ("report", "old"), ("accuracy='high'", "not a number"),
         a_run_folder(GOOD_METRICS.replace(b"0.4", b'"high"')), out=False),
    Case("report-symlink-in-run-folder", ("report", "old"), ("report.png", "symbolic link"),
         a_run_folder(GOOD_METRICS, link="report.png"), out=False),
    Case("resume-symlink-in-run-folder", ("--resume", "old"), ("metrics.jsonl", "symbolic link"),
         a_run_folder(b"", SAVED_CONFIG, link="metrics.jsonl.1"), out=False),
    Case("resume-a-join-run", ("--resume", "old"), ("join", "nothing to resume"),
         a_run_folder(b"", '{"mode": "join"}\n'), out=False),
    Case("seed-negative", (*SYN, "--seed", "-1"), ("--seed", "-1", "4294967295")),
    Case("seed-beyond-32-bits", (*SYN, "--seed", str(2**32)), ("--seed", "4294967296")),
    Case("engine-unknown", (*SYN, "--engine", "ray"), ("--engine", "ray", "simulation", "deployment")),
    Case("engine-simulation-with-serve", (*SYN, "--engine", "simulation", "--serve", "127.0.0.1:9092",
                                          "--insecure"), ("--serve", "Deployment Engine")),
    Case("engine-simulation-with-join", ("--engine", "simulation", "--join", "127.0.0.1:9092",
                                         "--partition-ids", "0-1", "--num-partitions", "2",
                                         "--insecure"), ("--join", "Deployment Engine")),
    Case("engine-simulation-with-port", (*SYN, "--engine", "simulation", "--port", "9093"),
         ("--port", "Deployment Engine")),
    Case("local-with-serve", (*SYN, "--local", "--serve", "127.0.0.1:9092"), ("--local", "--serve")),
    Case("local-with-join", (*SYN, "--local", "--join", "127.0.0.1:9092", "--partition-ids", "0-0",
                             "--num-partitions", "1"), ("--local", "--join")),
    Case("profile-local-with-serve", ("--serve", "127.0.0.1:9092"), ("--local", "--serve"),
         profile(b'local = true\ndataset = "synthetic"\n'.decode())),
    Case("out-not-utf8", (*SYN, "--out", NOT_UTF8), ("--out", "utf-8"), out=False),
    Case("data-dir-not-utf8", ("--data-dir", NOT_UTF8), ("--data-dir", "utf-8")),
    Case("certificates-writable-by-others", (), ("--certificates", "writable by others"),
         certificates(mode=0o777), out=False),
    Case("server-key-writable-by-others", (), ("server.key", "writable by others"),
         certificates(mode=0o666, what="server.key"), out=False),
    Case("root-certificate-writable-by-others", (), ("--root-certificates", "ca.crt", "writable"),
         join_trusting(0o666), out=False),
    # issue 21, item 7: numbers beyond what Flower and a run can take, from profiles and flags
    Case("profile-rounds-beyond-64-bits", SYN, ("--rounds", "99999999999999999999", "1,000,000"),
         profile("rounds = 99999999999999999999\n")),
    Case("rounds-beyond-64-bits", (*SYN, "--rounds", "99999999999999999999"),
         ("--rounds", "at most")),
    Case("profile-batch-size-huge", SYN, ("--batch-size", "at most", "10000000000"),
         profile("batch-size = 10000000000\n")),
    Case("profile-local-epochs-huge", SYN, ("--local-epochs", "at most"),
         profile("local-epochs = 1000000000\n")),
    Case("profile-max-restarts-huge", SYN, ("--max-restarts", "99999999999999999999"),
         profile("max-restarts = 99999999999999999999\n")),
    Case("lr-huge", (*SYN, "--lr", "1e300"), ("--lr", "at most 1000")),
    Case("momentum-above-one", (*SYN, "--momentum", "1.5"), ("--momentum", "at most 1")),
    Case("round-timeout-huge", (*SYN, "--round-timeout", "1e12"), ("--round-timeout", "604800")),
    Case("limit-train-beyond-64-bits", (*SYN, "--limit-train", str(2**70)), ("--limit-train",)),
    Case("join-partition-ids-huge", ("--join", "127.0.0.1:9092", "--partition-ids",
                                     "0-99999999999999999999", "--num-partitions", "4"),
         ("--partition-ids", "at most 10,000 clients")),
    Case("join-num-partitions-huge", ("--join", "127.0.0.1:9092", "--partition-ids", "0-1",
                                      "--num-partitions", "99999999999999999999"),
         ("--num-partitions", "99999999999999999999")),
    *([Case("certificates-of-another-user", (), ("--certificates", "another user"),
            certificates(owner=NOBODY), out=False)] if os.geteuid() == 0 else []),
]


def case_args(case: Case, folder: Path) -> list[str]:
    extra = case.setup(folder) if case.setup else []
    return [*case.args, *extra, *(["--out", "run"] if case.out else [])]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case run once, PARALLEL at a time: id -> (result, tree before, tree after, folder)."""
    prepared = []
    for case in CASES:
        folder = tmp_path_factory.mktemp(case.id)
        args = case_args(case, folder)
        prepared.append((case, folder, args, file_tree(folder)))
    env = {"XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "cache")}

    def run(item: tuple[Case, Path, list[str], dict[str, str]]) -> tuple[str, Any]:
        case, folder, args, before = item
        result = run_cli(args, folder, timeout=120, env={**env, **case.env})
        return case.id, (result, before, file_tree(folder), folder)

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            return dict(pool.map(run, prepared))
    finally:
        for sock in HELD:
            sock.close()
        HELD.clear()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, outcomes: dict[str, Any]) -> None:
    # Prepare / Execute: done by `outcomes`
    result, before, after, folder = outcomes[case.id]
    shown = f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"

    # Assert
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    line = lines[0]
    assert line.startswith("fedlaunch: ") and len(line) > len("fedlaunch: ") + 10, shown
    for word in case.expect:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    assert after == before, f"files changed in {folder}: {set(after.items()) ^ set(before.items())}"


def test_gpu_that_does_not_exist_says_what_to_use(outcomes: dict[str, Any]) -> None:
    line = outcomes["gpu-that-does-not-exist"][0].stderr.strip()
    # Without a GPU the advice is --gpus cpu; with GPUs, the ids this machine has.
    assert "--gpus cpu" in line or "this machine has" in line, line


# --- positive controls: the same parser and checks let good input through ---------------------

def test_dry_run_prints_the_processes_and_starts_nothing(tmp_path: Path) -> None:
    # Execute
    result = run_cli([*SYN, "--clients", "3", "--gpus", "cpu", "--dry-run", "--out", "run",
                      "--engine", "deployment"], tmp_path)

    # Assert
    assert result.returncode == 0, result.stderr
    assert "engine: deployment" in result.stdout
    names = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert names == ["superlink", "serverapp", "client-0", "client-1", "client-2", "server"], result.stdout
    assert "flower-superlink" in result.stdout and "flwr run" in result.stdout
    assert "partition-id=2 num-partitions=3" in result.stdout
    assert not (tmp_path / "run").exists(), "--dry-run created the run folder"
    assert result.stderr == ""


def test_dry_run_of_the_default_engine_prints_the_simulation_process_and_its_workers(
        tmp_path: Path) -> None:
    result = run_cli([*SYN, "--clients", "5", "--gpus", "cpu", "--dry-run", "--out", "run",
                      "--workers", "2"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert "engine: simulation" in result.stdout
    names = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert names == ["worker-0", "worker-1", "simulation"], result.stdout
    assert "launcher.shim.simhost" in result.stdout and "flower-superlink" not in result.stdout
    assert "5 virtual Flower nodes (partition-id 0-4)" in result.stdout
    assert not (tmp_path / "run").exists(), "--dry-run created the run folder"


def test_list_profiles_names_the_shipped_profiles(tmp_path: Path) -> None:
    result = run_cli(["--list-profiles"], tmp_path)

    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert {"seed", "seed-local", "quick"} <= set(names), result.stdout


def test_help_shows_examples_and_exit_codes(tmp_path: Path) -> None:
    result = run_cli(["--help"], tmp_path)

    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "fedlaunch --clients 8 --gpus 0,1" in result.stdout
    assert "2 bad input" in result.stdout


def test_a_valid_profile_and_flags_pass_the_checks(tmp_path: Path) -> None:
    # Prepare: a profile with a launcher key and settings; a flag overrides one of them
    (tmp_path / "mine.toml").write_text('clients = 4\nrounds = 3\ngpus = "cpu"\n')

    # Execute
    result = run_cli(["--profile", "mine.toml", "--clients", "2", *SYN, "--dry-run"], tmp_path)

    # Assert
    assert result.returncode == 0, result.stderr
    assert "2 clients, 3 rounds" in result.stdout, result.stdout


def test_interrupting_during_checks_exits_130(tmp_path: Path) -> None:
    """Ctrl+C while the launcher checks the data (decoding image folders): 130 and the one-line
    message, no traceback, no run folder; even started with SIGINT ignored, as `fedlaunch &` in
    a script is."""
    import signal

    from tests.runs import child_env, fedlaunch_argv

    # Prepare: enough images that decoding them takes a while
    write_image_folder(tmp_path / "data", n_train=3000, n_test=10)
    proc = subprocess.Popen(fedlaunch_argv("--data-dir", "data", "--out", "run"), cwd=tmp_path,
                            env=child_env({"XDG_CACHE_HOME": str(tmp_path / "cache")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        # Execute: interrupt once the launcher says it is decoding
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "decoding" in first, first
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Assert
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip() == "fedlaunch: interrupted", err
    assert not (tmp_path / "run").exists()


# --- issue 11, item 7: the inputs that need more than one command ------------------------------

def test_a_node_key_registration_that_hangs_is_a_failed_registration(tmp_path: Path) -> None:
    """`flwr supernode register` that never answers: a reason per key, its process gone (before:
    a TimeoutError traceback and no summary)."""
    import asyncio

    import psutil

    from launcher.network import nodeauth

    # Prepare: a `flwr` that hangs the way a registration to a silent SuperLink does
    flwr = tmp_path / "flwr"
    flwr.write_text(f"#!/bin/sh\necho $$ >> {tmp_path / 'pids'}\nexec sleep 60\n")
    flwr.chmod(0o755)

    # Execute
    failed = asyncio.run(nodeauth.register(str(flwr), "fedlaunch", ["a.pub", "b.pub"], {}, tmp_path,
                                           tmp_path / "register.log", timeout=1.0))

    # Assert
    assert [key for key, _ in failed] == ["a.pub", "b.pub"]
    assert all("no answer from the SuperLink in 1 s" in why for _, why in failed), failed
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2 and not any(psutil.pid_exists(p) and psutil.Process(p).status()
                                      != psutil.STATUS_ZOMBIE for p in pids)
    assert "exit None" in (tmp_path / "register.log").read_text()


CLAIM = """
import sys, time
from pathlib import Path
from launcher.planning.prepare import claim_run_dir
from fedcore.errors import UsageError
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all at the same instant
try:
    print(claim_run_dir(Path(sys.argv[1]), sys.argv[2] == "numbered"))
except UsageError as exc:
    print("refused:", exc)
"""


def claim_at_once(target: Path, how: str, count: int) -> list[str]:
    import sys
    import time

    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(target), how, start],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
             for _ in range(count)]
    return sorted(p.communicate(timeout=60)[0].strip() for p in procs)


def test_launches_in_the_same_second_get_distinct_run_folders(tmp_path: Path) -> None:
    """runs/<timestamp> is one name per second: four launches at once claim four folders."""
    # Execute
    claimed = claim_at_once(tmp_path / "runs" / "20261129-140000", "numbered", 4)

    # Assert
    assert len(set(claimed)) == 4, claimed
    assert {Path(c).name for c in claimed} == {"20261129-140000", "20261129-140000.1",
                                               "20261129-140000.2", "20261129-140000.3"}
    assert all((Path(c) / "config.json").exists() for c in claimed)


def test_two_launches_into_the_same_out_folder_one_is_refused(tmp_path: Path) -> None:
    claimed = claim_at_once(tmp_path / "run", "given", 2)

    assert len([c for c in claimed if c.startswith("refused:")]) == 1, claimed
    assert "already holds a fedlaunch run" in claimed[-1], claimed


@pytest.mark.parametrize("name", ['say "hi"', "back\\slash", "new\nline", "emoji 😀", "it's"])
def test_run_and_data_paths_with_characters_toml_must_escape(tmp_path: Path, name: str) -> None:
    """Such names work: every TOML file and node config fedlaunch writes reads back exactly."""
    import tomllib

    from flwr.common.config import parse_config_args

    from fedcore.config import RunConfig
    from launcher.network.remote import Address, join_plan
    from launcher.planning.bundle import make_app, write_flwr_config
    from launcher.planning.gpus import Nvml
    from launcher.planning.placement import parse_gpus, plan_placement
    from launcher.planning.plan import run_config_toml
    from launcher.planning.prepare import LaunchOptions, make_plan
    from tests.fake_nvml import FakeNvml

    # Prepare
    run_dir, data_dir = tmp_path / f"run {name}", tmp_path / f"data {name}"
    data_dir.mkdir()
    cfg = RunConfig(dataset="synthetic", data_dir=str(data_dir), clients=2, rounds=1)

    # Execute
    plan = make_plan(cfg, run_dir, LaunchOptions(gpus="cpu"), nvml=Nvml(lib=FakeNvml([])))
    make_app(run_dir / "app", plan.cfg)
    write_flwr_config(run_dir / "flwr" / "submit", plan.superlink_address, tmp_path / f"{name}.crt")
    placement = plan_placement(1, parse_gpus("cpu"), Nvml(lib=FakeNvml([])))
    joined = join_plan(cfg, run_dir, placement, Address("127.0.0.1", 9092), range(0, 1), 1, None,
                       True)

    # Assert
    for text in (run_config_toml(plan.cfg), (run_dir / "app" / "pyproject.toml").read_text()):
        values = tomllib.loads(text)
        values = values.get("tool", {}).get("flwr", {}).get("app", {}).get("config", values)
        assert values["out-dir"] == str(run_dir) and values["data-dir"] == str(data_dir)
    flwr = tomllib.loads((run_dir / "flwr" / "submit" / "config.toml").read_text())
    assert flwr["superlink"]["fedlaunch"]["root-certificates"] == str(tmp_path / f"{name}.crt")
    argv = joined.processes[0].argv
    node = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node["progress-dir"] == str(run_dir / "progress") and node["partition-id"] == 0


@pytest.mark.e2e
def test_ctrl_c_while_the_superlink_starts(tmp_path: Path) -> None:
    """SIGINT as soon as the SuperLink process exists: exit 130 with one line and a summary, no
    traceback, nothing started after the signal, nothing left running."""
    import signal
    import time

    import psutil

    from tests.runs import SMALL, Run

    with Run(["--engine", "deployment", *SMALL, "--clients", "2", "--rounds", "1", "--gpus", "cpu",
              "--headless"],
             tmp_path / "run", tmp_path) as run:
        run.wait_for_role("superlink", timeout=120)
        sent = time.time()
        run.send(signal.SIGINT)
        code = run.wait(120)

        assert code == 130, run.report()
        assert "Traceback" not in run.output(), run.report()
        late = []
        for proc in run.seen.values():
            try:
                if proc.create_time() > sent + 0.5:
                    late.append(run.roles.get(proc.pid, "?"))
            except psutil.Error:
                continue
        assert late == [], f"started after Ctrl+C: {late}; {run.report()}"
        assert '"interrupted"' in (tmp_path / "run" / "summary.json").read_text(), run.report()
        run.assert_no_orphans()
