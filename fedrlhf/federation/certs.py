"""Certificates and keys for a Flower deployment: TLS for the SuperLink, auth keys for SuperNodes.

An operator who has no PKI of their own can run::

    python -m fedrlhf.federation.certs pki --hosts 127.0.0.1 localhost --nodes device-1 device-2

which writes ``pki/ca.crt`` (give it to every device: ``--root-certificates``),
``pki/ca.key`` (keep offline), ``pki/server.pem`` + ``pki/server.key``
(``flower-superlink --ssl-certfile/--ssl-keyfile``) and one key pair per device
(``pki/device-1`` for ``flower-supernode --auth-supernode-private-key``,
``pki/device-1.pub`` for ``flwr supernode register``).

SuperNode keys are EC P-384 in OpenSSH format, as Flower 1.41 expects
(``flower-supernode`` loads the private key with ``load_ssh_private_key``,
``flwr supernode register`` the public one with ``load_ssh_public_key``).
Private keys are created with mode 0600 (never readable by others, not even
briefly) and existing files are not overwritten unless asked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA on disk: ``cert`` goes to every SuperNode, ``key`` stays with the operator."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerCertificate:
    """The SuperLink's TLS certificate (signed by the CA) and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKeyPair:
    """A SuperNode's authentication keys: ``private`` stays on the device, ``public`` is registered."""

    private: Path
    public: Path


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        if path.exists():
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)  # in case the umask removed bits we wanted (it cannot add any)
    else:
        path.write_bytes(data)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey, *, overwrite: bool
) -> None:
    """Write a private key (0600) and its certificate; refuse, before writing either, to clobber one."""
    for path in (cert_path, key_path):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists")
    _write(key_path, _pem_key(key), private=True, overwrite=overwrite)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=overwrite)


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: enabled.get(n, False) for n in names})


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_ca(
    directory: str | os.PathLike[str],
    *,
    name: str = "fedrlhf federation CA",
    days: int = 3650,
    key_size: int = 3072,
    overwrite: bool = False,
) -> CertificateAuthority:
    """Write a self-signed CA (``ca.crt``, ``ca.key``) to ``directory``."""
    directory = Path(directory)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = CertificateAuthority(cert=directory / "ca.crt", key=directory / "ca.key")
    _write_pair(ca.cert, ca.key, cert, key, overwrite=overwrite)
    return ca


def _load_ca(ca: CertificateAuthority | str | os.PathLike[str]) -> CertificateAuthority:
    if isinstance(ca, CertificateAuthority):
        return ca
    return CertificateAuthority(cert=Path(ca) / "ca.crt", key=Path(ca) / "ca.key")


def generate_server_cert(
    directory: str | os.PathLike[str],
    ca: CertificateAuthority | str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    days: int = 365,
    key_size: int = 2048,
    overwrite: bool = False,
) -> ServerCertificate:
    """Write the SuperLink's ``server.pem``/``server.key``, signed by ``ca``, valid for ``hosts``.

    ``hosts`` are the names and IP addresses devices use to reach the SuperLink
    (each becomes a subjectAltName; TLS clients check the address against them).
    ``ca`` is what :func:`generate_ca` returned or the directory it wrote to.
    """
    if not hosts:
        raise ValueError("hosts must name at least one DNS name or IP address of the SuperLink")
    directory = Path(directory)
    ca = _load_ca(ca)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"unsupported CA key type {type(ca_key).__name__}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = ServerCertificate(cert=directory / "server.pem", key=directory / "server.key")
    _write_pair(server.cert, server.key, cert, key, overwrite=overwrite)
    return server


def generate_node_keypair(
    directory: str | os.PathLike[str], name: str, *, overwrite: bool = False
) -> NodeKeyPair:
    """Write a SuperNode auth key pair ``<name>`` (private, 0600) and ``<name>.pub`` (OpenSSH, EC P-384)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid key name {name!r}")
    directory = Path(directory)
    pair = NodeKeyPair(private=directory / name, public=directory / f"{name}.pub")
    for path in (pair.private, pair.public):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists")
    key = ec.generate_private_key(ec.SECP384R1())
    _write(
        pair.private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
        overwrite=overwrite,
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(pair.public, public + f" {name}\n".encode(), private=False, overwrite=overwrite)
    return pair


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedrlhf.federation.certs DIR [--hosts ...] [--nodes ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrlhf.federation.certs",
        description="Write a CA, a SuperLink certificate, SuperNode keys.",
    )
    parser.add_argument("directory", type=Path, help="where to write the files")
    parser.add_argument(
        "--hosts",
        nargs="+",
        default=list(DEFAULT_HOSTS),
        help="DNS names / IPs devices use to reach the SuperLink (default: 127.0.0.1 localhost)",
    )
    parser.add_argument("--nodes", nargs="*", default=[], help="names of SuperNode key pairs to create")
    parser.add_argument(
        "--nodes-only",
        action="store_true",
        help="only create the --nodes key pairs (the CA and server certificate exist)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        if not args.nodes_only:
            ca = generate_ca(args.directory, overwrite=args.overwrite)
            server = generate_server_cert(args.directory, ca, args.hosts, overwrite=args.overwrite)
            print(f"CA: {ca.cert} (key {ca.key})\nSuperLink: {server.cert} (key {server.key})")
        for name in args.nodes:
            pair = generate_node_keypair(args.directory, name, overwrite=args.overwrite)
            print(f"SuperNode {name}: {pair.private} (public {pair.public})")
    except FileExistsError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc} (use --overwrite to replace it)\n")
    except (ValueError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
