"""fedrlhf-client join against a real TLS SuperLink with SuperNode authentication (slow).

A device with an unregistered key is told in one line that its key is not registered and what
to do; once the operator registers its ``keygen`` key it connects, shares nothing until a round
trains, and Ctrl-C lets its SuperNode leave (so it can join again at once); a revoked key cannot
be registered again, and ``keygen --new`` gives one that can (issue 28.8).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clients import app
from tests.federation.test_flwr_run import BIN, FLWR, Reaper, flwr_env, free_ports, start, tail
from tests.helpers import synthetic_pairs

CLIENT = str(BIN / "fedrlhf-client")


def _flwr(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLWR, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def _register(pub: Path, env: dict[str, str]) -> str:
    out = _flwr(["supernode", "register", str(pub), "tls", "--format", "json"], env)
    begin = out.stdout.find("{")
    assert out.returncode == 0 and begin >= 0, out.stdout + out.stderr
    return str(json.JSONDecoder().raw_decode(out.stdout[begin:])[0]["node-id"])


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{tail(log)}"
        time.sleep(0.3)
    raise AssertionError(f"no {text!r} after {timeout} s:\n{tail(log)}")


def _join_and_stop(reaper: Reaper, join: list[str], env: dict[str, str], log: Path) -> str:
    """Start ``join``, wait until it is connected, Ctrl-C it; its output."""
    proc = start(reaper, join, env=env, log=log)
    _wait_for(log, "fedrlhf-client join: connected to", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, tail(log)
    return log.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_join_against_a_real_superlink(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    from fedrlhf.federation.certs import generate_ca, generate_server_cert

    ca = generate_ca(tmp_path / "pki")
    server = generate_server_cert(tmp_path / "pki", ca, hosts=["127.0.0.1"])
    link_port, node_port = free_ports(2)
    homes = {n: tmp_path / "homes" / n for n in ("link", "cli", "device")}
    for home in homes.values():
        home.mkdir(parents=True)
    (homes["cli"] / "config.toml").write_text(
        f'[superlink]\ndefault = "tls"\n\n[superlink.tls]\naddress = "127.0.0.1:{link_port}"\n'
        f'root-certificates = "{ca.cert}"\n'
    )
    cli, dev_env = flwr_env(homes["cli"]), flwr_env(homes["device"])
    device = tmp_path / "device"
    for args in (["init", "--lifetime-epsilon", "none"], ["keygen"]):
        subprocess.run([CLIENT, "--device", str(device), *args], env=dev_env, check=True, capture_output=True)
    client = app.ClientDevice.open(device)
    for pair in synthetic_pairs(6, seed=0):
        app.record(client, pair)
    join = [CLIENT, "--device", str(device), "join", "--superlink", f"127.0.0.1:{link_port}"]
    join += ["--root-certificates", str(ca.cert), "--port", str(node_port)]
    reaper = Reaper()
    try:
        link_log = tmp_path / "superlink.log"
        link = start(
            reaper,
            [
                str(BIN / "flower-superlink"),
                *("--ssl-ca-certfile", str(ca.cert), "--ssl-certfile", str(server.cert)),
                *("--ssl-keyfile", str(server.key), "--enable-supernode-auth", "--host", "127.0.0.1"),
                *("--port", str(link_port), "--database", str(homes["link"] / "state.db")),
                "--disable-runtime-dependency-installation",
            ],
            env=flwr_env(homes["link"]),
            log=link_log,
        )
        _wait_for(link_log, "Uvicorn running on https://", link)

        # Not registered: one line saying so and what to do; nothing counts as shared.
        refused = subprocess.run(
            [*join, "--max-retries", "0"], env=dev_env, capture_output=True, text=True, timeout=120
        )
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2, refused.stderr
        assert last.startswith(f"fedrlhf-client join: error: the SuperLink at 127.0.0.1:{link_port} refused ")
        assert "not registered" in last and "[code: 2004]" in last and "keygen --new" in last

        # Registered: it connects; Ctrl-C lets it leave, so it can join again at once.
        node_id = _register(device / "supernode_key.pub", cli)
        for attempt in (1, 2):
            said = _join_and_stop(reaper, join, dev_env, tmp_path / f"join-{attempt}.log")
            assert f"connected to 127.0.0.1:{link_port} as node {node_id}" in said
            assert "stopped; 0 federated rounds trained on your feedback" in said
        with client.store() as store:
            assert all(store.rounds_used(i) == [] for i in store.ids())

        # Revoked: the same key can never be registered again; keygen --new makes one that can.
        assert _flwr(["supernode", "unregister", node_id, "tls"], cli).returncode == 0
        again = _flwr(["supernode", "register", str(device / "supernode_key.pub"), "tls"], cli)
        assert "Public key already in use" in again.stdout + again.stderr
        new = subprocess.run(
            [CLIENT, "--device", str(device), "keygen", "--new"], env=dev_env, capture_output=True, text=True
        )
        assert new.returncode == 0, new.stderr
        assert _register(device / "supernode_key.pub", cli) != node_id
    finally:
        leftovers = reaper.stop_all()
    assert not leftovers, f"processes survived SIGKILL: {leftovers}"
