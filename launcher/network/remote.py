"""Plans that span machines: `--serve` (a SuperLink others reach, with TLS) and `--join` (clients only)."""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fedcore.config import RunConfig
from fedcore.errors import UsageError
from launcher.network import nodeauth
from launcher.network.certs import CertPaths, covers, server_names
from launcher.network.gateway_limits import DEFAULT_LIMITS, Limits
from launcher.network.ports import free_port
from launcher.network.runtime_secret import FLAG as SECRET_FLAG
from launcher.network.runtime_secret import secret_path
from launcher.planning.bundle import toml_string
from launcher.planning.placement import Placement
from launcher.planning.plan import (
    FLWR_ENV,
    Plan,
    client_spec,
    cpu_threads,
    serverapp_spec,
    submit_spec,
    superlink_spec,
)
from launcher.planning.pool import WorkerChoice, pool_specs
from launcher.supervision.procs import ProcessSpec

LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Address:
    """HOST:PORT as given to --serve or --join; `[::1]:9092` for IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    @property
    def loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def reachable(self) -> Address:
        """Where processes on this machine connect: a wildcard bind is reached on loopback."""
        if self.host == "0.0.0.0":
            return Address(LOCAL, self.port)
        if self.host == "::":
            return Address("::1", self.port)
        return self


def parse_address(text: str, flag: str = "--serve") -> Address:
    """`HOST:PORT`, `[V6]:PORT`; UsageError naming `flag` when it is not one."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if value.startswith("["):
        host = host.removeprefix("[").removesuffix("]") if host.endswith("]") else ""
    elif ":" in host:
        host = ""  # a bare IPv6 address: its port would be ambiguous
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"{flag} {text!r}: give HOST:PORT, e.g. 0.0.0.0:9092, server.lan:9092 or "
                         "[::]:9092, with a port from 1 to 65535")
    return Address(host, int(port_text))


def find_certificates(folder: Path, flag: str = "--certificates") -> CertPaths:
    """The CA, server certificate and key in `folder` (names as `fedlaunch certs` writes them)."""
    paths = CertPaths.in_dir(folder)
    missing = [p.name for p in (paths.ca_cert, paths.server_cert, paths.server_key) if not p.is_file()]
    if missing:
        raise UsageError(f"{flag} {folder}: no {', '.join(missing)} there; make them with "
                         f"`fedlaunch certs {folder} --host NAME` (NAME: how clients reach this machine)")
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        reason = str(exc) or type(exc).__name__
        raise UsageError(f"{flag} {folder}: {paths.server_cert.name} was not signed by "
                         f"{paths.ca_cert.name} ({reason}); remake both with `fedlaunch certs`") from None
    return paths


def root_ca(certificates: Path | None, root_certificates: Path | None) -> Path | None:
    """The CA file a joining client trusts: --root-certificates FILE or DIR/ca.crt of --certificates."""
    if certificates is not None and root_certificates is not None:
        raise UsageError("give --certificates DIR or --root-certificates FILE, not both")
    path = root_certificates or (CertPaths.in_dir(certificates).ca_cert if certificates else None)
    if path is None:
        return None
    path = path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"no CA certificate at {path}: copy ca.crt from the server's "
                         "`fedlaunch certs` folder")
    return path


def client_tls(root_certificates: Path | None, insecure: bool) -> tuple[str, ...]:
    """SuperNode flags: --insecure, --root-certificates CA, or none (the system's CAs)."""
    if insecure and root_certificates is not None:
        raise UsageError("--insecure and a CA certificate contradict each other; drop one")
    if insecure:
        return ("--insecure",)
    return ("--root-certificates", str(root_certificates)) if root_certificates else ()


def insecure_warning(address: Address, who: str) -> str:
    return (f"--insecure: {who} {address} without TLS; models and updates cross the network "
            "unencrypted and anyone who reaches the port can join. Use `fedlaunch certs` and "
            "--certificates instead")


def authentication(node_keys: Path | None, tls: bool, partitions: range,
                   tls_flag: str) -> tuple[Path | None, list[Path]]:
    """For --node-keys: the keys' folder and the public keys to register (none without it).

    Every partition started here must have its private key; Flower refuses SuperNode
    authentication without TLS, so --node-keys without it is a usage error.
    """
    if node_keys is None:
        return None, []
    if not tls:
        raise UsageError(f"--node-keys needs TLS: give {tls_flag} (Flower refuses SuperNode "
                         "authentication over an unencrypted connection)")
    folder = nodeauth.key_folder(node_keys)
    for partition_id in partitions:
        nodeauth.private_key(folder, partition_id)
    registered = nodeauth.public_keys(folder) if tls_flag == "--certificates" else []
    return folder, registered


def signs_in(keys: Path | None, partition_id: int | str) -> tuple[str, ...]:
    """The SuperNode flag that makes client `partition_id` sign in with its key (for the pool's
    client host, `"{partition}"`: it puts in each client's id)."""
    if keys is None:
        return ()
    return ("--auth-supernode-private-key", str(nodeauth.private_key_path(keys, partition_id)))


def serve_plan(
    cfg: RunConfig,
    run_dir: Path,
    placement: Placement,
    address: Address,
    certificates: Path | None,
    insecure: bool,
    *,
    local_partitions: range = range(0),
    max_restarts: int = 3,
    executor: str = "warm",
    node_keys: Path | None = None,
    workers: WorkerChoice | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Plan:
    """A SuperLink for cfg.clients nodes, clients for `local_partitions` here (placed by
    `placement`, one entry each, or one per worker when `workers` is fewer: the pool), and the
    `flwr run` submitter.

    The SuperLink listens on a free port of 127.0.0.1, where the local clients, the submitter
    and node-key registration reach it; on `address` a gateway forwards only the Fleet API (what
    SuperNodes use) to it. TLS (the server certificate, key and CA in `certificates`) is
    required beyond loopback unless `insecure`, which adds a warning to the plan.
    """
    pool = pooled(workers, len(local_partitions), executor)
    if (pool.workers if pool else len(local_partitions)) != len(placement.client_gpu):
        raise ValueError("placement must place exactly the local partitions (or workers)")
    if local_partitions and (local_partitions.start < 0 or local_partitions.stop > cfg.clients):
        raise UsageError(f"local partition ids {local_partitions.start}-{local_partitions.stop - 1} "
                         f"are outside 0-{cfg.clients - 1} (--clients {cfg.clients})")
    if insecure and certificates is not None:
        raise UsageError("--insecure and --certificates contradict each other; drop one")
    reach = address.reachable()
    link_port = free_port(LOCAL)
    warnings = list(placement.warnings)
    notes = list(placement.notes)
    certs: CertPaths | None = None
    if certificates is not None:
        certs = find_certificates(certificates)
        names = server_names(certs.server_cert)
        for host in (reach.host, LOCAL):  # the gateway serves `address`; the SuperLink, loopback
            if not covers(names, host):
                raise UsageError(f"{certs.server_cert} is valid for {', '.join(names)}, not {host}; "
                                 f"remake it: fedlaunch certs DIR --host {reach.host} --force")
        server_tls: tuple[str, ...] = (
            "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert),
            "--ssl-keyfile", str(certs.server_key))
        notes.append(f"listening on {address} with TLS (the Fleet API only); clients join with "
                     f"--root-certificates (a copy of {certs.ca_cert}); certificate valid for "
                     f"{', '.join(names)}")
    elif address.loopback or insecure:
        server_tls = ("--insecure",)
        if not address.loopback:
            warnings.append(insecure_warning(address, "the SuperLink listens on"))
    else:
        raise UsageError(f"--serve {address} listens beyond this machine: give --certificates DIR "
                         "(make it with `fedlaunch certs DIR --host NAME`) or --insecure to send "
                         "models unencrypted")
    ca = certs.ca_cert if certs else None
    tls = client_tls(ca, insecure=ca is None)
    keys, registered = authentication(node_keys, ca is not None, local_partitions, "--certificates")
    if keys is not None:
        server_tls += ("--enable-supernode-auth",)
        notes.append(f"SuperNode authentication: only the {len(registered)} node key(s) in "
                     f"{keys} may join")
    server_gpu = placement.gpus[0] if placement.gpus else None
    loopback = Address(LOCAL, link_port)
    specs = [superlink_spec(run_dir, link_port, server_tls, server_gpu),
             serverapp_spec(run_dir, link_port, str(ca) if ca else None, server_gpu),
             gateway_spec(address, loopback, certs, limits)]
    threads = cpu_threads(max(1, pool.workers if pool else len(local_partitions)))
    if pool:
        specs.extend(pool_specs(run_dir, local_partitions, cfg.clients, str(loopback), placement,
                                FLWR_ENV, threads, max_restarts,
                                (*tls, SECRET_FLAG, str(secret_path(run_dir)),
                                 *signs_in(keys, "{partition}"))))
    else:
        for partition_id, gpu_id in zip(local_partitions, placement.client_gpu, strict=True):
            node_config = f"partition-id={partition_id} num-partitions={cfg.clients}"
            specs.append(client_spec(run_dir, partition_id, node_config, str(loopback), tls,
                                     gpu_id, placement, threads, executor,
                                     signs_in(keys, partition_id)))
    specs.append(submit_spec(run_dir))
    placement = dataclasses.replace(placement, notes=tuple(notes), warnings=tuple(warnings))
    return Plan("federated", cfg, run_dir, placement, tuple(specs), str(loopback), max_restarts,
                root_certificates=str(ca) if ca else "",
                node_keys=tuple(str(k) for k in registered),
                workers_why=pool.why if pool else "")


def gateway_spec(address: Address, superlink: Address, certs: CertPaths | None,
                 limits: Limits = DEFAULT_LIMITS) -> ProcessSpec:
    """What faces the network: the Fleet API routes forwarded to the SuperLink on loopback, the
    rest refused (launcher.network.gateway) and each caller held to `limits`; TLS with the server
    certificate when there is one."""
    tls = ("--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key),
           "--upstream-ca", str(certs.ca_cert)) if certs else ()
    return ProcessSpec(
        name="gateway", role="gateway",
        argv=(sys.executable, "-m", "launcher.network.gateway", "--listen", str(address),
              "--upstream", str(superlink), *tls, *limits.argv()),
        env={**FLWR_ENV, "PYTHONUNBUFFERED": "1"},
    )


def join_plan(
    cfg: RunConfig,
    run_dir: Path,
    placement: Placement,
    address: Address,
    partition_ids: range,
    num_partitions: int,
    root_ca: Path | None,
    insecure: bool,
    *,
    max_restarts: int = 3,
    executor: str = "warm",
    connect_timeout: float | None = None,
    node_keys: Path | None = None,
    workers: WorkerChoice | None = None,
) -> Plan:
    """Clients for `partition_ids` of `num_partitions`, connected to the SuperLink at `address`
    (one per worker in `placement` when `workers` is fewer: the pool).

    Each client's progress file goes to this run folder (node config `progress-dir`).
    `connect_timeout` bounds how long a client keeps retrying an unreachable SuperLink
    (`--max-wait-time`); None waits for it indefinitely. A certificate that does not verify
    ends the client at once, whatever the timeout.
    """
    if not partition_ids or partition_ids.step != 1:
        raise UsageError("--partition-ids must be a range A-B with A <= B")
    if partition_ids.start < 0 or partition_ids.stop > num_partitions:
        raise UsageError(f"--partition-ids {partition_ids.start}-{partition_ids.stop - 1} are "
                         f"outside 0-{num_partitions - 1} (--num-partitions {num_partitions})")
    pool = pooled(workers, len(partition_ids), executor)
    if (pool.workers if pool else len(partition_ids)) != len(placement.client_gpu):
        raise ValueError("placement must place exactly the partition ids (or workers)")
    if address.wildcard:
        raise UsageError(f"--join {address}: give the server's name or address, not a wildcard")
    tls = client_tls(root_ca, insecure)
    keys, _ = authentication(node_keys, root_ca is not None, partition_ids, "--root-certificates")
    warnings = list(placement.warnings)
    if insecure and not address.loopback:
        warnings.append(insecure_warning(address, "clients connect to"))
    extra = ("--max-wait-time", str(connect_timeout)) if connect_timeout is not None else ()
    progress = toml_string(str(run_dir / "progress"))  # Flower's node-config parser takes TOML
    threads = cpu_threads(pool.workers if pool else len(partition_ids))
    if pool:
        specs = tuple(pool_specs(
            run_dir, partition_ids, num_partitions, str(address), placement, FLWR_ENV, threads,
            max_restarts, (*tls, SECRET_FLAG, str(secret_path(run_dir)), *extra,
                           *signs_in(keys, "{partition}")),
            node_config_extra=f"progress-dir={progress}", rung=False))
    else:
        specs = tuple(
            client_spec(run_dir, partition_id,
                        f"partition-id={partition_id} num-partitions={num_partitions} "
                        f"progress-dir={progress}",
                        str(address), tls, gpu_id, placement, threads, executor,
                        extra + signs_in(keys, partition_id))
            for partition_id, gpu_id in zip(partition_ids, placement.client_gpu, strict=True)
        )
    placement = dataclasses.replace(placement, warnings=tuple(warnings))
    return Plan("join", cfg, run_dir, placement, specs, str(address), max_restarts,
                root_certificates=str(root_ca) if root_ca else "",
                workers_why=pool.why if pool else "")


def pooled(workers: WorkerChoice | None, clients: int, executor: str) -> WorkerChoice | None:
    """The worker choice when it makes a pool (fewer warm workers than clients), else None."""
    if workers is not None and workers.workers < clients and executor == "warm":
        return workers
    return None
