"""A device's record-level distributed-DP round (DP-FedSGD): clipped per-record gradient sums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel, get_trainable_state, set_trainable_state
from fedrlhf.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger
from fedrlhf.training.data import encode
from fedrlhf.training.device import DeviceDir, RoundSpec
from fedrlhf.training.fedsgd import clipped_gradient_sum, gradient_round
from fedrlhf.training.local import unit_losses
from tests.helpers import synthetic_pairs

PRIVACY = PrivacyConfig(enabled=True, target_epsilon=4.0, max_grad_norm=0.05)


@pytest.fixture()
def device(tmp_path: Path) -> DeviceDir:
    write_jsonl(tmp_path / "dev" / "train.jsonl", synthetic_pairs(12, seed=1))
    write_jsonl(tmp_path / "dev" / "test.jsonl", synthetic_pairs(6, seed=2))
    return DeviceDir(tmp_path / "dev")


@pytest.mark.parametrize("trainable", ["head", "lora"])
def test_the_update_is_minus_the_sum_of_clipped_per_record_gradients(tiny_bert: str, trainable: str) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32, trainable=trainable)
    model = RewardModel.build(cfg, seed=0)
    for m in model.modules():  # dropout would make each pass's gradients random: compare without it
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    data = encode(synthetic_pairs(10, seed=3), model.tokenizer, 32)
    before = get_trainable_state(model)
    clip = 0.05  # small enough that most records are clipped
    update, loss = clipped_gradient_sum(model, data, max_grad_norm=clip)
    # by hand: one record at a time, autograd on the whole model, clip, sum
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    want = {n: torch.zeros_like(p) for n, p in named.items()}
    losses, clipped = [], 0
    for i in range(len(data)):
        model.zero_grad(set_to_none=True)
        one = unit_losses(
            model,
            data.input_ids[i : i + 1],
            data.lengths[i : i + 1],
            data.kind[i : i + 1],
            data.label[i : i + 1],
        )
        one.sum().backward()
        losses.append(float(one.detach().sum()))
        grads = {n: p.grad.detach().clone() for n, p in named.items()}
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads.values())))
        clipped += norm > clip
        for n, g in grads.items():
            want[n] += g * min(1.0, clip / (norm + 1e-6))
    model.zero_grad(set_to_none=True)
    assert clipped >= 5
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)
    by_param = {n: -want[n].numpy() for n in named}
    state_names = sorted(update)
    assert len(state_names) == len(by_param)
    flat = np.concatenate([update[n].ravel() for n in state_names])
    hand = np.concatenate([by_param[n].ravel() for n in sorted(by_param)])
    np.testing.assert_allclose(np.sort(flat), np.sort(hand), atol=2e-6)  # names differ by prefix only
    assert np.linalg.norm(flat) <= 10 * clip + 1e-5  # 10 records, each clipped
    after = get_trainable_state(model)
    assert all(np.array_equal(after[n], before[n]) for n in before)  # the model is left as it was


def test_a_round_records_one_full_batch_step_in_the_devices_ledger(tiny_bert: str, device: DeviceDir) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32, trainable="head")
    state = get_trainable_state(RewardModel.build(cfg, seed=0))
    for r in (1, 2):
        update, metrics = gradient_round(
            device,
            state,
            RoundSpec(round=r, seed=0, local_epochs=1, rounds=2),
            model_cfg=cfg,
            train_cfg=TrainConfig(),
            privacy=PRIVACY,
            noise_multiplier=2.0,
        )
    ledger = json.loads(device.ledger.read_text())
    assert [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger["entries"]] == [
        (2.0, 1.0, 1)
    ] * 2
    assert not ledger.get("reserved") and "DP-FedSGD" in ledger["entries"][0]["label"]
    spent = PrivacyLedger.open(device.ledger, lifetime_epsilon=None).spent()
    assert metrics["epsilon"] == pytest.approx(spent) and metrics["num-examples"] == 12.0
    assert metrics["steps"] == 1.0 and 0 <= metrics["global_accuracy"] <= 1
    assert set(update) == set(state) and any(np.abs(v).sum() > 0 for v in update.values())


def test_a_round_over_the_devices_lifetime_budget_is_refused_before_any_work(
    tiny_bert: str, device: DeviceDir
) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32, trainable="head")
    state = get_trainable_state(RewardModel.build(cfg, seed=0))
    tight = PrivacyConfig(enabled=True, target_epsilon=4.0, lifetime_epsilon=0.5, max_grad_norm=0.05)
    with pytest.raises(PrivacyBudgetExceeded):
        gradient_round(
            device,
            state,
            RoundSpec(round=1, seed=0, local_epochs=1),
            model_cfg=cfg,
            train_cfg=TrainConfig(),
            privacy=tight,
            noise_multiplier=1.0,
        )
    assert not device.ledger.exists() and not (device.root / "cache").exists()


def test_weights_are_untouched_for_the_next_device_of_the_worker(tiny_bert: str) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32, trainable="head")
    model = RewardModel.build(cfg, seed=0)
    start = get_trainable_state(model)
    data = encode(synthetic_pairs(4, seed=5), model.tokenizer, 32)
    first, _ = clipped_gradient_sum(model, data, max_grad_norm=1.0)
    again, _ = clipped_gradient_sum(model, data, max_grad_norm=1.0)
    assert all(np.array_equal(first[n], again[n]) for n in first)
    set_trainable_state(model, start)
