"""Before and during start-up: the run folder's Flower files, the SuperLink's first answer, node keys."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path

from launcher.network import nodeauth
from launcher.network.runtime_secret import LAUNCH_KEY, launch_key, secret_path
from launcher.planning.bundle import make_app, write_flwr_config
from launcher.planning.plan import FEDERATION, FLWR_ENV, Plan, bin_path, run_config_toml
from launcher.supervision.outcome import RunFailed
from launcher.supervision.procs import ManagedProcess

SPIN_COUNT = "1000"  # libgomp spins this many times before a waiting thread sleeps (default 300,000)


def brief_omp_spin(env: MutableMapping[str, str]) -> None:
    """GOMP_SPINCOUNT=SPIN_COUNT in `env`, unless it already says how OpenMP threads wait."""
    if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & env.keys():
        env["GOMP_SPINCOUNT"] = SPIN_COUNT


def child_base_env() -> dict[str, str]:
    """The environment children inherit, with this Python's scripts first on PATH.

    Flower's processes start helpers (e.g. flwr-clientapp under --executor stock) by name. Flower's
    internal variables (FLWR_INTERNAL_*) of the user's environment are not passed on.

    torch's OpenMP threads (libgomp) spin only briefly before they sleep, unless the user set how
    they wait: with the default long spin, one busy core elsewhere on a 2-core machine made an
    epoch of the CNN 12x slower, and the brief spin costs nothing on idle cores, where a passive
    wait costs up to a quarter (bench/busy_cores.py, docs/PERFORMANCE.md).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_")}
    brief_omp_spin(env)
    scripts = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    return env


def write_flower_files(plan: Plan) -> None:
    """The app bundle, its run config and `flwr run`'s home, for a run whose SuperLink is here.
    The bundle carries this launch's key (after write_secret): its ServerApp runs no other run."""
    key = launch_key(secret_path(plan.run_dir).read_bytes())
    make_app(plan.run_dir / "app", plan.cfg, {LAUNCH_KEY: key})
    (plan.run_dir / "run_config.toml").write_text(run_config_toml(plan.cfg))
    ca = Path(plan.root_certificates) if plan.root_certificates else None
    write_flwr_config(plan.run_dir / "flwr" / "submit", plan.superlink_address, ca)


async def wait_for_superlink(
    address: str,
    link: ManagedProcess,
    stopping: Callable[[], bool],
    monotonic: Callable[[], float],
    timeout: float = 60.0,
    interval: float = 0.05,
) -> None:
    """Wait until `address` accepts connections; fail naming the SuperLink if it exits first or
    does not answer within `timeout`; return early when a stop is asked for."""
    host, port = address.rsplit(":", 1)
    deadline = monotonic() + timeout
    while monotonic() < deadline:
        if link.returncode is not None:
            raise RunFailed(link.name, f"exited with code {link.returncode} at start",
                            tuple(link.tail))
        if stopping():
            return
        try:
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(interval)
    raise RunFailed(link.name, f"did not answer on {address} within {timeout:.0f} s",
                    tuple(link.tail))


async def register_node_keys(plan: Plan, base_env: dict[str, str]) -> int:
    """With SuperNode authentication, register every node key (before a SuperNode starts)."""
    keys = list(plan.node_keys)
    env = {**base_env, **FLWR_ENV, "FLWR_HOME": str(plan.run_dir / "flwr" / "submit")}
    log = plan.run_dir / "logs" / "register.log"
    failed = await nodeauth.register(bin_path("flwr"), FEDERATION, keys, env, plan.run_dir, log)
    if failed:
        key, why = failed[0]
        raise RunFailed("register", f"could not register the node key {key}: {why}",
                        tuple(log.read_text().splitlines()[-12:]))
    return len(keys)
