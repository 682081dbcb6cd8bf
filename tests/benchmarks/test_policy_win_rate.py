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


def test_a_policy_answers_run_scores_implicit_accuracy_on_its_own_pairs(tmp_path: Path) -> None:
    """``cohort.responses = "policy"``: the held-out pairs are the run's, over its pooled answers."""
    from fedrlhf.config import load_run_config
    from fedrlhf.models.policy import PolicyConfig, PolicyModel
    from fedrlhf.models.tiny import save_tiny_causal_lm
    from fedrlhf.simulation.policy_pairs import POOL_FILE, bank_prompts
    from fedrlhf.simulation.run import policy_pool_key, policy_users

    config = tmp_path / "dpo.toml"
    model = save_tiny_causal_lm(tmp_path / "tiny-llama")
    config.write_text(CONFIG.format(model=model) + 'responses = "policy"\npolicy_samples = 3\n')
    cfg = load_run_config(config)
    answers = ["Sure. Here it is.", "Thank you for asking, glad to help. Here it is.", "Maybe try this."]
    pool = {
        "key": policy_pool_key(cfg),
        "samples": 3,
        "seed": 0,
        "answers": dict.fromkeys(bank_prompts(), answers),
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / POOL_FILE).write_text(json.dumps(pool))  # as `fedrlhf simulate` left it
    PolicyModel.build(PolicyConfig(base=str(model), lora_r=2, max_length=48)).save_pretrained(run / "model")
    tuned = _run("--config", str(config), "--tuned", str(run / "model"))
    held_out = [p for u in policy_users(cfg, run / POOL_FILE) for p in u.test]
    assert len(held_out) >= 1 and all(p.chosen in answers for p in held_out)
    # a fresh LoRA (B = 0) is its reference: every implicit margin is 0, a tie each
    assert tuned["implicit_accuracy"] == 0.5
