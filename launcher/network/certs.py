"""TLS for a SuperLink other machines reach: a private CA and a server certificate for its names."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcore.errors import UsageError
from launcher.network.nodeauth import NODES, generate_node_keys, write_file

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
ALWAYS = ("127.0.0.1", "localhost")  # the SuperLink's own ServerApp and `flwr run` connect here
CA_DAYS, SERVER_DAYS = 3650, 825
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class CertPaths:
    """The files of one certificate folder: what the SuperLink serves and what clients trust."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, folder: Path) -> CertPaths:
        folder = folder.expanduser().resolve()
        return cls(folder, folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)


def check_host(host: str) -> str:
    """A name or IP address a client will type in --join; UsageError if it cannot be one."""
    text = host.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            raise UsageError(f"--host {host}: {text} only means 'listen everywhere'; give the name "
                             "or address clients use to reach this machine")
        return str(ip)
    if ":" in text:
        raise UsageError(f"--host {host}: give the host without a port")
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UsageError(f"--host {host!r} is not a host name or IP address")
    return name


def san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Subject alternative names for `hosts` plus 127.0.0.1 and localhost, each once, in order."""
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *ALWAYS]:
        value = check_host(host)
        if value in seen:
            continue
        seen.add(value)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            names.append(x509.DNSName(value))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlaunch"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def existing(paths: CertPaths) -> list[Path]:
    return [p for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key) if p.exists()]


def generate(dir: Path, hosts: list[str], *, force: bool = False,
             now: datetime.datetime | None = None) -> CertPaths:
    """A CA and a server certificate for `hosts` (and 127.0.0.1, localhost) in `dir`; keys 0600.

    Refuses (UsageError) to replace certificates already there unless `force`.
    """
    paths = CertPaths.in_dir(dir)
    sans = san_entries(hosts)
    if paths.dir.exists() and not paths.dir.is_dir():
        raise UsageError(f"{dir} is a file; give a folder for the certificates")
    found = existing(paths)
    if found and not force:
        listed = ", ".join(p.name for p in found)
        raise UsageError(f"{dir} already holds {listed}; pass --force to replace them (clients "
                         "that trust the old ca.crt will then need the new one)")
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedlaunch CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    first = sans[0].value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(first))).issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    write_file(paths.ca_key, _key_pem(ca_key), 0o600)
    write_file(paths.server_key, _key_pem(server_key), 0o600)
    write_file(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    write_file(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def server_names(cert_file: Path) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]


def covers(names: list[str], host: str) -> bool:
    """Whether a certificate for `names` is valid for `host` (a leading `*.` matches one label)."""
    host = host.strip("[]").lower().rstrip(".")
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"certs: {message} (see fedlaunch certs --help)")


def certs_main(argv: list[str]) -> int:
    """`fedlaunch certs DIR --host NAME ...`: write the files and say how to use them."""
    parser = _Parser(
        prog="fedlaunch certs",
        description="Make a private CA and a SuperLink server certificate for `fedlaunch --serve`. "
        "127.0.0.1 and localhost are always included.",
    )
    parser.add_argument("dir", help="folder for ca.crt, ca.key, server.pem, server.key")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="a name or IP address clients use to reach the SuperLink (repeat)")
    parser.add_argument("--node-keys", type=int, default=0, metavar="N",
                        help="also make SuperNode keys for partitions 0..N-1 in DIR/nodes "
                        "(for --node-keys: only these nodes may join)")
    parser.add_argument("--force", action="store_true", help="replace certificates already there")
    args = parser.parse_args(argv)
    if args.node_keys < 0:
        raise UsageError(f"certs: --node-keys {args.node_keys}: give the number of partitions")
    paths = generate(Path(args.dir), args.host, force=args.force)
    keys = generate_node_keys(paths.dir / NODES, args.node_keys, force=args.force) if args.node_keys else []
    names = ", ".join(server_names(paths.server_cert))
    host = check_host(args.host[0]) if args.host else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    print(f"fedlaunch: wrote {paths.ca_cert}, {paths.server_cert} and the keys {paths.ca_key.name}, "
          f"{paths.server_key.name} (mode 0600) in {paths.dir}\n"
          f"server certificate valid for: {names}\n"
          f"serve:  fedlaunch --serve 0.0.0.0:9092 --certificates {paths.dir} ...\n"
          f"join:   copy {paths.ca_cert.name} (never the .key files) to each client machine, then\n"
          f"        fedlaunch --join {host}:9092 --root-certificates ca.crt ...")
    if keys:
        print(f"node keys: {paths.dir / NODES}/node-0.key .. node-{len(keys) - 1}.key (mode 0600) and "
              f".pub\n"
              f"serve:  add --node-keys {paths.dir}: only these {len(keys)} nodes may join\n"
              f"join:   copy node-<partition id>.key for the partitions a machine trains into a "
              f"folder there\n        and add --node-keys FOLDER")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(certs_main(sys.argv[1:]))
    except UsageError as exc:
        print(f"fedlaunch: {exc}", file=sys.stderr)
        sys.exit(2)
