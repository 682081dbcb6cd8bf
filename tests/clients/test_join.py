"""fedrlhf-client join and keygen: what a device is told when the SuperLink refuses it, and when
its records count as shared (issue 28.8).

The SuperNode outputs below are Flower 1.41's, verbatim (ANSI colours included), as
``flower-supernode`` printed them against a TLS SuperLink with ``--enable-supernode-auth``;
``test_join_real_superlink.py`` produces them live (slow).  Here a stand-in executable replays
them, so that join's relaying, signal handling and diagnosis run on exactly those bytes.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients import app
from clients.supernode import Connection, diagnose
from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.models import RewardModel, get_trainable_state
from fedrlhf.training.device import DeviceDir, RoundSpec, client_round
from tests.clients.test_cli import record_some, run

RED, GREEN, YELLOW, END = "\x1b[91m", "\x1b[92m", "\x1b[93m", "\x1b[0m"
START = [
    f"{GREEN}INFO {END}:      Starting Flower SuperNode",
    "INFO:     Uvicorn running on http://127.0.0.1:19194 (Press CTRL+C to quit)",
]


def flower_exit(detail: str, *before: str) -> list[str]:
    """What flower-supernode prints when it cannot initialise its connection (then exits 1)."""
    return [
        *START,
        *before,
        f"{RED}ERROR {END}:     Exit Code: 305",
        "Failed to initialize the connection to the SuperLink.",
        detail,
        "The SuperNode could not establish a connection to the SuperLink.",
        "",
        "For more information, visit: <https://flower.ai/docs/framework/1.41/en/ref-exit-codes/305.html>",
        f"{GREEN}INFO {END}:      Starting Flower SuperExec",  # its child, retrying the gone SuperNode
        f"{YELLOW}WARNING {END}:   Connection attempt failed, retrying in 0.12 seconds",
    ]


RETRY = f"{YELLOW}WARNING {END}:   Connection attempt failed, retrying in 0.91 seconds"
OUTPUTS = {
    "unregistered": flower_exit("[code: 2004] Failed to activate SuperNode."),
    "keyless": flower_exit(
        "[code: 2001] SuperNode authentication is enabled. All SuperNodes must be registered via the CLI."
    ),
    "wrong-ca": flower_exit(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature failure "
        "(_ssl.c:1006)",
        f"{RED}ERROR {END}:     SSL/TLS handshake error detected.",
    ),
    "refused": flower_exit("[Errno 111] Connection refused", RETRY, RETRY),
    "dns": flower_exit("[Errno -2] Name or service not known", RETRY),
    "insecure-to-tls": flower_exit("Server disconnected without sending a response.", RETRY),
}
CONN = Connection("127.0.0.1:9091", Path("pki/ca.crt"), None)


@pytest.mark.parametrize(
    ("case", "conn", "words"),
    [
        (
            "unregistered",
            CONN,
            ["refused pki/device-0", "[code: 2004]", "not registered", "pki/device-0.pub", "keygen --new"],
        ),
        ("keyless", CONN, ["sent none", "[code: 2001]", "keygen"]),
        ("wrong-ca", CONN, ["TLS with 127.0.0.1:9091 failed", "not signed by pki/ca.crt", "ca.crt"]),
        ("refused", CONN, ["nothing accepts connections at 127.0.0.1:9091", "running"]),
        ("dns", Connection("fl.example.org:9091"), ["host fl.example.org is not known"]),
        ("insecure-to-tls", Connection("127.0.0.1:9091", insecure=True), ["speaks TLS", "drop --insecure"]),
    ],
)
def test_each_refusal_says_what_is_wrong_and_what_to_do(case, conn, words) -> None:
    said = diagnose([f"{line}\n" for line in OUTPUTS[case]], 1, conn=conn, key=Path("pki/device-0"))
    assert "\n" not in said and "could not establish a connection" not in said
    for word in words:
        assert word in said, (word, said)


def test_an_unknown_failure_still_quotes_flower() -> None:
    said = diagnose([*START, f"{RED}ERROR {END}:     Exit Code: 302"], 1, conn=CONN)
    assert said == "flower-supernode stopped with status 1 (Flower: ERROR :     Exit Code: 302)"


FAKE = """#!{python}
import json, os, signal, sys, time
mode = os.environ["FAKE_SUPERNODE"]
with open(os.environ["FAKE_ARGV"], "w") as f:
    json.dump(sys.argv[1:], f)
lines = json.loads(os.environ["FAKE_LINES"])
for line in lines:
    print(line, file=sys.stderr, flush=True)
if mode == "fail":
    sys.exit(1)
if mode == "serve":
    def stop(signum, frame):
        open(os.environ["FAKE_ARGV"] + ".signal", "w").write(str(signum))
        print("INFO:     Shutting down", file=sys.stderr, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    time.sleep(60)
    sys.exit(3)
"""


@pytest.fixture()
def supernode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in flower-supernode that replays given Flower output; returns (path, set lines)."""
    exe = tmp_path / "flower-supernode"
    exe.write_text(FAKE.replace("{python}", sys.executable))
    exe.chmod(0o755)
    monkeypatch.setattr("clients.cli._supernode_executable", lambda: str(exe))
    monkeypatch.setenv("FAKE_ARGV", str(tmp_path / "argv.json"))

    def replay(lines: list[str], mode: str) -> None:
        monkeypatch.setenv("FAKE_LINES", json.dumps(lines))
        monkeypatch.setenv("FAKE_SUPERNODE", mode)

    return exe, replay


@pytest.fixture()
def ready(capsys, tmp_path: Path) -> Path:
    """A client with no privacy limit (its rounds may run without DP: fast) and four records."""
    device = tmp_path / "device"
    assert run(capsys, device, "init", "--lifetime-epsilon", "none")[0] == 0
    record_some(capsys, device)
    return device


def _pki(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return ca


def used(device: Path) -> dict[int, list[str]]:
    with app.ClientDevice.open(device).store() as store:
        return {i: store.rounds_used(i) for i in store.ids()}


def test_a_refused_key_is_one_line_saying_what_to_do_and_shares_nothing(
    capsys, ready, supernode, tmp_path
) -> None:
    _, replay = supernode
    replay(OUTPUTS["unregistered"], "fail")
    assert run(capsys, ready, "keygen")[0] == 0
    code, _, err = run(
        capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--root-certificates", str(_pki(tmp_path))
    )
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("fedrlhf-client join: error: the SuperLink at 127.0.0.1:9091 refused ")
    assert f"{ready}/supernode_key.pub" in last and "keygen --new" in last and "not registered" in last
    assert "Failed to activate SuperNode" in err  # Flower's own lines are relayed too
    assert "cannot reach" not in err  # the SuperExec's retries after the exit are not the Fleet's
    assert all(rounds == [] for rounds in used(ready).values())


def test_join_marks_nothing_until_a_round_trains_on_the_records(capsys, ready, supernode, tiny_bert) -> None:
    """Old code marked every exported record as shared before the SuperNode even started."""
    _, replay = supernode
    replay([*START, f"{GREEN}INFO {END}:      SuperNode ID: 42", "INFO:     Shutting down"], "ok")
    code, out, err = run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure")
    assert code == 0, err
    assert "fedrlhf-client join: connected to 127.0.0.1:9091 as node 42" in err
    assert "stopped; 0 federated rounds trained on your feedback" in err
    assert all(rounds == [] for rounds in used(ready).values())
    # A round trains on the export (as the ClientApp runs it): then, and only then, the records count.
    exported = json.loads((ready / "export.json").read_text())
    session = exported["session"]
    assert session.startswith("join:127.0.0.1:9091:")
    settings = json.loads((ready / "client.json").read_text())
    (ready / "client.json").write_text(json.dumps({**settings, "backbone": tiny_bert}))  # the federation's
    cfg = ModelConfig(backbone=tiny_bert, max_length=64)
    state = get_trainable_state(RewardModel.build(cfg, seed=0))
    spec = RoundSpec(round=2, seed=0, local_epochs=1, evaluate=False)
    client_round(
        DeviceDir(ready), state, spec, model_cfg=cfg, train_cfg=TrainConfig(), privacy=PrivacyConfig()
    )
    assert (ready / "shared.jsonl").stat().st_mode & 0o777 == 0o600
    marks = used(ready)  # opening the store moved the ClientApp's note into it
    assert {i: marks[i] for i in exported["train_ids"]} == {
        i: [f"{session} round-2"] for i in exported["train_ids"]
    }
    assert all(marks[i] == [] for i in exported["test_ids"])  # held out: evaluated, never trained on
    assert (ready / "shared.jsonl").read_text() == ""
    assert app.rounds_of(app.ClientDevice.open(ready), session) == 1


def test_a_hand_written_train_file_is_not_attributed_to_store_records(capsys, ready, tiny_bert) -> None:
    assert run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure", "--dry-run")[0] == 0
    train = ready / "train.jsonl"
    train.write_text(train.read_text().replace("Hello", "Hi"))  # no longer the export export.json describes
    records, ids = DeviceDir(ready).records("train")
    assert len(records) == 3 and ids == []


def test_ctrl_c_stops_the_supernode_through_join(ready, supernode, tmp_path) -> None:
    """The SuperNode gets the signal (and so can tell the SuperLink it leaves); join exits 0."""
    _, replay = supernode
    replay([*START, f"{GREEN}INFO {END}:      SuperNode ID: 7"], "serve")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = (
        "import sys, clients.cli as c; c._supernode_executable = lambda: sys.argv[1]; "
        "sys.exit(c.main(sys.argv[2:]))"
    )
    argv = [sys.executable, "-c", script, str(supernode[0]), "--device", str(ready), "join"]
    proc = subprocess.Popen(
        [*argv, "--superlink", "127.0.0.1:9091", "--insecure"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "argv.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "argv.json.signal").read_text() == str(int(signal.SIGINT))
    assert "connected to 127.0.0.1:9091 as node 7" in err and "Shutting down" in err
    assert json.loads((tmp_path / "argv.json").read_text())[-1] == f'device-dir="{ready}"'


def test_keygen_writes_a_private_pair_and_new_replaces_it(capsys, ready) -> None:
    code, out, _ = run(capsys, ready, "keygen")
    key = ready / "supernode_key"
    assert code == 0 and f"send {key}.pub" in out and "flwr supernode register supernode_key.pub" in out
    assert key.stat().st_mode & 0o777 == 0o600
    first = (ready / "supernode_key.pub").read_text()
    assert first.startswith("ecdsa-sha2-nistp384 ")
    code, _, err = run(capsys, ready, "keygen")
    assert code == 2 and "--new replaces it" in err and (ready / "supernode_key.pub").read_text() == first
    assert run(capsys, ready, "keygen", "--new")[0] == 0
    assert (ready / "supernode_key.pub").read_text() != first


def test_join_uses_the_devices_own_key_and_refuses_what_cannot_work(capsys, ready, tmp_path) -> None:
    ca = _pki(tmp_path)
    tls = ["join", "--superlink", "fl.example.org:9091", "--root-certificates", str(ca), "--dry-run"]
    code, _, err = run(capsys, ready, *tls)
    assert code == 2 and "needs a node key: run 'fedrlhf-client keygen'" in err
    assert run(capsys, ready, "keygen")[0] == 0
    code, out, _ = run(capsys, ready, *tls)
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert code == 0 and cmd[cmd.index("--auth-supernode-private-key") + 1] == str(ready / "supernode_key")
    other = tmp_path / "other_key"
    other.write_text("x")
    other.chmod(0o600)
    code, _, err = run(
        capsys, ready, "join", "--superlink", "h:1", "--insecure", "--auth-key", str(other), "--dry-run"
    )
    assert code == 2 and "--insecure turns TLS off, and with it node authentication" in err


def test_the_cli_entry_point_is_offline_of_flower() -> None:
    """Recording feedback and joining import no Flower (the SuperNode is a separate program)."""
    code = "import sys, clients.cli, clients.supernode; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_re_exports_keep_the_join_session_and_drop_forgotten_ids(capsys, ready) -> None:
    assert run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure", "--dry-run")[0] == 0
    session = json.loads((ready / "export.json").read_text())["session"]
    assert run(capsys, ready, "forget", "1")[0] == 0  # re-makes the export while a SuperNode may serve it
    made = json.loads((ready / "export.json").read_text())
    assert made["session"] == session and 1 not in made["train_ids"] + made["test_ids"]
    records, ids = DeviceDir(ready).records("train")
    assert ids == made["train_ids"] and len(records) == len(ids)


def test_join_stops_what_the_supernode_left_running(tmp_path: Path) -> None:
    """Issue 28.7: Flower's idle ``flwr-clientapp`` children outlived their SuperNode by ~15 min.
    Here a stand-in SuperNode starts a child that ignores SIGTERM and exits; serve() leaves none."""
    psutil = pytest.importorskip("psutil")
    from clients.supernode import serve

    pid_file = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    (tmp_path / "node.py").write_text(
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n"
    )
    serve(
        [sys.executable, str(tmp_path / "node.py"), str(tmp_path / "child.py"), str(pid_file)],
        dict(os.environ),
        conn=Connection(superlink="127.0.0.1:9091", insecure=True),
        key=None,
        out=io.StringIO(),
    )
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the SuperNode's child outlived join"
        time.sleep(0.1)
