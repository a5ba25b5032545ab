"""The --serve and --join flags: check them and say how the plan of a run across machines is built.

`network_plan` gives the number of clients that run on this machine and a function that builds
the plan (launcher.network.remote, imported only for a run across machines: it needs
cryptography); plain runs get (None, None), and stray network flags are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fedcore.config import MOST, RunConfig
from fedcore.errors import UsageError
from launcher.network.gateway_limits import Limits, limits_from
from launcher.planning.placement import Placement
from launcher.planning.plan import Plan
from launcher.planning.pool import WorkerChoice
from launcher.planning.prepare import LaunchOptions, RemotePlan, trusted_folder, trusted_path


def partition_range(text: str | None, flag: str = "--partition-ids") -> range | None:
    """`3-5` -> range(3, 6); `4` -> range(4, 5)."""
    if text is None:
        return None
    first, _, last = text.partition("-")
    try:
        start, stop = int(first), int(last or first) + 1
    except ValueError:
        raise UsageError(f"bad {flag} '{text}': give A-B, e.g. 0-3, or one id") from None
    if start < 0 or stop <= start:
        raise UsageError(f"bad {flag} '{text}': ids start at 0 and A must not exceed B")
    if stop > MOST["clients"]:
        raise UsageError(f"bad {flag} '{text}': a run has at most {MOST['clients']:,} clients")
    return range(start, stop)


def network_plan(args: argparse.Namespace,
                 opts: LaunchOptions) -> tuple[int | None, RemotePlan | None]:
    """For --serve/--join: how many clients run here and the function that builds their plan."""
    ids = partition_range(args.partition_ids)
    certs = Path(args.certificates).expanduser().resolve() if args.certificates else None
    keys = Path(args.node_keys) if args.node_keys else None
    if args.serve and args.join:
        raise UsageError("--serve and --join exclude each other: one machine serves, others join")
    if args.serve or args.join:
        from launcher.network import remote  # cryptography: only for a run across machines

        for folder, flag in ((certs, "--certificates"), (keys, "--node-keys")):
            if folder is not None:
                trusted_folder(folder.expanduser().resolve(), flag)
        if args.root_certificates:
            ca_file = Path(args.root_certificates).expanduser().resolve()
            trusted_path(ca_file.parent, "--root-certificates")
            trusted_path(ca_file, "--root-certificates")
    limits = gateway_limits(args)
    if args.serve:
        address = remote.parse_address(args.serve, "--serve")
        local = ids or range(0)

        def serve(cfg: RunConfig, run_dir: Path, placement: Placement,
                  workers: WorkerChoice | None) -> Plan:
            return remote.serve_plan(cfg, run_dir, placement, address, certs, args.insecure,
                                     local_partitions=local, max_restarts=opts.max_restarts,
                                     executor=opts.executor, node_keys=keys, workers=workers,
                                     limits=limits)

        return len(local), serve
    if args.join:
        address = remote.parse_address(args.join, "--join")
        if ids is None or args.num_partitions is None:
            raise UsageError("--join needs --partition-ids A-B and --num-partitions N")
        if not 1 <= args.num_partitions <= MOST["clients"]:
            raise UsageError(f"--num-partitions must be from 1 to {MOST['clients']:,}, "
                             f"got {args.num_partitions}")
        if args.clients is not None and args.clients != len(ids):
            raise UsageError(f"--clients {args.clients} but --partition-ids {args.partition_ids} "
                             f"names {len(ids)}; drop --clients or make them agree")
        if ids.stop > args.num_partitions:
            raise UsageError(f"--partition-ids {args.partition_ids} goes beyond --num-partitions "
                             f"{args.num_partitions} (ids run from 0 to {args.num_partitions - 1})")
        ca = remote.root_ca(certs, Path(args.root_certificates) if args.root_certificates else None)

        def join(cfg: RunConfig, run_dir: Path, placement: Placement,
                 workers: WorkerChoice | None) -> Plan:
            plan = remote.join_plan(cfg, run_dir, placement, address, ids, args.num_partitions,
                                    ca, args.insecure, max_restarts=opts.max_restarts,
                                    executor=opts.executor, node_keys=keys, workers=workers)
            return own_data(plan, cfg.data_dir)

        return len(ids), join
    if (args.partition_ids or args.certificates or args.root_certificates or args.insecure
            or args.node_keys):
        raise UsageError("--partition-ids, --certificates, --root-certificates, --insecure and "
                         "--node-keys go with --serve or --join")
    return None, None


GATEWAY_FLAGS = ("gateway_max_body", "gateway_max_header", "gateway_max_connections",
                 "gateway_timeout")


def gateway_limits(args: argparse.Namespace) -> Limits:
    """The --gateway-* flags, checked (one-line UsageError); they go with --serve only."""
    given = [f"--{n.replace('_', '-')}" for n in GATEWAY_FLAGS if getattr(args, n, None) is not None]
    if given and not args.serve:
        raise UsageError(f"{', '.join(given)}: only with --serve (the limits of its gateway)")
    return limits_from(*(getattr(args, n, None) for n in GATEWAY_FLAGS))


def own_data(plan: Plan, data_dir: str) -> Plan:
    """Joined clients read this machine's data folder (--data-dir, FEDLAUNCH_DATA_DIR or the
    default cache), never the path in the server's run config (FEDLAUNCH_CLIENT_DATA_DIR)."""
    from fedcore.data import default_data_dir

    mine = str(Path(data_dir).expanduser().resolve()) if data_dir else str(default_data_dir())
    specs = tuple(dataclasses.replace(s, env={**s.env, "FEDLAUNCH_CLIENT_DATA_DIR": mine})
                  for s in plan.processes)
    return dataclasses.replace(plan, processes=specs)
