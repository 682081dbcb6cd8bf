"""``fedrlhf simulate`` with ``[warm_start]`` end to end in Flower's simulation engine (slow: Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel
from tests.helpers import synthetic_pairs

pytestmark = pytest.mark.slow

CONFIG = """
[model]
backbone = "{backbone}"
max_length = 32
lora_r = 2
[train]
batch_size = 8
lr = 0.01
[federation]
rounds = 1
clients_per_round = 3
seed = 1
[cohort]
kind = "synthetic"
num_clients = 3
pairs_per_user = 8
test_pairs_per_user = 4
[warm_start]
data = "{public}"
epochs = 2.0
batch_size = 8
lr = 0.01
holdout = 0.25
"""


def _simulate(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fedrlhf.cli", "simulate", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([*cmd, "--quiet", *extra], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_simulate_warm_starts_once_and_reports_it(tiny_bert: str, tmp_path: Path) -> None:
    public = tmp_path / "public.jsonl"
    write_jsonl(public, synthetic_pairs(40, seed=5))
    config = tmp_path / "warm.toml"
    config.write_text(CONFIG.format(backbone=tiny_bert, public=public))
    out = tmp_path / "run"
    first = _simulate(config, out)
    lines = [line for line in first.stderr.splitlines() if "warm start" in line]
    assert len(lines) == 2 and all(line.startswith("fedrlhf server: warm start") for line in lines)
    assert "non-private" in lines[0] and "30 pairs" in lines[0] and "on 10 held-out pairs" in lines[1]
    report = json.loads((out / "report.json").read_text())
    warm = report["warm_start"]
    assert (warm["pairs"], warm["held_out_pairs"], warm["data"]) == (30, 10, [str(public)])
    assert warm["privacy"] == "non-private: trained by the server on public data"
    assert 0 <= warm["accuracy"] <= 1 and 0 <= report["initial"]["global_accuracy"] <= 1
    assert report["config"]["warm_start"]["data"] == [str(public)]
    assert (
        "without differential privacy: public data, trained by the server" in (out / "report.md").read_text()
    )
    RewardModel.from_pretrained(out / "warm_start")

    public.unlink()  # a warm start trained again would fail: the resumed run must not train it
    second = _simulate(config, out, "--set", "federation.rounds=2")
    assert "warm start" not in second.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2] and report["warm_start"] == warm
