"""Local DPO / KTO on a policy LoRA: losses, encoding, reference, plain and DP-SGD training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrlhf.config import PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError, ModelError
from fedrlhf.feedback import Preference, Rating
from fedrlhf.models.losses import kto
from fedrlhf.models.policy import PolicyConfig, PolicyModel
from fedrlhf.privacy.ledger import PrivacyLedger
from fedrlhf.training.dpo import (
    encode_policy,
    implicit_margins,
    implicit_reward_accuracy,
    reference_logps,
    slot_logps,
    train_policy,
)
from tests.helpers import synthetic_pairs


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama"))


def _policy(base: str) -> PolicyModel:
    return PolicyModel.build(PolicyConfig(base=base, max_length=48, lora_r=4), seed=0)


def _snapshot(policy: PolicyModel) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {"lora": {}, "base": {}}
    for n, p in policy.named_parameters():
        parts["lora" if "lora_" in n else "base"][n] = p.detach().clone()
    return parts


def _changed(before: dict[str, torch.Tensor], policy: PolicyModel) -> set[str]:
    now = dict(policy.named_parameters())
    return {n for n, t in before.items() if not torch.equal(t, now[n].detach())}


def test_kto_matches_hand_computed_values() -> None:
    out = kto(
        torch.tensor([-1.0, -1.0]),
        torch.tensor([-2.0, -2.0]),
        torch.tensor([1.0, -1.0]),
        beta=0.5,
        reference=0.2,
        undesirable_weight=2.0,
    )
    sig = 1 / (1 + math.exp(-0.5 * 0.8))
    assert out.tolist() == pytest.approx([1 - sig, 2 * sig], rel=1e-6)


def test_encoding_marks_the_response_tokens(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    data = encode_policy(
        [Preference("q about rice", "rinse it well", "no"), Rating("q", "ok then", -1)], policy
    )
    assert data.input_ids.shape[:2] == (2, 2)
    prompt_ids = policy.tokenizer(policy.chat_text("q about rice"), add_special_tokens=False)["input_ids"]
    assert int(data.prompt_lengths[0, 0]) == len(prompt_ids)
    chosen = policy.tokenizer("rinse it well", add_special_tokens=False)["input_ids"]
    assert int(data.lengths[0, 0]) == len(prompt_ids) + len(chosen) + 1  # + end of text
    assert data.kind.tolist() == [0, 1] and data.label.tolist() == [1.0, -1.0]
    assert int(data.lengths[1, 1]) == int(data.prompt_lengths[1, 1]) == 1  # the rating's empty slot


def test_reference_is_the_base_and_a_fresh_policy_has_no_margin(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    data = reference_logps(policy, encode_policy(synthetic_pairs(6), policy))
    assert bool((data.ref_logps < 0).all())
    with torch.no_grad():
        torch.testing.assert_close(
            slot_logps(policy, data.input_ids, data.lengths, data.prompt_lengths), data.ref_logps
        )
    assert implicit_reward_accuracy(policy, data) == 0.5  # every margin is 0: ties count 1/2


def test_dpo_trains_lora_only_and_learns_the_preference(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    data = reference_logps(policy, encode_policy(synthetic_pairs(16), policy))
    before = _snapshot(policy)
    result, report = train_policy(policy, data, TrainConfig(epochs=15, batch_size=8, lr=2e-2), beta=0.5)
    assert report is None and result.steps == 30
    assert _changed(before["lora"], policy) and not _changed(before["base"], policy)
    assert result.losses[-1] < result.losses[0] < math.log(2) + 1e-3
    assert implicit_reward_accuracy(policy, data, beta=0.5) > 0.9
    with policy.reference():  # the reference never moved
        torch.testing.assert_close(
            slot_logps(policy, data.input_ids, data.lengths, data.prompt_lengths).detach(), data.ref_logps
        )


def test_kto_raises_liked_answers_and_lowers_disliked_ones(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    records = [Rating(p.prompt, p.chosen, 1) for p in synthetic_pairs(8)]
    records += [Rating(p.prompt, p.rejected, -1) for p in synthetic_pairs(8, seed=1)]
    data = reference_logps(policy, encode_policy(records, policy))
    train_policy(policy, data, TrainConfig(epochs=10, batch_size=8, lr=2e-2), beta=0.5)
    with torch.no_grad():
        ratio = (
            slot_logps(policy, data.input_ids, data.lengths, data.prompt_lengths)[:, 0] - data.ref_logps[:, 0]
        )
    assert float(ratio[data.label > 0].mean()) > 0.3 > 0 > float(ratio[data.label < 0].mean())


def test_dp_without_noise_or_clipping_equals_plain_training(tiny_lm: str, tmp_path: Path) -> None:
    """Full batch (sample rate 1), noise 0, clip 1e20: Opacus' per-sample gradients through the
    LoRA of a causal LM must add up to the plain gradient (guards against silent corruption)."""
    cfg = TrainConfig(epochs=3, batch_size=0, lr=1e-2)
    plain, private = _policy(tiny_lm), _policy(tiny_lm)
    data = reference_logps(plain, encode_policy(synthetic_pairs(6), plain))
    train_policy(plain, data, cfg)
    off = PrivacyConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=1e20)
    result, _ = train_policy(private, data, cfg, privacy=off, ledger_path=tmp_path / "ledger.json")
    assert result.steps == 3
    for (n, a), b in zip(plain.named_parameters(), private.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def test_dp_dpo_accounts_each_pair_in_the_ledger(tiny_lm: str, tmp_path: Path) -> None:
    policy = _policy(tiny_lm)
    data = reference_logps(policy, encode_policy(synthetic_pairs(12), policy))
    before = _snapshot(policy)
    privacy = PrivacyConfig(enabled=True, target_epsilon=8.0, max_grad_norm=1.0, delta=1e-5)
    ledger = tmp_path / "ledger.json"
    result, report = train_policy(
        policy, data, TrainConfig(epochs=2, batch_size=4, lr=1e-2), privacy=privacy, ledger_path=ledger
    )
    assert report is not None and 0 < report["epsilon"] <= 8.0 + 1e-6
    assert report["sample_rate"] == pytest.approx(1 / 3) and report["steps"] == result.steps == 6
    assert PrivacyLedger.open(ledger, lifetime_epsilon=None).report()["epsilon"] == pytest.approx(
        report["epsilon"]
    )
    assert _changed(before["lora"], policy) and not _changed(before["base"], policy)
    assert implicit_margins(policy, data).shape == (12,)


def test_bad_settings_are_config_errors(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    data = encode_policy(synthetic_pairs(2), policy)
    with pytest.raises(ConfigError, match="beta"):
        train_policy(policy, data, TrainConfig(), beta=0.0)
    with pytest.raises(ConfigError, match="ledger"):
        train_policy(policy, data, TrainConfig(), privacy=PrivacyConfig(enabled=True, noise_multiplier=1.0))


def test_devices_send_lora_deltas_that_the_server_aggregates(tiny_lm: str, tmp_path: Path) -> None:
    """Two devices' DP rounds from one global LoRA; the server's own aggregation step (mean and
    median) combines the flat deltas, outside Flower."""
    from fedrlhf.config import RobustConfig, RunConfig
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState
    from fedrlhf.models.state import flatten_state, unflatten_state
    from fedrlhf.training.dpo import local_update, policy_state, set_policy_state

    policy = _policy(tiny_lm)
    global_state = policy_state(policy)
    layout = {n: a.shape for n, a in global_state.items()}
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0)
    updates = []
    for i in range(3):
        data = reference_logps(policy, encode_policy(synthetic_pairs(6, seed=i), policy))
        delta, _, report = local_update(
            policy,
            global_state,
            data,
            TrainConfig(epochs=1, batch_size=3, lr=1e-2, seed=i),
            privacy=privacy,
            ledger_path=tmp_path / f"device{i}.json",
        )
        assert delta.dtype == np.float32 and delta.shape == flatten_state(global_state).shape
        assert report is not None and (tmp_path / f"device{i}.json").is_file()
        updates.append(delta)
    state = ServerState(round=0, global_state=global_state, rng={})
    mean = aggregate_updates(updates, RunConfig(), state, ["a", "b", "c"], np.random.default_rng(0))
    np.testing.assert_allclose(mean, np.mean(updates, axis=0), rtol=1e-5, atol=1e-8)
    cfg = RunConfig(robust=RobustConfig(rule="coordinate_median"))
    median = aggregate_updates(updates, cfg, state, ["a", "b", "c"], np.random.default_rng(0))
    np.testing.assert_allclose(median, np.median(updates, axis=0), rtol=1e-5, atol=1e-8)
    new_state = unflatten_state(flatten_state(global_state) + mean, layout)
    set_policy_state(policy, new_state)
    assert all(np.array_equal(policy_state(policy)[n], new_state[n]) for n in new_state)
    with pytest.raises(ModelError, match="policy state"):
        set_policy_state(policy, {**new_state, next(iter(new_state)): np.full((1,), np.nan)})
