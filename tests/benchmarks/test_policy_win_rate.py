"""benchmarks/policy_win_rate.py at smoke size, on a tiny causal LM: the true-utility win rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.helpers import BENCHMARKS

CONFIG = """
[policy]
model = "{model}"
lora_r = 2
max_length = 48
[train]
batch_size = 4
lr = 0.05
[federation]
task = "dpo"
[cohort]
kind = "synthetic"
num_clients = 2
pairs_per_user = 4
test_pairs_per_user = 2
"""


def _run(*args: str) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "policy_win_rate.py"),
            *args,
            "--prompts",
            "6",
            "--max-new-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=BENCHMARKS.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_central_dpo_then_the_saved_policy_are_scored_by_true_utility(tmp_path: Path) -> None:
    from fedrlhf.models.tiny import save_tiny_causal_lm
    from fedrlhf.simulation.cohorts import FEATURES

    config = tmp_path / "dpo.toml"
    config.write_text(CONFIG.format(model=save_tiny_causal_lm(tmp_path / "tiny-llama")))
    saved = tmp_path / "central"
    central = _run("--config", str(config), "--central-epochs", "1", "--save", str(saved))
    assert central["items"] == 6 and central["pooled_pairs"] == 8
    assert 0 <= central["win_rate"] <= 1 and central["win_rate_se"] >= 0
    gain = central["utility_challenger"] - central["utility_base"]
    assert abs(central["utility_gain"] - gain) < 2e-4
    assert set(central["attribute_share"]) == {*FEATURES, "incoherent"}
    tuned = _run("--config", str(config), "--tuned", str(saved))
    # the same saved policy, the same seed: the same answers as right after training
    assert tuned["utility_challenger"] == central["utility_challenger"]
    assert tuned["examples"] == central["examples"]
    assert 0 <= tuned["implicit_accuracy"] == central["implicit_accuracy"] <= 1
