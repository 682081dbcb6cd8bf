"""One device's round without Flower: the delta is global-only, the backpack stays home."""

import json
import math

import numpy as np
import pytest

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import DataError, PrivacyBudgetExceeded, PrivacyPolicyError
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel, get_trainable_state
from fedrlhf.privacy.ledger import PrivacyLedger
from fedrlhf.training.device import DeviceDir, RoundSpec, client_evaluate, client_round
from tests.helpers import synthetic_pairs


@pytest.fixture()
def device(tmp_path) -> DeviceDir:
    write_jsonl(tmp_path / "dev" / "train.jsonl", synthetic_pairs(32, seed=1))
    write_jsonl(tmp_path / "dev" / "test.jsonl", synthetic_pairs(16, seed=2))
    return DeviceDir(tmp_path / "dev")


def _global(cfg: ModelConfig) -> dict:
    return get_trainable_state(RewardModel.build(cfg, seed=3))


def test_round_returns_global_delta_and_keeps_personal_on_device(tiny_bert, device) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32, personal_adapter=True)
    start = _global(cfg)
    spec = RoundSpec(round=1, seed=7, local_epochs=1, personal=True, personal_epochs=1)
    delta, metrics = client_round(
        device,
        start,
        spec,
        model_cfg=cfg,
        train_cfg=TrainConfig(batch_size=8, lr=1e-2),
        privacy=PrivacyConfig(),
    )
    assert set(delta) == set(start)
    assert not any(".personal." in k for k in delta)
    assert any(np.abs(v).max() > 0 for v in delta.values())
    assert device.personal.is_file()
    assert {"global_accuracy", "personal_accuracy", "num-examples", "train_loss"} <= set(metrics)
    evaluated = client_evaluate(device, start, model_cfg=cfg)
    assert evaluated["global_accuracy"] == metrics["global_accuracy"]  # same received model, same test data
    assert "personal_accuracy" in evaluated


def test_round_is_deterministic_for_a_seed(tiny_bert, device) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    start = _global(cfg)
    spec = RoundSpec(round=1, seed=11, local_epochs=1)
    runs = [
        client_round(
            device, start, spec, model_cfg=cfg, train_cfg=TrainConfig(batch_size=8), privacy=PrivacyConfig()
        )[0]
        for _ in range(2)
    ]
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_dp_round_spends_the_device_ledger_and_refuses_over_budget(tiny_bert, device) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0, lifetime_epsilon=30.0)
    spec = RoundSpec(round=1, seed=1, local_epochs=1)
    _, m1 = client_round(
        device, _global(cfg), spec, model_cfg=cfg, train_cfg=TrainConfig(batch_size=8), privacy=privacy
    )
    _, m2 = client_round(
        device, _global(cfg), spec, model_cfg=cfg, train_cfg=TrainConfig(batch_size=8), privacy=privacy
    )
    assert 0 < m1["epsilon"] < m2["epsilon"] <= 30.0  # composed over rounds, on disk
    tight = PrivacyConfig(enabled=True, noise_multiplier=1.0, lifetime_epsilon=m2["epsilon"] + 1e-3)
    with pytest.raises(PrivacyBudgetExceeded):
        client_round(
            device, _global(cfg), spec, model_cfg=cfg, train_cfg=TrainConfig(batch_size=8), privacy=tight
        )


def test_device_without_data_is_a_clear_error(tiny_bert, tmp_path) -> None:
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    with pytest.raises(DataError, match="train.jsonl"):
        client_round(
            DeviceDir(tmp_path),
            _global(cfg),
            RoundSpec(round=1, seed=0, local_epochs=1),
            model_cfg=cfg,
            train_cfg=TrainConfig(),
            privacy=PrivacyConfig(),
        )


def test_device_trains_from_its_encrypted_store_and_marks_rounds(tiny_bert, tmp_path) -> None:
    from fedrlhf.feedback.store import FeedbackStore

    root = tmp_path / "dev"
    root.mkdir()
    key = FeedbackStore.create_key_file(root / "store.key")
    with FeedbackStore.open(root / "feedback.db", key_file=key) as store:
        ids = [store.add(p) for p in synthetic_pairs(12, seed=4)]
        store.forget(ids[0])  # forgotten before the round: must not train it
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    device = DeviceDir(root)
    _, metrics = client_round(
        device,
        _global(cfg),
        RoundSpec(round=3, seed=0, local_epochs=1, evaluate=False),
        model_cfg=cfg,
        train_cfg=TrainConfig(batch_size=4),
        privacy=PrivacyConfig(),
    )
    assert metrics["num-examples"] == 11
    with FeedbackStore.open(root / "feedback.db", key_file=key) as store:
        assert store.rounds_used(ids[1]) == ["round-3"]
        assert store.rounds_used(ids[0]) == []


def _policy(device: DeviceDir, lifetime: object) -> None:
    settings = {"lifetime_epsilon": lifetime, "delta": 1e-5, "accountant": "rdp"}
    (device.root / "client.json").write_text(json.dumps(settings))


def test_a_device_without_a_limit_records_a_non_private_round_as_unbounded(tiny_bert, device) -> None:
    _policy(device, "none")
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    spec = RoundSpec(round=2, seed=0, local_epochs=1, evaluate=False)
    client_round(
        device,
        _global(cfg),
        spec,
        model_cfg=cfg,
        train_cfg=TrainConfig(batch_size=8),
        privacy=PrivacyConfig(),
    )
    ledger = PrivacyLedger.open(device.ledger, lifetime_epsilon=None)
    assert ledger.spent() == math.inf and [e.label for e in ledger.entries] == ["round-2"]


def test_a_device_with_a_budget_refuses_before_any_work(tiny_bert, device) -> None:
    _policy(device, 2.0)
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    spec = RoundSpec(round=1, seed=0, local_epochs=1, evaluate=False)
    with pytest.raises(PrivacyPolicyError, match="requires differential privacy"):
        client_round(device, {}, spec, model_cfg=cfg, train_cfg=TrainConfig(), privacy=PrivacyConfig())
    server = PrivacyConfig(enabled=True, noise_multiplier=0.3, lifetime_epsilon=1000.0)
    with pytest.raises(PrivacyBudgetExceeded, match="lifetime budget 2"):
        client_round(
            device, _global(cfg), spec, model_cfg=cfg, train_cfg=TrainConfig(batch_size=8), privacy=server
        )
    assert (
        not device.ledger.exists() or PrivacyLedger.open(device.ledger, lifetime_epsilon=None).history() == []
    )


def test_an_initialised_device_whose_store_vanished_says_so(tmp_path) -> None:
    import pytest

    from fedrlhf.feedback.store import StoreMissing
    from fedrlhf.training.device import DeviceDir

    (tmp_path / "client.json").write_text("{}")  # the client app initialised this device
    with pytest.raises(StoreMissing, match="feedback.db"):
        DeviceDir(tmp_path).records("train")
    assert DeviceDir(tmp_path / "other").records("train") == ([], [])  # a bare simulated device
