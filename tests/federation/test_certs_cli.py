"""``python -m fedrlhf.federation.certs`` as docs/deployment.md tells an operator to type it.

The commands are read from the documentation itself, so a documented command that
crashes (issue 28.1: a helper defined below the ``__main__`` block) fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "deployment.md"


def documented(prefix: str, doc: Path = DOCS) -> list[str]:
    """Every command line in ``doc`` (inline or in a code block) that starts with ``prefix``."""
    text = doc.read_text()
    inline = re.findall(r"`(" + re.escape(prefix) + r"[^`]*)`", text)
    blocks = [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]
    return list(dict.fromkeys([*blocks, *inline]))


def run_as_typed(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a documented ``python -m ...`` line with this interpreter, in ``cwd``."""
    argv = shlex.split(command, comments=True)
    assert argv[0] == "python", command
    return subprocess.run(
        [sys.executable, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_documented_pki_commands_run_as_typed(tmp_path: Path) -> None:
    commands = documented("python -m fedrlhf.federation.certs")
    full = [c for c in commands if "--nodes-only" not in c]
    assert full and any("--nodes-only" in c for c in commands), commands
    out = run_as_typed(full[0], tmp_path)
    assert out.returncode == 0, out.stderr
    argv = shlex.split(full[0], comments=True)
    pki = tmp_path / argv[3]
    nodes = argv[argv.index("--nodes") + 1 :]
    for name in ("ca.key", "server.key", *nodes):
        assert (pki / name).stat().st_mode & 0o777 == 0o600, name
    # The server certificate is signed by the CA and names every --hosts entry.
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    ca_key = ca.public_key()
    assert server.issuer == ca.subject
    assert hasattr(ca_key, "verify")
    ca_key.verify(  # type: ignore[call-arg, union-attr]
        server.signature, server.tbs_certificate_bytes, padding.PKCS1v15(), server.signature_hash_algorithm
    )
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)
    assert sorted(names) == sorted(argv[argv.index("--hosts") + 1 : argv.index("--nodes")])
    # Device keys load the way flower-supernode / flwr supernode register load them.
    for name in nodes:
        private = serialization.load_ssh_private_key((pki / name).read_bytes(), password=None)
        public = serialization.load_ssh_public_key((pki / f"{name}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
        assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    # Every other documented form (add a device later; a device makes its own key) runs too.
    for command in commands[1:]:
        if command.startswith(full[0]):
            continue
        out = run_as_typed(command, tmp_path)
        assert out.returncode == 0, f"{command}: {out.stderr}"


def test_existing_files_are_one_error_line(tmp_path: Path) -> None:
    command = "python -m fedrlhf.federation.certs pki --nodes device-0"
    assert run_as_typed(command, tmp_path).returncode == 0
    before = (tmp_path / "pki" / "device-0").read_bytes()
    again = run_as_typed(command, tmp_path)
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m fedrlhf.federation.certs: error: "), lines
    assert "ca.crt exists" in lines[0] and "--overwrite" in lines[0]
    assert (tmp_path / "pki" / "device-0").read_bytes() == before


@pytest.mark.parametrize("name", ["../escape", ".hidden"])
def test_bad_node_name_is_one_error_line(tmp_path: Path, name: str) -> None:
    out = run_as_typed(f"python -m fedrlhf.federation.certs keys --nodes-only --nodes {name}", tmp_path)
    assert out.returncode == 2 and "invalid key name" in out.stderr and "Traceback" not in out.stderr
