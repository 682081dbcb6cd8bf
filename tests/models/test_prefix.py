"""LoRA on the top layers only, trained on the frozen layers' cached output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.models import RewardModel
from fedrlhf.models.prefix import TopStack, prefix_states, supports_prefix_cache
from fedrlhf.training import encode, evaluate
from fedrlhf.training.data import encode_cached
from fedrlhf.training.features import cached_prefix_states, training_view
from fedrlhf.training.local import train
from fedrlhf.training.private import train_private


def _model(tiny_bert: str, layers: int = 1) -> RewardModel:
    return RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2, lora_layers=layers))


def test_lora_sits_on_the_top_layers_only(tiny_bert: str) -> None:
    model = _model(tiny_bert)
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert lora and all(".layer.1." in n for n in lora)  # tiny bert: 2 layers, the top one is 1
    full = RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2))
    assert any(".layer.0." in n for n, _ in full.named_parameters() if "lora_A" in n)


def test_top_stack_on_cached_states_equals_the_full_model(tiny_bert: str, pairs: list) -> None:
    model = _model(tiny_bert)
    with torch.no_grad():  # a non-trivial LoRA, so that the top layer's adapter matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    data = encode(pairs[:8], model.tokenizer, 32)
    states = prefix_states(model, data.input_ids, data.lengths)
    width = int(data.lengths.max())
    mask = (torch.arange(width).view(1, 1, -1) < data.lengths.unsqueeze(-1)).long()
    top = TopStack(model).eval()
    with torch.no_grad():
        for slot in (0, 1):
            want = model(data.input_ids[:, slot, :width].long(), mask[:, slot])
            got = top(states[:, slot, :width], mask[:, slot])
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-2, atol=1e-2)  # float16 cache


def test_training_uses_the_cache_and_changes_only_the_adapters(
    tiny_bert: str, pairs: list, tmp_path: Path
) -> None:
    model = _model(tiny_bert)
    assert supports_prefix_cache(model)
    data = encode_cached(pairs, model.tokenizer, 32, tmp_path)
    module, tensors = training_view(model, data)
    assert isinstance(module, TopStack) and tensors[0].dim() == 4
    assert len(list(tmp_path.glob("prefix-*.safetensors"))) == 1  # written beside the token cache
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = evaluate(model, data).accuracy
    train(model, data, TrainConfig(epochs=6, batch_size=16, lr=5e-3), progress=False)
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert evaluate(model, data).accuracy > max(before, 0.8)  # a trivially learnable preference


def test_dp_training_on_the_cache_is_accounted_and_learns(
    tiny_bert: str, pairs: list, tmp_path: Path
) -> None:
    model = _model(tiny_bert)
    data = encode(pairs, model.tokenizer, 32)
    privacy = PrivacyConfig(enabled=True, target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0)
    cfg = TrainConfig(epochs=20, batch_size=48, lr=5e-3)
    result, report = train_private(model, data, cfg, privacy, ledger_path=tmp_path / "l.json", progress=False)
    assert result.steps == 40 and 7.0 < report["epsilon"] <= 8.0
    assert evaluate(model, data).accuracy > 0.8


def test_a_decoder_trains_on_tokens(tiny_gpt2: str, pairs: list) -> None:
    model = RewardModel.build(ModelConfig(backbone=tiny_gpt2, max_length=32, lora_r=2, lora_layers=1))
    assert not supports_prefix_cache(model)
    module, tensors = training_view(model, encode(pairs[:4], model.tokenizer, 32))
    assert module is model and tensors[0].dim() == 3


def test_memory_cache_is_reused(tiny_bert: str, pairs: list) -> None:
    model = _model(tiny_bert)
    data = encode(pairs[:4], model.tokenizer, 32)
    assert cached_prefix_states(model, data) is cached_prefix_states(model, data)


def test_more_lora_layers_than_the_backbone_has_is_refused(tiny_bert: str) -> None:
    from fedrlhf.errors import ModelError

    with pytest.raises(ModelError, match="only 2 layers"):
        _model(tiny_bert, layers=3)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_gpt2"])
def test_head_only_trains_the_head_on_cached_features(
    backbone: str, request: pytest.FixtureRequest, pairs: list, tmp_path: Path
) -> None:
    from fedrlhf.models import get_trainable_state

    path = request.getfixturevalue(backbone)
    model = RewardModel.build(ModelConfig(backbone=path, max_length=32, trainable="head", pool_layers=2))
    assert set(get_trainable_state(model)) == {"head.bias", "head.weight"}  # the payload: the head only
    assert model.head.in_features == 2 * model.backbone.get_base_model().config.hidden_size
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.")}
    data = encode_cached(pairs, model.tokenizer, 32, tmp_path)
    module, tensors = training_view(model, data)
    assert isinstance(module, TopStack) and tensors[0].shape == (len(pairs), 2, model.head.in_features)
    model.eval()
    with torch.no_grad():  # the head on the cached features is the model on tokens
        ids, lengths = data.input_ids[:4, 0].long(), data.lengths[:4, 0]
        mask = (torch.arange(ids.shape[1]).view(1, -1) < lengths.unsqueeze(-1)).long()
        np.testing.assert_allclose(
            module(tensors[0][:4, 0], mask).numpy(), model(ids, mask).numpy(), atol=1e-5
        )
    train(model, data, TrainConfig(epochs=30, batch_size=96, lr=5e-2), progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert evaluate(model, data).accuracy > 0.8
    model.save_pretrained(tmp_path / "saved")
    again = RewardModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.head.weight, model.head.weight) and again.config.trainable == "head"


def test_pooled_layers_above_cached_ones_match_the_full_model(tiny_bert: str, pairs: list) -> None:
    model = RewardModel.build(
        ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2, lora_layers=1, pool_layers=2)
    )
    model.eval()
    data = encode(pairs[:6], model.tokenizer, 32)
    states = prefix_states(model, data.input_ids, data.lengths)
    width = int(data.lengths.max())
    mask = (torch.arange(width).view(1, -1) < data.lengths[:, 0].unsqueeze(-1)).long()
    with torch.no_grad():
        want = model(data.input_ids[:, 0, :width].long(), mask)
        got = TopStack(model).eval()(states[:, 0, :width], mask)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"trainable": "all"}, "trainable must be"),
        ({"trainable": "head", "lora_layers": 1}, "does not apply"),
        ({"lora_layers": 1, "pool_layers": 3}, "at most model.lora_layers"),
        ({"pool_layers": 0}, "pool_layers"),
    ],
)
def test_bad_combinations_are_config_errors(settings: dict, match: str) -> None:
    from fedrlhf.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        ModelConfig(**settings)


def test_features_computed_by_length_and_cut_to_each_batch_equal_each_text_alone(
    tiny_bert: str, pairs: list
) -> None:
    model = RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32, trainable="head", pool_layers=2))
    model.eval()
    data = encode(pairs[:7], model.tokenizer, 32)
    got = prefix_states(model, data.input_ids, data.lengths, batch_size=3)
    with torch.no_grad():
        for u in range(7):
            for slot in (0, 1):
                n = int(data.lengths[u, slot])
                ids = data.input_ids[u : u + 1, slot, :n].long()
                alone = model.features(ids, torch.ones(1, n, dtype=torch.long))
                np.testing.assert_allclose(got[u, slot].numpy(), alone[0].numpy(), rtol=1e-4, atol=1e-5)


def test_cached_states_are_zero_past_each_texts_length(tiny_bert: str, pairs: list) -> None:
    model = _model(tiny_bert)
    data = encode(pairs[:7], model.tokenizer, 32)
    states = prefix_states(model, data.input_ids, data.lengths, batch_size=2)
    width = states.shape[2]
    past = torch.arange(width).view(1, 1, -1) >= data.lengths.unsqueeze(-1)
    assert states[past].abs().sum() == 0 and states[~past].abs().sum() > 0
