"""The SuperExec shared secret of a run: who may claim tasks from a runtime API on this machine.

Flower's runtime APIs (the SuperLink's and each SuperNode's, on loopback) hand a task, with the
token that reads its input, to whoever calls AcquireTask. With `--superexec-auth-secret-file` the
SuperLink and SuperNodes (in `--isolation process`) accept only AcquireTask calls signed with this
secret (HMAC-SHA256, Flower's SuperExec auth), so another user of the machine cannot take a
client's or the ServerApp's task. One random secret per launch, mode 0600, in the run folder.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

FLAG = "--superexec-auth-secret-file"
# The app config key of the run a launch submits: a value derived from the launch's secret, so
# that its warm ServerApp runs that run only, never one someone else submitted first.
LAUNCH_KEY = "launch-key"


def launch_key(secret: bytes) -> str:
    """This launch's value of LAUNCH_KEY (the secret itself never leaves its 0600 file)."""
    return hmac.new(secret, b"fedlaunch launch key", hashlib.sha256).hexdigest()[:32]


def secret_path(run_dir: Path) -> Path:
    return run_dir / "flwr" / "superexec.secret"


def write_secret(run_dir: Path) -> Path:
    """A new random secret for this launch (mode 0600 from its first byte), replacing any old one."""
    path = secret_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_hex(32).encode())
    os.replace(tmp, path)
    return path
