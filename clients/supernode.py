"""Serving a device to a federation: its node key, the SuperNode command, and why a SuperNode stopped.

``fedrlhf-client join`` runs Flower's ``flower-supernode`` as a child process (not ``exec``),
relays its output, says when it is connected, and when it stops, says in one line what is most
likely wrong and what to do.  Flower 1.41 reports every failed connection the same way: exit
status 1 after the lines::

    ERROR :     Exit Code: 305
    Failed to initialize the connection to the SuperLink.
    <detail: "[code: 2004] Failed to activate SuperNode.", "[Errno 111] Connection refused", ...>
    The SuperNode could not establish a connection to the SuperLink.

(``flwr/supernode/fleet_http_connection.py``); :func:`diagnose` reads the detail line.
``[code: 2004]`` comes from the SuperLink's ``activate_node``: no node is registered with this
public key (never registered, or unregistered), or the node with it is already online (another
SuperNode with the same key, or one that died less than two heartbeats, about a minute, ago).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fedrlhf.errors import ConfigError, FedRLHFError

PROG = "fedrlhf-client"
NODE_KEY = "supernode_key"
"""The device's SuperNode key pair in its directory: ``supernode_key`` (private) and ``.pub``."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CONNECTED = re.compile(r"SuperNode ID: (\d+)")
_CODE = re.compile(r"\[code: (\d+)\]\s*(.*)")
_DETAIL_AFTER = "Failed to initialize the connection to the SuperLink."


class JoinFailed(FedRLHFError):
    """The SuperNode stopped without serving: what is most likely wrong, and what to do."""


# --------------------------------------------------------------------------- the node key


def node_key(root: Path) -> Path:
    """Where ``keygen`` writes this device's SuperNode private key (``.pub`` beside it)."""
    return root / NODE_KEY


def make_node_key(root: Path, *, new: bool = False) -> Path:
    """Write the device's SuperNode key pair (EC P-384, OpenSSH, private 0600); the private key's path.

    An existing pair is kept unless ``new``: a key the operator revoked can never be registered
    again (Flower: ``[code: 23] Public key already in use.``), so the device needs a new one.
    """
    from fedrlhf.federation.certs import generate_node_keypair  # cryptography only, no flwr

    key = node_key(root)
    if key.exists() and not new:
        raise ConfigError(
            f"{key} exists (send {key}.pub to the federation's operator); "
            "--new replaces it, e.g. after the operator revoked it"
        )
    return generate_node_keypair(root, NODE_KEY, overwrite=new).private


# --------------------------------------------------------------------------- the command


def _check_address(superlink: str) -> None:
    host, sep, port = superlink.rpartition(":")
    if not sep or not host or "://" in superlink or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--superlink must be HOST:PORT (e.g. fl.example.org:9091), got {superlink!r}")


def _check_private_key(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"SuperNode private key {path} does not exist")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"SuperNode private key {path} is readable by others: run chmod 600 {path}")


@dataclass(frozen=True)
class Connection:
    """How the device reaches the SuperLink (``auth_key`` None: the device's own key, if it has one)."""

    superlink: str
    root_certificates: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    port: int | None = None
    max_retries: int | None = None

    def key_for(self, root: Path) -> Path | None:
        """The private key the SuperNode authenticates with: ``--auth-key``, else the device's own."""
        if self.auth_key is not None or self.insecure:
            return self.auth_key
        return node_key(root) if node_key(root).is_file() else None


def supernode_command(root: Path, conn: Connection, executable: str = "flower-supernode") -> list[str]:
    """The ``flower-supernode`` command line that serves the device directory ``root``.

    TLS (``root_certificates``: the CA that signed the SuperLink's certificate) and node
    authentication (the OpenSSH private key whose public half the operator registered) are
    required unless ``insecure`` (local testing only, and then without a key: Flower refuses
    node authentication without TLS).
    """
    _check_address(conn.superlink)
    if '"' in str(root):
        raise ConfigError(f"the device directory {root} must not contain a double quote")
    cmd = [executable, "--superlink", conn.superlink]
    key = conn.key_for(root)
    if conn.insecure:
        if conn.root_certificates is not None or key is not None:
            raise ConfigError(
                "--insecure turns TLS off, and with it node authentication: drop --root-certificates "
                "and --auth-key, or drop --insecure"
            )
        cmd.append("--insecure")
    else:
        if conn.root_certificates is None:
            raise ConfigError(
                "joining needs --root-certificates CA.pem (the federation's CA); "
                "--insecure is for local testing only"
            )
        if key is None:
            raise ConfigError(
                f"joining needs a node key: run '{PROG} keygen' and have the operator register "
                f"{node_key(root)}.pub, or pass --auth-key KEY"
            )
        if not conn.root_certificates.is_file():
            raise ConfigError(f"root certificate {conn.root_certificates} does not exist")
        _check_private_key(key)
        cmd += ["--root-certificates", str(conn.root_certificates.absolute())]
        cmd += ["--auth-supernode-private-key", str(key.absolute())]
    if conn.port is not None:
        if not 0 < conn.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {conn.port}")
        cmd += ["--port", str(conn.port)]
    if conn.max_retries is not None:
        cmd += ["--max-retries", str(max(0, conn.max_retries))]
    # node-config values are TOML: a bare path is not one, a basic string "..." is (JSON escapes fit)
    return [*cmd, "--node-config", f"device-dir={json.dumps(str(root), ensure_ascii=False)}"]


# --------------------------------------------------------------------------- why it stopped


def _detail(lines: Sequence[str]) -> str:
    """Flower's reason for a failed connection: the line after "Failed to initialize ..."."""
    for i, line in enumerate(lines):
        if line.strip() == _DETAIL_AFTER and i + 1 < len(lines):
            return lines[i + 1].strip()
    return ""


def _refused_key(conn: Connection, key: Path | None, flower: str) -> str:
    shown = key or "this device's key"
    without = " (join uses it without --auth-key)" if conn.auth_key is not None else ""
    return (
        f"the SuperLink at {conn.superlink} refused {shown} (Flower: {flower}): most likely its public "
        f"half is not registered there. Send {shown}.pub to the federation's operator to register "
        f"('flwr supernode register'). If the operator revoked it, it can never be registered again: "
        f"make a new key with '{PROG} keygen --new'{without} and send that .pub. If it is registered, "
        "another SuperNode with this key is online: stop it (after a crash, wait a minute) and join again"
    )


def diagnose(lines: Sequence[str], status: int, *, conn: Connection, key: Path | None = None) -> str:
    """One line: what most likely stopped the SuperNode (exit ``status``, output ``lines``) and what to do."""
    lines = [_ANSI.sub("", line).rstrip("\n") for line in lines]
    detail = _detail(lines)
    host = conn.superlink.rpartition(":")[0]
    code = _CODE.search(detail)
    if code and code[1] == "2004":
        return _refused_key(conn, key, detail)
    if code and code[1] == "2001":
        return (
            f"the SuperLink at {conn.superlink} accepts only registered keys and this SuperNode sent none "
            f"(Flower: {detail}): run '{PROG} keygen', have the operator register its .pub, and join again"
        )
    if code:
        return f"the SuperLink at {conn.superlink} refused this device (Flower: {detail})"
    lowered = detail.lower()
    if "mismatch" in lowered and "certificate" in lowered:
        return (
            f"the SuperLink's TLS certificate does not name {host} (Flower: {detail}): use the address "
            "the operator gave you (one of the names its certificate was made for)"
        )
    if any("SSL/TLS handshake error" in line for line in lines) or "certificate" in lowered:
        return (
            f"TLS with {conn.superlink} failed (Flower: {detail}): the SuperLink's certificate is not "
            f"signed by {conn.root_certificates}; ask the operator for the federation's CA file (ca.crt)"
        )
    if conn.insecure and "disconnected without sending a response" in lowered:
        return (
            f"the SuperLink at {conn.superlink} speaks TLS: drop --insecure and pass --root-certificates "
            "CA.pem (and a registered key)"
        )
    if "connection refused" in lowered:
        return (
            f"nothing accepts connections at {conn.superlink} (Flower: {detail}): check the port (the "
            "SuperLink's, e.g. 9091) and that the operator's SuperLink is running"
        )
    if "name or service not known" in lowered or "name resolution" in lowered or "nodename" in lowered:
        return f"the host {host} is not known (Flower: {detail}): check the --superlink address"
    if "timed out" in lowered or "timeout" in lowered:
        return (
            f"{conn.superlink} did not answer in time (Flower: {detail}): a firewall blocks it, or the "
            "SuperLink is down"
        )
    said = detail or next((ln.strip() for ln in reversed(lines) if "ERROR" in ln or "Exit Code" in ln), "")
    return f"flower-supernode stopped with status {status}" + (f" (Flower: {said})" if said else "")


# --------------------------------------------------------------------------- running it


def _reader(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def serve(
    cmd: list[str], env: dict[str, str], *, conn: Connection, key: Path | None, out: TextIO | None = None
) -> None:
    """Run the SuperNode until it stops; relay its output to ``out`` with a line when it connects.

    SIGINT, SIGTERM and SIGHUP are passed on to it (it runs in its own session, so a terminal's
    Ctrl-C reaches it once, through here), so that it tells the SuperLink it leaves.

    Raises:
        JoinFailed: it stopped with an error status; the message says why and what to do.
    """
    proc = subprocess.Popen(  # noqa: S603 - the command is built from checked parts
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    out = out or sys.stderr
    stopping: list[float] = []  # when the first stop signal came

    def forward(signum: int, _frame: object) -> None:
        stopping.append(time.monotonic())
        if proc.poll() is None:
            proc.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        seen = _relay(proc, conn, out, stopping)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_leftovers(proc.pid)
    if proc.returncode != 0 and not stopping:
        raise JoinFailed(diagnose(seen, proc.returncode, conn=conn, key=key))


def stop_leftovers(group: int, grace: float = 5.0) -> bool:
    """Stop what the SuperNode left running in its process group (its own session): its
    ``flower-superexec`` and idle ``flwr-clientapp`` children, which Flower 1.41 otherwise keeps
    for up to ~15 minutes after the SuperNode stops.  SIGTERM (each one pushes its status and
    leaves), then SIGKILL for any still there after ``grace`` s.  Returns whether any was left.
    """
    try:
        os.killpg(group, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            os.killpg(group, 0)  # anyone left?
        except (ProcessLookupError, PermissionError):
            return True
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def _relay(proc: subprocess.Popen[str], conn: Connection, out: TextIO, stopping: list[float]) -> list[str]:
    """Copy the SuperNode's lines to ``out`` until it exits; its last 200 lines.

    Its ``flwr-clientapp`` children may keep the pipe open after it exits, so reading stops
    about two seconds after its exit; one that ignores a stop signal for 30 s is killed.
    """
    if proc.stdout is None:  # pragma: no cover - Popen(stdout=PIPE) always has one
        raise RuntimeError("flower-supernode has no output pipe")
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    hinted = False  # said "connected" or "cannot reach", or the SuperNode gave up: no more hints
    exited_at: float | None = None
    while exited_at is None or time.monotonic() - exited_at < 2.0:
        try:
            line = lines.get(timeout=0.25)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        if stopping and exited_at is None and time.monotonic() - stopping[0] > 30:
            proc.kill()
        if not line:
            continue
        out.write(line)
        seen = [*seen[-199:], line]
        plain = _ANSI.sub("", line)
        found = _CONNECTED.search(plain)
        if found:
            hinted = True
            print(f"{PROG} join: connected to {conn.superlink} as node {found[1]} (Ctrl-C stops)", file=out)
        elif "Exit Code:" in plain:  # it gave up; later retries are its SuperExec child's, not the Fleet's
            hinted = True
        elif "Connection attempt failed" in plain and not hinted:
            hinted = True
            print(
                f"{PROG} join: cannot reach the SuperLink at {conn.superlink} yet; still trying "
                "(Ctrl-C stops; --max-retries N gives up and says why)",
                file=out,
            )
        out.flush()
    proc.wait()
    return seen
