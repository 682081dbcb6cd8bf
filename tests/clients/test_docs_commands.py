"""Every ``fedrlhf-client`` command in clients/README.md and docs/deployment.md, run as typed.

Each ``bash`` code block line that starts with ``fedrlhf-client`` runs through ``bash -c`` in a
fresh directory (with the files the docs say the user has: ``ca.pem``, ``pki/ca.crt``), in the
order the document shows them, against one default device (``$FEDRLHF_HOME``).  ``join`` and
``web`` serve until stopped: each runs until it says it is serving (or, with no SuperLink at the
documented address, that it cannot reach it yet, or why the SuperLink refused it), then gets
Ctrl-C, as a user would stop it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVING = {  # a long-running command: what it prints once it is serving (or the SuperLink refused it)
    "join": r"fedrlhf-client join: (connected to|cannot reach|error: .*{superlink})",
    "web": r"http://127\.0\.0\.1:\d+/",
}


def documented(doc: Path) -> list[str]:
    """The ``fedrlhf-client`` lines of ``doc``'s bash code blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.DOTALL)
    return [
        line.strip() for block in blocks for line in block.splitlines() if line.startswith("fedrlhf-client")
    ]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEDRLHF_DEVICE", "FLWR_HOME")}
    return {**env, "FEDRLHF_HOME": str(home), "FLWR_HOME": str(home / "flwr"), "PATH": f"{BIN}:{env['PATH']}"}


def _serve_then_stop(line: str, cwd: Path, env: dict[str, str], ready: re.Pattern[str]) -> tuple[int, str]:
    log = cwd / "serving.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Ctrl-C as in a terminal, even when the tests run as a background job (which ignores it)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 90
        while not ready.search(log.read_text(errors="replace")) and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        if "error: " not in log.read_text(errors="replace") and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # serving: stop it as a user would (a refused join exits itself)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, log.read_text(errors="replace")


def _run_all(doc: Path, cwd: Path, *, last: str = "") -> list[str]:
    """Run ``doc``'s commands in order (lines containing ``last``, e.g. a revocation's, after the rest)."""
    env = _env(cwd / "home")
    ran = []
    for line in sorted(documented(doc), key=lambda line: bool(last) and last in line):
        command = line.split()[1]
        if command == "web" and not _free(8765):
            pytest.skip("port 8765 (the documented web port) is in use on this machine")
        if command in SERVING:
            argv = line.split()
            superlink = re.escape(argv[argv.index("--superlink") + 1]) if "--superlink" in argv else ""
            ready = re.compile(SERVING[command].format(superlink=superlink))
            code, said = _serve_then_stop(line, cwd, env, ready)
            assert ready.search(said), f"{line}\n{said}"
            refused = "fedrlhf-client join: error: " in said  # a SuperLink of someone else's answered
            assert code == (2 if refused else 0), f"{line}: exit {code}\n{said}"
        else:
            out = subprocess.run(
                ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
            )
            said = out.stdout + out.stderr
            assert out.returncode == 0, f"{line}: exit {out.returncode}\n{said}"
        assert "Traceback" not in said, f"{line}\n{said}"
        ran.append(command)
    return ran


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ca(cwd: Path) -> Path:
    from fedrlhf.federation.certs import generate_ca

    return generate_ca(cwd / "pki").cert


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_clients_readme_commands_run_as_typed(tmp_path: Path, tiny_bert: str) -> None:
    from fedrlhf.config import ModelConfig
    from fedrlhf.models import RewardModel

    shutil.copy(_ca(tmp_path), tmp_path / "ca.pem")
    model = RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32, trainable="head"), seed=0)
    model.save_pretrained(tmp_path / "reward-model")  # the global model the README's ranking uses
    ran = _run_all(REPO / "clients" / "README.md", tmp_path)
    every = {"init", "record", "list", "export", "forget", "budget", "train-personal", "keygen", "join"}
    assert every | {"queue", "web"} <= set(ran)
    assert (tmp_path / "mine.jsonl").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deployment_client_commands_run_as_typed(tmp_path: Path) -> None:
    _ca(tmp_path)
    ran = _run_all(REPO / "docs" / "deployment.md", tmp_path, last="keygen --new")  # 2.3's, for a device
    assert ran == ["init", "record", "keygen", "join", "keygen"], ran
