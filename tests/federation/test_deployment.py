"""A real deployment on localhost: TLS SuperLink with SuperNode auth, three devices, a rogue, an impostor.

What an operator does (docs/deployment.md), step by step: generate a CA, the
SuperLink's certificate and one key pair per device with
:mod:`fedrlhf.federation.certs`; start ``flower-superlink`` with TLS and
``--enable-supernode-auth``; register the devices' public keys with
``flwr supernode register``; start one ``flower-supernode`` per device with its
private key and ``--node-config 'device-dir="..."'``; ``flwr run . <federation>``
with ``prepare-cohort=false`` and DP turned on from the command line (``-c
'privacy.enabled=true ...'``).  A SuperNode whose key was never registered is
refused and never receives work.  Then the finished run is extended by a round
(``federation.rounds=3`` on the same run dir) while an impostor is online: a
registered node whose data directory has the same name as device 1's.  Device ids
are bound to the registered keys, so the impostor is refused (the report says why)
and device 1 keeps taking part.  Every process is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from tests.federation.test_flwr_run import (
    BIN,
    FLWR,
    REPO,
    Reaper,
    check_model,
    flwr_env,
    free_ports,
    start,
    tail,
    wait,
)
from tests.helpers import synthetic_pairs

NUM_DEVICES, ROUNDS = 3, 2
_RUN = re.compile(r"^flwr run \. tls --stream -c '(prepare-cohort=false run-dir=.*)'$", re.M)
DOCS_OVERRIDES = _RUN.findall((REPO / "docs" / "deployment.md").read_text())[-1]  # section 2.5's


def _write_device(directory: Path, seed: int) -> None:
    from fedrlhf.feedback import write_jsonl

    directory.mkdir(parents=True)
    pairs = synthetic_pairs(24, seed=seed)
    write_jsonl(directory / "train.jsonl", pairs[:18])
    write_jsonl(directory / "test.jsonl", pairs[18:])


def _wait_port(port: int, proc, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{tail(log)}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {timeout} s:\n{tail(log)}")


def _flwr_json(args: list[str], env: dict[str, str], log: Path) -> dict:
    """Run a ``flwr`` CLI command with ``--format json``; its JSON reply."""
    import subprocess

    out = subprocess.run(
        [FLWR, *args, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    with open(log, "a") as f:
        f.write(f"$ flwr {' '.join(args)}\n{out.stdout}{out.stderr}\n")
    begin = out.stdout.find("{")
    assert out.returncode == 0 and begin >= 0, f"flwr {args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return json.JSONDecoder().raw_decode(out.stdout[begin:])[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tls_deployment_with_supernode_auth(tmp_path: Path, tiny_bert: str) -> None:
    pytest.importorskip("psutil")
    assert "privacy.enabled=true" in DOCS_OVERRIDES and f"federation.rounds={ROUNDS}" in DOCS_OVERRIDES
    from fedrlhf.federation.certs import generate_ca, generate_node_keypair, generate_server_cert

    t0 = time.monotonic()
    pki = tmp_path / "pki"
    ca = generate_ca(pki)
    server = generate_server_cert(pki, ca, hosts=["127.0.0.1", "localhost"])
    keys = [generate_node_keypair(pki / "nodes", f"device-{i}") for i in range(NUM_DEVICES + 1)]
    rogue_key = generate_node_keypair(pki / "nodes", "rogue")
    assert (ca.key.stat().st_mode & 0o777) == 0o600 and (keys[0].private.stat().st_mode & 0o777) == 0o600
    devices = [tmp_path / f"dev-{i}" for i in range(NUM_DEVICES)]
    for i, d in enumerate(devices):
        _write_device(d, seed=i)
    rogue_dir = tmp_path / "dev-rogue"
    _write_device(rogue_dir, seed=99)
    impostor_dir = tmp_path / "impostor" / devices[1].name  # the same device id as device 1
    _write_device(impostor_dir, seed=98)

    link_port, *node_ports = free_ports(1 + NUM_DEVICES + 2)
    logs = tmp_path / "logs"
    logs.mkdir()
    names = ["link", "cli", "rogue", "impostor"] + [f"sn{i}" for i in range(NUM_DEVICES)]
    homes = {name: tmp_path / "homes" / name for name in names}  # a FLWR_HOME per process
    for home in homes.values():
        home.mkdir(parents=True)
    # The operator's `flwr` CLI: a federation named "tls" pointing at the SuperLink, trusting the CA.
    (homes["cli"] / "config.toml").write_text(
        f'[superlink]\ndefault = "tls"\n\n[superlink.tls]\naddress = "127.0.0.1:{link_port}"\n'
        f'root-certificates = "{ca.cert}"\n'
    )
    cli_env = flwr_env(homes["cli"])
    cli_log = logs / "cli.log"
    run_dir = tmp_path / "run"
    reaper = Reaper()
    try:
        link_log = logs / "superlink.log"
        link = start(
            reaper,
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(ca.cert),
                "--ssl-certfile",
                str(server.cert),
                "--ssl-keyfile",
                str(server.key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--database",
                str(homes["link"] / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
            env=flwr_env(homes["link"]),
            log=link_log,
        )
        _wait_port(link_port, link, link_log)

        registered = {}
        for i, pair in enumerate(keys):
            reply = _flwr_json(
                ["supernode", "register", str(pair.public), "tls", "--name", f"device-{i}"], cli_env, cli_log
            )
            registered[str(reply["node-id"])] = f"device-{i}"
        impostor_id = next(n for n, name in registered.items() if name == f"device-{NUM_DEVICES}")

        def supernode(name: str, key: Path, device: Path, port: int, *extra: str):
            return start(
                reaper,
                [
                    str(BIN / "flower-supernode"),
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--root-certificates",
                    str(ca.cert),
                    "--auth-supernode-private-key",
                    str(key),
                    "--port",
                    str(port),
                    "--node-config",
                    f'device-dir="{device}"',
                    *extra,
                ],
                env=flwr_env(homes[name]),
                log=logs / f"{name}.log",
            )

        nodes = [supernode(f"sn{i}", keys[i].private, devices[i], node_ports[i]) for i in range(NUM_DEVICES)]
        rogue = supernode(
            "rogue",
            rogue_key.private,
            rogue_dir,
            node_ports[-2],
            "--max-retries",
            "2",
            "--max-wait-time",
            "20",
        )

        # The unregistered SuperNode is refused: it gives up with a non-zero exit code.
        rogue_rc = wait(reaper, rogue, 90)
        rogue_log = tail(logs / "rogue.log")
        assert rogue_rc is not None and rogue_rc != 0, f"rogue SuperNode still running / exit 0:\n{rogue_log}"
        assert "Failed to activate SuperNode" in rogue_log, rogue_log

        def wait_online(expected: set[str]) -> list[dict]:
            deadline = time.monotonic() + 90
            while True:
                listed = _flwr_json(["supernode", "ls", "tls"], cli_env, cli_log)["nodes"]
                online = {str(n["node-id"]) for n in listed if n["status"] == "online"}
                if online == expected or time.monotonic() > deadline:
                    break
                assert all(n.poll() is None for n in nodes), tail(logs / "sn0.log")
                time.sleep(2)
            assert online == expected, f"online {online}, expected {expected}:\n{tail(cli_log)}"
            return listed

        legit = set(registered) - {impostor_id}
        listed = wait_online(legit)
        assert {str(n["node-id"]) for n in listed} == set(registered)  # the rogue never became a node
        setup_s = time.monotonic() - t0

        def flwr_run(rounds: int, log_name: str) -> tuple[dict, str]:
            # docs/deployment.md 2.5's command as typed, but for the run dir, the tiny backbone
            # and the rounds ("a finished run continues with more rounds: -c '... federation.rounds=3'")
            overrides = DOCS_OVERRIDES.replace('"/srv/fedrlhf/runs/deploy"', f'"{run_dir}"')
            overrides = overrides.replace(f"federation.rounds={ROUNDS}", f"federation.rounds={rounds}")
            overrides += f' model.backbone="{tiny_bert}" federation.timeout=240'
            run_log = logs / log_name
            run = start(
                reaper,
                [FLWR, "run", ".", "tls", "--stream", "-c", overrides],
                env=cli_env,
                log=run_log,
                cwd=REPO,
            )
            rc = wait(reaper, run, 420)
            context = (
                f"flwr run:\n{tail(run_log)}\nsuperlink:\n{tail(link_log, 30)}\n"
                f"sn0:\n{tail(logs / 'sn0.log', 30)}"
            )
            assert rc == 0, f"flwr run exited with {rc}\n{context}"
            return json.loads((run_dir / "report.json").read_text()), context

        report, context = flwr_run(ROUNDS, "flwr_run.log")
        run_s = time.monotonic() - t0 - setup_s
        rounds = report["rounds"]
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)), context
        names = sorted(d.name for d in devices)
        for r in rounds:
            assert r["clients_sampled"] == NUM_DEVICES and r["clients_ok"] == NUM_DEVICES, rounds
            assert r["failures"] == {"error": 0}, rounds
            assert r["asked"] == r["answered"] == names and r["failed"] == {}, rounds
            # DP was on (turned on by -c): every device reports its own ledger's epsilon
            assert sorted(r["epsilon_by_device"]) == names and 0 < max(r["epsilon_by_device"].values()) <= 8.0
        assert report["final"]["epsilon"] == max(rounds[-1]["epsilon_by_device"].values())
        for d in devices:  # the device's own ledger holds what the report says it spent
            ledger = json.loads((d / "privacy_ledger.json").read_text())
            assert ledger["entries"] and all(e["noise_multiplier"] > 0 for e in ledger["entries"]), ledger
        assert not (run_dir / "clients").exists()  # prepare-cohort=false: the server wrote no client data
        check_model(run_dir / "model", tiny_bert)
        assert sorted(p.name for p in (run_dir / "models").iterdir()) == [f"round-{r:03d}" for r in (1, 2)]
        # Every registered device trained (its token cache appeared); the rogue's data was never touched.
        assert all((d / "cache").is_dir() for d in devices)
        assert sorted(p.name for p in rogue_dir.iterdir()) == ["test.jsonl", "train.jsonl"]
        checkpoint_devices = json.loads((run_dir / "checkpoint" / "state.json").read_text())["devices"]
        assert [d["device"] for d in checkpoint_devices] == names
        assert all(d["key"].startswith("SHA256:") for d in checkpoint_devices)  # bound to registered keys

        # The impostor: registered, online, its data directory named like device 1's.
        supernode("impostor", keys[NUM_DEVICES].private, impostor_dir, node_ports[-1])
        wait_online(set(registered))
        report, context = flwr_run(ROUNDS + 1, "flwr_run_more.log")  # the finished run, one round more
        third = report["rounds"][-1]
        assert third["round"] == ROUNDS + 1 and third["answered"] == names, context
        refused = [(n, why) for e in third["identification"] for n, why in e["failed"].items()]
        bound = next(d["key"] for d in checkpoint_devices if d["device"] == devices[1].name)
        assert refused and {n for n, _ in refused} == {impostor_id}, (refused, context)
        assert all(f"device id '{devices[1].name}' is bound to key {bound}" in why for _, why in refused), (
            refused
        )
        assert f"node {impostor_id} takes no part" in (run_dir / "report.md").read_text()
        untouched = ["test.jsonl", "train.jsonl"]
        assert sorted(p.name for p in impostor_dir.iterdir()) == untouched  # never asked to train
        print(f"deployment: setup {setup_s:.1f} s, {ROUNDS} DP rounds x {NUM_DEVICES} devices {run_s:.1f} s")
    finally:
        leftovers = reaper.stop_all()
    assert not leftovers, f"processes survived SIGKILL: {leftovers}"
