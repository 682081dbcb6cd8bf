"""Head-only models personalise with a device-local head added to the global one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel, get_trainable_state
from fedrlhf.models.prefix import TopStack, prefix_states
from fedrlhf.models.state import set_trainable_state
from fedrlhf.training import encode
from fedrlhf.training.device import DeviceDir, RoundSpec, client_evaluate, client_round
from tests.helpers import synthetic_pairs


def _config(tiny_bert: str) -> ModelConfig:
    return ModelConfig(backbone=tiny_bert, max_length=32, trainable="head", personal_adapter=True)


def test_the_personal_head_is_its_own_part_and_starts_at_zero(tiny_bert: str) -> None:
    model = RewardModel.build(_config(tiny_bert))
    personal = get_trainable_state(model, "personal")
    assert set(personal) == {"personal_head.weight", "personal_head.bias"}
    assert all(not v.any() for v in personal.values())
    assert set(get_trainable_state(model)) == {"head.weight", "head.bias"}  # what travels


def test_the_personal_head_adds_to_the_global_score_only_while_on(tiny_bert: str, pairs: list) -> None:
    model = RewardModel.build(_config(tiny_bert)).eval()
    set_trainable_state(
        model,
        {
            "personal_head.weight": np.full((1, model.head.in_features), 0.3, np.float32),
            "personal_head.bias": np.array([0.5], np.float32),
        },
        "personal",
    )
    data = encode(pairs[:6], model.tokenizer, 32)
    width = int(data.lengths.max())
    ids = data.input_ids[:, 0, :width].long()
    mask = (torch.arange(width).view(1, -1) < data.lengths[:, 0].unsqueeze(-1)).long()
    with torch.no_grad():
        feats = model.features(ids, mask)
        plain = model(ids, mask)
        model.use_personal(True)
        mine = model(ids, mask)
        cached = TopStack(model).eval()(prefix_states(model, data.input_ids, data.lengths)[:, 0], mask)
        model.use_personal(False)
    want = (feats * 0.3).sum(-1) + 0.5
    np.testing.assert_allclose((mine - plain).numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cached.numpy(), mine.numpy(), rtol=1e-2, atol=1e-2)  # float16 cache


def test_a_round_trains_the_personal_head_at_home(tiny_bert: str, tmp_path) -> None:
    write_jsonl(tmp_path / "dev" / "train.jsonl", synthetic_pairs(32, seed=1))
    write_jsonl(tmp_path / "dev" / "test.jsonl", synthetic_pairs(16, seed=2))
    device = DeviceDir(tmp_path / "dev")
    cfg = _config(tiny_bert)
    start = get_trainable_state(RewardModel.build(cfg, seed=3))
    spec = RoundSpec(round=1, seed=7, local_epochs=2, personal=True, personal_epochs=20)
    delta, metrics = client_round(
        device,
        start,
        spec,
        model_cfg=cfg,
        train_cfg=TrainConfig(batch_size=0, lr=0.05),
        privacy=PrivacyConfig(enabled=True, target_epsilon=8.0, delta=1e-4),
    )
    assert set(delta) == {"head.weight", "head.bias"}  # the personal head never leaves
    assert metrics["epsilon"] <= 8.0 + 1e-6
    from safetensors.numpy import load_file

    saved = load_file(str(device.personal))
    assert set(saved) == {"personal_head.weight", "personal_head.bias"}
    assert np.abs(saved["personal_head.weight"]).max() > 0  # it trained
    assert {"global_accuracy", "personal_accuracy"} <= set(metrics)
    evaluated = client_evaluate(device, start, model_cfg=cfg)
    assert evaluated["personal_accuracy"] == pytest.approx(metrics["personal_accuracy"])
