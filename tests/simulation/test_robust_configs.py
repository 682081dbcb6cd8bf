"""simulations/robust-plain.toml and robust-secure.toml: the recommended defence per mode.

They load through the project's loader with the defence they document, refuse what the
benchmarks say they cannot do, and run (one round, a tiny backbone, a small cohort) under the
attack their comments suggest trying.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedrlhf.config import load_run_config
from fedrlhf.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SIMS = REPO / "simulations"
CONFIGS = {"plain": SIMS / "robust-plain.toml", "secure": SIMS / "robust-secure.toml"}


def test_plain_config_is_the_gated_cosine_filter_with_memory_and_dissent_over_clipped_updates() -> None:
    cfg = load_run_config(CONFIGS["plain"])
    r = cfg.robust
    got = (r.rule, r.pre_aggregation, r.num_malicious, r.client_clip_norm, r.outlier_z)
    assert got == ("cosine_filter", "none", 3, 6.0, 2.0)
    assert r.remember_drops and r.drop_dissenters and r.remember_after == 2
    assert not cfg.secagg.enabled and cfg.attack.name == "none"
    assert cfg.federation.clients_per_round == cfg.cohort.num_clients == 15  # f = 3 is 20 %
    load_run_config(CONFIGS["plain"], ["robust.num_malicious=5"])  # 33 %: still n > 2f


def test_secure_config_is_the_cosine_filter_over_seven_group_means() -> None:
    cfg = load_run_config(CONFIGS["secure"])
    r, s = cfg.robust, cfg.secagg
    assert (r.rule, r.pre_aggregation, r.num_malicious, r.outlier_z) == ("cosine_filter", "none", 3, 0.0)
    assert s.enabled and s.clip_norm == 6.0 and s.groups_for(cfg.federation.clients_per_round) == 7


def test_secure_config_refuses_a_third_of_attackers_and_says_why() -> None:
    """f = 5 needs 11 group means; 15 clients in groups of 2 give at most 7 (as its comment says)."""
    with pytest.raises(ConfigError, match="num_malicious = 5") as err:
        load_run_config(CONFIGS["secure"], ["robust.num_malicious=5"])
    assert "11" in str(err.value)


def documented_attack(path: Path) -> list[str]:
    """The ``--set attack...`` overrides a config's comment suggests, as argv."""
    found = re.search(r"^#\s+(--set attack\.name=.*)$", path.read_text(), flags=re.MULTILINE)
    assert found, f"{path.name} suggests no attack to try"
    return shlex.split(found.group(1))


def run_one_round(config: Path, out: Path, backbone: str) -> dict:
    small = ["model.backbone=" + json.dumps(backbone), "federation.rounds=1"]
    small += ["cohort.pairs_per_user=4", "cohort.test_pairs_per_user=2", "model.max_length=32"]
    cmd = [sys.executable, "-m", "fedrlhf.cli", "simulate", "--config", str(config), "--out", str(out)]
    cmd += ["--quiet", *documented_attack(config), *(a for s in small for a in ("--set", s))]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's workers share the session
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "secure"])
def test_config_runs_a_round_under_its_suggested_attack(mode: str, tiny_bert: str, tmp_path: Path) -> None:
    report = run_one_round(CONFIGS[mode], tmp_path / mode, tiny_bert)
    robust = report["config"]["robust"]
    assert (robust["rule"], robust["pre_aggregation"]) == ("cosine_filter", "none")
    assert report["config"]["secagg"]["enabled"] is (mode == "secure")
    assert report["config"]["attack"]["name"] == ("alie_opt" if mode == "plain" else "ipm_opt")
    assert len(report["cohort"]["attackers"]) == 3  # 20 % of 15
    (row,) = report["rounds"]
    assert row["clients_sampled"] == 15 and row["global_accuracy"] is not None
    assert len(report["final"]["attackers_dropped_per_round"]) == 1
