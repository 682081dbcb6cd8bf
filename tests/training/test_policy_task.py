"""A device's DPO / KTO round (``policy_round``) and the policy evaluation, on a tiny causal LM.

The device is a real directory (train.jsonl, test.jsonl, ledger, client.json); the round is the
one the ClientApp runs for ``federation.task = "dpo" | "kto"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrlhf.config import PolicySettings, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError, DataError, PrivacyBudgetExceeded, PrivacyPolicyError
from fedrlhf.feedback import Rating, write_jsonl
from fedrlhf.models.losses import kto
from fedrlhf.privacy.ledger import PrivacyLedger
from fedrlhf.training.device import DeviceDir, RoundSpec
from fedrlhf.training.dpo import PAIR_AS_RATINGS, implicit_margins, policy_state, slot_logps, unit_losses
from fedrlhf.training.policy_task import (
    encode_with_reference,
    initial_policy_state,
    policy_evaluate,
    policy_round,
    worker_policy,
)
from tests.helpers import synthetic_pairs

pytestmark = pytest.mark.filterwarnings(
    "ignore:DP-SGD runs with secure_mode=False",
    "ignore:.*Secure RNG turned off.*",
    "ignore:Full backward hook is firing",
    "ignore:Optimal order is the (largest|smallest) alpha",
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama"))


def _settings(tiny_lm: str, **kw: Any) -> PolicySettings:
    return PolicySettings(**{"model": tiny_lm, "lora_r": 2, "max_length": 48, "beta": 0.5, **kw})


def _device(root: Path, records: list | None = None) -> DeviceDir:
    write_jsonl(root / "train.jsonl", records if records is not None else synthetic_pairs(8, seed=1))
    write_jsonl(root / "test.jsonl", synthetic_pairs(4, seed=2))
    return DeviceDir(root)


def _round(device: DeviceDir, settings: PolicySettings, task: str = "dpo", **privacy: Any) -> tuple:
    global_state = initial_policy_state(settings, seed=0)
    delta, metrics = policy_round(
        device,
        global_state,
        RoundSpec(round=1, seed=3, local_epochs=2.0, rounds=2),
        task=task,
        settings=settings,
        train_cfg=TrainConfig(batch_size=4, lr=0.02),
        privacy=PrivacyConfig(**privacy),
    )
    return global_state, delta, metrics


def test_the_update_is_the_lora_delta_only_and_the_base_never_moves(tiny_lm: str, tmp_path: Path) -> None:
    settings = _settings(tiny_lm)
    policy = worker_policy(settings)
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    global_state, delta, metrics = _round(_device(tmp_path), settings)
    assert set(delta) == set(global_state) and all("lora_" in n for n in delta)
    assert all(delta[n].shape == global_state[n].shape and delta[n].dtype == np.float32 for n in delta)
    assert any(np.abs(d).max() > 0 for d in delta.values()), "nothing trained"
    assert all(torch.equal(p, dict(policy.named_parameters())[n]) for n, p in base.items())
    assert metrics["global_accuracy"] == 0.5  # the fresh policy is its reference: every margin 0
    assert metrics["num-examples"] == 8 and metrics["steps"] == 4 and "epsilon" not in metrics


def test_dp_spends_the_devices_ledger(tiny_lm: str, tmp_path: Path) -> None:
    device = _device(tmp_path)
    _, _, metrics = _round(device, _settings(tiny_lm), enabled=True, target_epsilon=4.0)
    entries = json.loads(device.ledger.read_text())["entries"]
    assert [e["label"] for e in entries] == ["round-1"] and entries[0]["noise_multiplier"] > 0
    ledger = PrivacyLedger(device.ledger, accountant="rdp", delta=1e-5, lifetime_epsilon=None)
    assert 0 < metrics["epsilon"] == pytest.approx(ledger.spent())
    assert metrics["epsilon"] < 4.0  # this round and the one left share the target


def _own_policy(root: Path, lifetime: Any, max_length: int = 48) -> None:
    policy = {"lifetime_epsilon": lifetime, "delta": 1e-5, "accountant": "rdp", "max_length": max_length}
    (root / "client.json").write_text(json.dumps(policy))


def test_the_devices_privacy_policy_binds_a_policy_round(tiny_lm: str, tmp_path: Path) -> None:
    device = _device(tmp_path)
    _own_policy(tmp_path, 3.0)
    with pytest.raises(PrivacyPolicyError):  # the server asks for no DP; the device has a budget
        _round(device, _settings(tiny_lm))
    with pytest.raises(PrivacyBudgetExceeded):  # more than its lifetime budget
        _round(device, _settings(tiny_lm), enabled=True, noise_multiplier=0.3)
    assert not device.ledger.is_file() or not json.loads(device.ledger.read_text())["entries"]
    _, _, metrics = _round(device, _settings(tiny_lm), enabled=True, target_epsilon=2.5)
    assert 0 < metrics["epsilon"] <= 2.5
    assert len(json.loads(device.ledger.read_text())["entries"]) == 1  # the device's own ledger
    with pytest.raises(ConfigError, match="policy.max_length is 64"):  # client.json says 48
        _round(device, PolicySettings(model=tiny_lm, lora_r=2, max_length=64))


def test_kto_trains_on_ratings_and_on_pairs_read_as_two_ratings(tiny_lm: str, tmp_path: Path) -> None:
    records = [*synthetic_pairs(4, seed=1), Rating("Human: a rice question", "Rinse it twice.", 1)]
    settings = _settings(tiny_lm)
    _, delta, metrics = _round(_device(tmp_path, records), settings, task="kto")
    assert metrics["num-examples"] == 5 and np.isfinite(metrics["train_loss"])
    assert any(np.abs(d).max() > 0 for d in delta.values())
    policy = worker_policy(settings)
    data = encode_with_reference(synthetic_pairs(3), policy, None, pairs_as="ratings")
    assert data.kind.tolist() == [PAIR_AS_RATINGS] * 3
    with torch.no_grad():
        policy.reset_adapter(1)
        for p in policy.trainable_parameters():  # a policy that differs from its reference
            p.add_(0.3)
        losses = unit_losses(policy, data.tensors(), beta=0.5)
        logps = slot_logps(policy, data.input_ids, data.lengths, data.prompt_lengths)
    up, ref = torch.ones(3), data.ref_logps
    want = 0.5 * (kto(logps[:, 0], ref[:, 0], up, beta=0.5) + kto(logps[:, 1], ref[:, 1], -up, beta=0.5))
    torch.testing.assert_close(losses, want)


def test_dpo_needs_pairs(tiny_lm: str, tmp_path: Path) -> None:
    device = _device(tmp_path, [Rating("Human: hi", "Hello!", 1)])
    with pytest.raises(DataError, match="no preference pairs to train dpo on"):
        _round(device, _settings(tiny_lm))


def test_reference_logps_are_cached_per_data_and_length(tiny_lm: str, tmp_path: Path) -> None:
    policy = worker_policy(_settings(tiny_lm))
    first = encode_with_reference(synthetic_pairs(3), policy, tmp_path)
    files = list(tmp_path.glob("policy-*.safetensors"))
    assert len(files) == 1
    again = encode_with_reference(synthetic_pairs(3), policy, tmp_path)
    torch.testing.assert_close(again.ref_logps, first.ref_logps)
    encode_with_reference(synthetic_pairs(3), worker_policy(_settings(tiny_lm, beta=1.0)), tmp_path)
    assert len(list(tmp_path.glob("policy-*.safetensors"))) == 1  # beta changes no log-prob
    encode_with_reference(synthetic_pairs(4), policy, tmp_path)
    assert len(list(tmp_path.glob("policy-*.safetensors"))) == 2


def test_evaluation_is_the_implicit_reward_accuracy_of_the_global_policy(
    tiny_lm: str, tmp_path: Path
) -> None:
    settings = _settings(tiny_lm)
    device = _device(tmp_path)
    state = initial_policy_state(settings, seed=0)
    assert policy_evaluate(device, state, settings=settings) == {"global_accuracy": 0.5, "num-examples": 4.0}
    _, delta, _ = _round(device, settings)
    trained = {n: state[n] + delta[n] for n in state}
    acc = policy_evaluate(device, trained, settings=settings)["global_accuracy"]
    policy = worker_policy(settings)
    loaded = policy_state(policy)  # evaluation set the global state it was given
    assert all(np.array_equal(loaded[n], trained[n]) for n in state)
    margins = implicit_margins(
        policy, encode_with_reference(synthetic_pairs(4, seed=2), policy, None), beta=0.5
    )
    assert np.all(margins != 0) and acc == pytest.approx(float(np.mean(margins > 0)))


# ------------------------------------------------ record-level distributed DP (secagg.record_dp)


def test_a_record_dp_round_sends_minus_the_sum_of_each_pairs_clipped_gradient(
    tiny_lm: str, tmp_path: Path
) -> None:
    from fedrlhf.training.dpo import encode_policy, reference_logps, set_policy_state
    from fedrlhf.training.policy_task import policy_gradient_round

    settings = _settings(tiny_lm)
    device = _device(tmp_path / "dev")
    policy = worker_policy(settings)
    global_state = initial_policy_state(settings, seed=0)
    global_state = {n: v + 0.05 for n, v in global_state.items()}  # B != 0: every LoRA weight has a gradient
    clip = 0.01  # small enough that every pair is clipped
    privacy = PrivacyConfig(enabled=True, target_epsilon=4.0, max_grad_norm=clip)
    spec = RoundSpec(round=1, seed=0, local_epochs=1.0, rounds=2)
    update, metrics = policy_gradient_round(
        device, global_state, spec, task="dpo", settings=settings, privacy=privacy, noise_multiplier=2.0
    )
    after = policy_state(policy)
    assert all(np.array_equal(after[n], global_state[n]) for n in after), (
        "a gradient round changed the weights"
    )
    # by hand: one pair at a time, plain autograd, clip to `clip`, sum
    set_policy_state(policy, global_state)
    data = reference_logps(policy, encode_policy(synthetic_pairs(8, seed=1), policy))
    named = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    want = {n: torch.zeros_like(p) for n, p in named.items()}
    clipped = 0
    for i in range(len(data)):
        policy.zero_grad(set_to_none=True)
        unit_losses(policy, [t[i : i + 1] for t in data.tensors()], beta=settings.beta).sum().backward()
        norm = float(torch.sqrt(sum((p.grad**2).sum() for p in named.values())))
        clipped += norm > clip
        for n, p in named.items():
            want[n] += p.grad * min(1.0, clip / (norm + 1e-6))
    policy.zero_grad(set_to_none=True)
    assert clipped == len(data)
    assert set(update) == set(named)
    for n in named:
        np.testing.assert_allclose(update[n], -want[n].numpy(), atol=1e-6)
    assert np.sqrt(sum((u**2).sum() for u in update.values())) <= len(data) * clip + 1e-6
    ledger = json.loads(device.ledger.read_text())
    assert [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger["entries"]] == [
        (2.0, 1.0, 1)
    ]
    assert metrics["steps"] == 1.0 and metrics["num-examples"] == 8.0
    assert metrics["epsilon"] == pytest.approx(
        PrivacyLedger.open(device.ledger, lifetime_epsilon=None).spent()
    )


def test_lora_layers_puts_adapters_on_the_top_blocks_only(tiny_lm: str) -> None:
    from fedrlhf.errors import ModelError

    policy = worker_policy(_settings(tiny_lm, lora_layers=1, lora_target_modules=("v_proj",)))
    blocks = policy.model.config.num_hidden_layers
    layers = {n.split(".layers.")[1].split(".")[0] for n, _ in policy.named_parameters() if "lora_" in n}
    assert layers == {str(blocks - 1)}
    with pytest.raises(ModelError, match="policy.lora_layers is 99"):
        worker_policy(_settings(tiny_lm, lora_layers=99))
    with pytest.raises(ConfigError, match="policy.lora_layers"):
        PolicySettings(lora_layers=-1)


def test_rpo_alpha_adds_the_chosen_answers_mean_token_nll_to_pairs_only(tiny_lm: str, tmp_path: Path) -> None:
    policy = worker_policy(_settings(tiny_lm))
    records = [*synthetic_pairs(3, seed=4), Rating("Human: a rice question", "Rinse it twice.", 1)]
    data = encode_with_reference(records, policy, None)
    with torch.no_grad():
        plain = unit_losses(policy, data.tensors(), beta=0.5)
        rpo = unit_losses(policy, data.tensors(), beta=0.5, rpo_alpha=0.7)
        logps = slot_logps(policy, data.input_ids, data.lengths, data.prompt_lengths)
    tokens = (data.lengths[:, 0] - data.prompt_lengths[:, 0]).float()
    want = plain - 0.7 * logps[:, 0] / tokens
    torch.testing.assert_close(rpo[:3], want[:3])
    torch.testing.assert_close(rpo[3], plain[3])  # a rating has no chosen answer
    assert bool((rpo[:3] > plain[:3]).all())  # an NLL is positive
    # a device round under DP trains on it (one pair, one sample) and the config refuses < 0
    _, delta, metrics = _round(
        _device(tmp_path), _settings(tiny_lm, rpo_alpha=1.0), enabled=True, noise_multiplier=1.0
    )
    assert np.isfinite(metrics["train_loss"]) and any(np.abs(d).max() > 0 for d in delta.values())
    with pytest.raises(ConfigError, match="policy.rpo_alpha"):
        _settings(tiny_lm, rpo_alpha=-0.1)
