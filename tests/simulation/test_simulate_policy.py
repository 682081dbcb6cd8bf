"""`fedrlhf simulate` with ``federation.task = "dpo"`` in Flower's simulation engine (slow: Ray start-up).

The policy is a tiny causal LM built from a config; the in-process round loop is tested
without Ray in tests/federation/test_policy_federation.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrlhf.models.policy import PolicyModel
from fedrlhf.training.dpo import policy_state
from tests.simulation.test_simulate import _finish, _simulate

pytestmark = pytest.mark.slow

POLICY = """
[policy]
model = "{model}"
lora_r = 2
max_length = 48
beta = 0.5
[train]
batch_size = 4
lr = 0.02
"""

CONFIG = (
    POLICY
    + """[privacy]
enabled = true
noise_multiplier = 1.0
[federation]
task = "dpo"
rounds = 2
clients_per_round = 3
seed = 2
[cohort]
kind = "synthetic"
num_clients = 3
pairs_per_user = 6
test_pairs_per_user = 3
"""
)


def test_simulate_runs_federated_dpo_and_reports_it(tmp_path: Path) -> None:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    model = save_tiny_causal_lm(tmp_path / "tiny-llama")
    config = tmp_path / "dpo.toml"
    config.write_text(CONFIG.format(model=model))
    out = tmp_path / "run"
    _finish(_simulate(config, out))
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "dpo" and report["config"]["policy"]["model"] == str(model)
    assert report["initial"]["global_accuracy"] == 0.5
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        assert row["clients_ok"] == 3 and 0 <= row["global_accuracy"] <= 1 and row["epsilon"] > 0
    saved = load_file(str(out / "checkpoint" / "global.safetensors"))
    assert all("lora_" in name for name in saved)
    loaded = policy_state(PolicyModel.from_pretrained(out / "model"))
    assert all(np.array_equal(loaded[n], saved[n]) for n in saved)
    assert len(list((out / "clients").glob("user-*/privacy_ledger.json"))) == 3


SECURE_CONFIG = (
    POLICY
    + """[federation]
task = "{task}"
rounds = 2
clients_per_round = 4
seed = 3
[secagg]
enabled = true
min_group_size = 4
clip_norm = 1.0
dp_noise_multiplier = 0.5
[robust]
rule = "mean"
[cohort]
kind = "synthetic"
num_clients = 4
pairs_per_user = 6
test_pairs_per_user = 3
"""
)


@pytest.mark.parametrize("task", ["dpo", "kto"])
def test_secure_rounds_train_the_policy_and_the_server_sees_one_group_mean(task: str, tmp_path: Path) -> None:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    model = save_tiny_causal_lm(tmp_path / "tiny-llama")
    config = tmp_path / f"secure-{task}.toml"
    config.write_text(SECURE_CONFIG.format(model=model, task=task))
    out = tmp_path / "run"
    _finish(_simulate(config, out))
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == task and [r["round"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:  # one group of 4: the server learned its mean, not 4 updates
        assert row["clients_ok"] == 4 and row["answered"] == [f"user-{i:05d}" for i in range(4)]
        assert row["timing"]["client_compute"] is None and row["bytes_up"] > 0
    assert report["final"]["epsilon"] > 0 and report["final"]["epsilon_kind"] == "user"
    saved = load_file(str(out / "checkpoint" / "global.safetensors"))
    assert all("lora_" in name for name in saved)
    lora_b = [saved[n] for n in saved if "lora_B" in n]  # 0 before round 1 (peft's init): it trained
    assert lora_b and any(np.abs(b).max() > 0 for b in lora_b)


RECORD_DP_CONFIG = (
    POLICY.replace("beta = 0.5\n", "beta = 0.5\nlora_layers = 1\n")
    + """[privacy]
enabled = true
target_epsilon = 4.0
max_grad_norm = 0.1
[federation]
task = "{task}"
rounds = 2
clients_per_round = 4
seed = 3
server_optimizer = "fedadam"
server_lr = 0.05
[secagg]
enabled = true
record_dp = true
min_group_size = 4
clip_norm = 1.0
clipping_range = 4.0
[robust]
rule = "mean"
[cohort]
kind = "synthetic"
num_clients = 4
pairs_per_user = 6
test_pairs_per_user = 3
"""
)


def test_record_level_distributed_dp_trains_the_top_blocks_lora_one_recorded_step_a_round(
    tmp_path: Path,
) -> None:
    from fedrlhf.config import PrivacyConfig
    from fedrlhf.models.tiny import save_tiny_causal_lm
    from fedrlhf.privacy.distributed import record_noise_multiplier
    from fedrlhf.privacy.ledger import compose_epsilon

    model = save_tiny_causal_lm(tmp_path / "tiny-llama")
    config = tmp_path / "record-dp.toml"
    config.write_text(RECORD_DP_CONFIG.format(model=model, task="dpo"))
    out = tmp_path / "run"
    _finish(_simulate(config, out))
    report = json.loads((out / "report.json").read_text())
    sigma = record_noise_multiplier(PrivacyConfig(enabled=True, target_epsilon=4.0), 2)
    assert report["final"]["epsilon_kind"] == "record"
    assert "record-level distributed differential privacy (DP-FedSGD" in (out / "report.md").read_text()
    assert report["final"]["epsilon"] == pytest.approx(
        compose_epsilon([(sigma, 1.0, 2)], accountant="rdp", delta=1e-5)
    )
    for row in report["rounds"]:
        assert row["clients_ok"] == 4 and row["refused"] is None
    for ledger in sorted((out / "clients").glob("*/privacy_ledger.json")):
        entries = json.loads(ledger.read_text())["entries"]
        assert [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries] == [
            (sigma, 1.0, 1)
        ] * 2
    saved = load_file(str(out / "checkpoint" / "global.safetensors"))
    top = str(PolicyModel.from_pretrained(model).model.config.num_hidden_layers - 1)
    assert saved and all(f".layers.{top}." in name and "lora_" in name for name in saved)
    lora_b = [saved[n] for n in saved if "lora_B" in n]
    assert lora_b and any(np.abs(b).max() > 0 for b in lora_b)
