"""``flwr run . local`` from the repository root: Flower's simulation engine runs fedrlhf's app.

The ``flwr`` CLI starts a detached ``flower-superlink`` (it outlives ``flwr run``),
which starts ``flower-superexec`` -> ``flwr-simulation`` -> Ray.  Every process the
test causes is found through the sessions of the processes it started (each is
started in a new session, and Flower's children either stay in it or start their
own, which :class:`Reaper` records while the run is going), and is stopped by PID
in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FLWR = str(BIN / "flwr")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def flwr_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """Environment of a Flower process: offline, no telemetry, its own FLWR_HOME."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "PYTHONWARNINGS": "ignore",
            "FLWR_HOME": str(flwr_home),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env


class Reaper:
    """Remembers the processes a test started (and their descendants' sessions) and stops them all."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.procs: dict[int, float] = {}  # pid -> create_time (guards against PID reuse)
        self.sessions: set[int] = set()
        self._own_session = os.getsid(0)

    def track(self, pid: int) -> None:
        try:
            self.procs[pid] = self._psutil.Process(pid).create_time()
        except self._psutil.NoSuchProcess:
            return
        self.snapshot()

    def track_matching(self, needle: str) -> list[int]:
        """Track processes whose command line contains ``needle`` (e.g. this test's FLWR_HOME)."""
        found = []
        for p in self._psutil.process_iter(["pid", "cmdline"]):
            if p.info["pid"] != os.getpid() and needle in " ".join(p.info["cmdline"] or ()):
                self.track(p.info["pid"])
                found.append(p.info["pid"])
        return found

    def snapshot(self) -> None:
        """Record the sessions of tracked processes and of all their descendants."""
        for pid, created in list(self.procs.items()):
            try:
                proc = self._psutil.Process(pid)
                if proc.create_time() != created:
                    continue
                for p in [proc, *proc.children(recursive=True)]:
                    self.procs.setdefault(p.pid, p.create_time())
                    sid = os.getsid(p.pid)
                    if sid != self._own_session:
                        self.sessions.add(sid)
            except (self._psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                continue

    def _alive(self) -> list:
        victims = {}
        for pid, created in self.procs.items():
            try:
                p = self._psutil.Process(pid)
                if p.create_time() == created and p.status() != self._psutil.STATUS_ZOMBIE:
                    victims[pid] = p
            except self._psutil.NoSuchProcess:
                pass
        for p in self._psutil.process_iter(["pid"]):
            try:
                if (
                    p.pid != os.getpid()
                    and os.getsid(p.pid) in self.sessions
                    and p.status() != self._psutil.STATUS_ZOMBIE
                ):
                    victims.setdefault(p.pid, p)
            except (self._psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                pass
        return list(victims.values())

    def stop_all(self, grace: float = 10.0) -> list[str]:
        """SIGTERM every remembered process, SIGKILL what is left after ``grace`` s; returns leftovers."""
        self.snapshot()
        victims = self._alive()
        for p in victims:
            try:
                p.send_signal(signal.SIGTERM)
            except self._psutil.NoSuchProcess:
                pass
        _, alive = self._psutil.wait_procs(victims, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except self._psutil.NoSuchProcess:
                pass
        self._psutil.wait_procs(alive, timeout=5)
        return [" ".join(p.cmdline())[:120] for p in self._alive() if _exists(p)]


def _exists(p) -> bool:
    try:
        return p.is_running() and p.status() != "zombie"
    except Exception:  # noqa: BLE001 - gone
        return False


def start(
    reaper: Reaper, cmd: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in a new session, output to ``log``; the reaper remembers it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    reaper.track(proc.pid)
    return proc


def wait(reaper: Reaper, proc: subprocess.Popen, timeout: float, *, also: str | None = None) -> int | None:
    """Wait for ``proc``, recording the sessions its descendants create; None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if also:
            reaper.track_matching(also)
        reaper.snapshot()
        try:
            return proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            continue
    return None


def tail(path: Path, n: int = 60) -> str:
    if not path.is_file():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def check_model(path: Path, backbone: str) -> None:
    """The global model directory loads and scores a pair."""
    import torch

    from fedrlhf.models import RewardModel

    model = RewardModel.from_pretrained(path)
    assert model.config.backbone == backbone
    batch = model.tokenizer(
        ["Human: hi\n\nAssistant: Sure, happy to help.", "Human: hi\n\nAssistant: No."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        scores = model(batch["input_ids"], batch["attention_mask"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


LOCAL_FEDERATION = """\
[superlink]
default = "local"

[superlink.local]
address = ":local:"

[superlink.local.options]
num-supernodes = {num_clients}

[superlink.local.options.backend.client-resources]
num-cpus = 1
num-gpus = 0.0

[superlink.local.options.backend.init-args]
num-cpus = 2
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flwr_run_local(tmp_path: Path, tiny_bert: str) -> None:
    pytest.importorskip("psutil")
    num_clients, rounds = 4, 2
    flwr_home = tmp_path / "flwr_home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(LOCAL_FEDERATION.format(num_clients=num_clients))
    run_dir = tmp_path / "run"
    http_port, control_port = free_ports(2)
    # The managed SuperLink listens on fixed ports unless told otherwise; another
    # `flwr run . local` on this machine would otherwise be reused (with its FLWR_HOME).
    env = flwr_env(
        flwr_home,
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
        FEDRLHF_CLIENT_THREADS="1",
    )
    overrides = (
        f'run-dir="{run_dir}" model.backbone="{tiny_bert}" cohort.num_clients={num_clients} '
        f"federation.clients_per_round={num_clients} federation.rounds={rounds} "
        "cohort.pairs_per_user=16 cohort.test_pairs_per_user=8"
    )
    log = tmp_path / "flwr_run.log"
    reaper = Reaper()
    start_time = time.monotonic()
    try:
        proc = start(
            reaper, [FLWR, "run", ".", "local", "--stream", "-c", overrides], env=env, log=log, cwd=REPO
        )
        rc = wait(reaper, proc, 480, also=str(flwr_home))
        seconds = time.monotonic() - start_time
        superlink_log = flwr_home / "local-superlink" / "superlink.log"
        context = f"flwr run log:\n{tail(log)}\nsuperlink log:\n{tail(superlink_log)}"
        assert rc == 0, f"flwr run exited with {rc} after {seconds:.0f} s\n{context}"
        report_file = run_dir / "report.json"
        assert report_file.is_file(), context
        report = json.loads(report_file.read_text())
        assert [r["round"] for r in report["rounds"]] == list(range(1, rounds + 1)), context
        assert all(r["clients_ok"] == num_clients for r in report["rounds"]), report["rounds"]
        assert sorted(p.name for p in (run_dir / "clients").iterdir()) == [f"user-{i:05d}" for i in range(4)]
        check_model(run_dir / "model", tiny_bert)
        print(f"flwr run . local: {rounds} rounds x {num_clients} clients in {seconds:.1f} s")
    finally:
        reaper.track_matching(str(flwr_home))  # the detached SuperLink, even if flwr run was killed
        leftovers = reaper.stop_all()
    assert not leftovers, f"processes survived SIGKILL: {leftovers}"
