"""SuperNode authentication: one key pair per partition, registered with the SuperLink.

With `--node-keys DIR` the SuperLink admits only SuperNodes whose public key was registered
(Flower's `flwr supernode register`, which fedlaunch runs for every `DIR/*.pub` before any
client starts), and each client signs in with `DIR/node-<partition id>.key`. Flower allows this
only over TLS. `fedlaunch certs DIR --node-keys N` makes the keys for partitions 0..N-1.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore.errors import UsageError
from launcher.supervision.procs import ANSI

NODES = "nodes"  # the keys' folder inside a `fedlaunch certs` folder


def key_folder(path: Path) -> Path:
    """`--node-keys` names the keys' folder itself, or a certificates folder that holds `nodes/`."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"--node-keys {path}: no such folder; make keys with "
                         "`fedlaunch certs DIR --host NAME --node-keys N`")
    return path / NODES if (path / NODES).is_dir() else path


def private_key_path(folder: Path, partition_id: int | str) -> Path:
    """Client `partition_id`'s key (a str such as "{partition}" gives the pool's template)."""
    return folder / f"node-{partition_id}.key"


def public_key_path(folder: Path, partition_id: int) -> Path:
    return folder / f"node-{partition_id}.pub"


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write beside `path` with `mode` set before the first byte, then rename into place (a key is
    never readable by others, not even for a moment; the umask cannot narrow a certificate)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_node_keys(folder: Path, count: int, *, force: bool = False) -> list[Path]:
    """node-<i>.key (OpenSSH, EC P-384, mode 0600) and node-<i>.pub for partitions 0..count-1."""
    if count < 1:
        raise UsageError(f"--node-keys {count}: give the number of partitions (at least 1)")
    keys = [private_key_path(folder, i) for i in range(count)]
    found = [k for k in keys if k.exists()]
    if found and not force:
        raise UsageError(f"{folder} already holds {found[0].name}; pass --force to replace the "
                         "node keys (the SuperLink must then register the new ones)")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for i, path in enumerate(keys):
        key = ec.generate_private_key(ec.SECP384R1())
        write_file(path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()), 0o600)
        write_file(public_key_path(folder, i), key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n", 0o644)
    return keys


def public_keys(folder: Path) -> list[Path]:
    """Every public key the SuperLink registers; each must be an EC key Flower accepts."""
    keys = sorted(folder.glob("*.pub"))
    if not keys:
        raise UsageError(f"--node-keys {folder}: no .pub files to register; make them with "
                         "`fedlaunch certs DIR --host NAME --node-keys N`")
    for path in keys:
        try:
            key = serialization.load_ssh_public_key(path.read_bytes())
        except (ValueError, UnsupportedAlgorithm, OSError) as exc:
            raise UsageError(f"--node-keys: {path} is not an OpenSSH public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UsageError(f"--node-keys: {path} is not an EC key; Flower wants NIST P-256/384/521")
    return keys


def private_key(folder: Path, partition_id: int) -> Path:
    """The key client `partition_id` signs in with; a clear error when it is missing or unusable."""
    path = private_key_path(folder, partition_id)
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise UsageError(f"--node-keys {folder} has no {path.name} for partition {partition_id}; "
                         f"copy it from the machine that ran `fedlaunch certs`") from None
    except (ValueError, UnsupportedAlgorithm, TypeError, OSError) as exc:
        raise UsageError(f"--node-keys: {path} is not an unencrypted OpenSSH private key "
                         f"({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"--node-keys: {path} is not an EC key; Flower wants NIST P-256/384/521")
    return path


async def register(flwr: str, federation: str, keys: list[str], env: dict[str, str], cwd: Path,
                   log: Path, timeout: float = 60.0) -> list[tuple[str, str]]:
    """Run `flwr supernode register KEY FEDERATION` for every key at once, each in its own
    process group, their output appended to `log`; return (key, reason) for each that failed."""
    async def one(key: str) -> tuple[str, int | None, str]:
        proc = await asyncio.create_subprocess_exec(
            flwr, "supernode", "register", key, federation, env=env, cwd=cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:  # a failed registration like any other: one line, a summary
            proc.kill()
            await proc.wait()
            return key, None, f"no answer from the SuperLink in {timeout:.0f} s"
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        return key, proc.returncode, ANSI.sub("", out.decode(errors="replace"))

    results = await asyncio.gather(*(one(key) for key in keys))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        for key, code, text in results:
            fh.write(f"$ flwr supernode register {key} {federation}  (exit {code})\n{text}\n")
    return [(key, reason(text)) for key, code, text in results if code != 0]


def reason(text: str) -> str:
    """The words of flwr's boxed error, on one line."""
    words = [line.strip(" │╭╮╰╯─") for line in text.splitlines()]
    words = [w for w in words if w and not w.startswith(("Using SuperLink", "Error"))]
    return " ".join(words)[-300:] or "no output"
