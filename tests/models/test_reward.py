import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModel

from fedrlhf.config import ModelConfig
from fedrlhf.errors import ConfigError, ModelError, OutputError
from fedrlhf.models import (
    RewardModel,
    flatten_state,
    get_trainable_state,
    set_trainable_state,
    state_layout,
    unflatten_state,
)
from fedrlhf.training import encode, score_pairs


def _model(backbone: str, **kw) -> RewardModel:
    return RewardModel.build(ModelConfig(backbone=backbone, max_length=32, **kw), seed=1)


def test_trainable_state_is_only_lora_and_head(tiny_bert: str) -> None:
    model = _model(tiny_bert)
    state = get_trainable_state(model)
    assert state, "empty payload"
    assert all("lora_" in n or n.startswith("head.") for n in state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(state)
    assert all(a.dtype == np.float32 for a in state.values())


def test_set_state_round_trip_and_validation(tiny_bert: str) -> None:
    a, b = _model(tiny_bert), RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32), seed=2)
    state = {k: v + 0.5 for k, v in get_trainable_state(a).items()}
    set_trainable_state(b, state)
    for k, v in get_trainable_state(b).items():
        np.testing.assert_array_equal(v, state[k])
    bad = dict(state)
    bad.pop(next(iter(bad)))
    with pytest.raises(ModelError, match="missing"):
        set_trainable_state(b, bad)
    name = next(iter(state))
    with pytest.raises(ModelError, match="non-finite"):
        set_trainable_state(b, {**state, name: np.full_like(state[name], np.nan)})


def test_flatten_unflatten_round_trip(tiny_bert: str) -> None:
    model = _model(tiny_bert)
    state = get_trainable_state(model)
    vec = flatten_state(state)
    back = unflatten_state(vec, state_layout(model))
    assert all(np.array_equal(back[k], state[k]) for k in state)
    with pytest.raises(ModelError):
        unflatten_state(vec[:-1], state_layout(model))


def test_save_load_gives_identical_rewards(tiny_bert: str, pairs: list, tmp_path) -> None:
    model = _model(tiny_bert)
    with torch.no_grad():  # move away from the LoRA init (B = 0) so the adapter matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    data = encode(pairs, model.tokenizer, 32)
    before = score_pairs(model, data)
    model.save_pretrained(tmp_path / "rm")
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    np.testing.assert_array_equal(score_pairs(loaded, data), before)


def test_saved_adapter_loads_with_plain_peft(tiny_bert: str, tmp_path) -> None:
    model = _model(tiny_bert)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    model.save_pretrained(tmp_path / "rm")
    plain = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_bert, add_pooling_layer=False), str(tmp_path / "rm")
    )
    ids = model.tokenizer(["hello world"], return_tensors="pt")
    ours = model.backbone(**ids).last_hidden_state
    theirs = plain(**ids).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_load_errors_name_the_directory(tmp_path) -> None:
    with pytest.raises(ModelError, match="fedrlhf_config.json"):
        RewardModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_gpt2"])
def test_max_length_above_the_backbone_positions_is_refused(backbone: str, request) -> None:
    path = request.getfixturevalue(backbone)
    with pytest.raises(ConfigError, match=r"max_length \(--max-length\) is 513, .* at most 512 tokens"):
        RewardModel.build(ModelConfig(backbone=path, max_length=513))
    assert RewardModel.build(ModelConfig(backbone=path, max_length=512)).config.max_length == 512


def test_save_refuses_a_foreign_directory_and_extra_json_is_saved(tiny_bert: str, tmp_path) -> None:
    model = _model(tiny_bert)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="did not create"):
        model.save_pretrained(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    model.save_pretrained(tmp_path / "rm", extra_json={"training.json": {"steps": 3}})
    assert json.loads((tmp_path / "rm" / "training.json").read_text()) == {"steps": 3}
    model.save_pretrained(tmp_path / "rm")  # its own directory: replaced as a whole
    assert not (tmp_path / "rm" / "training.json").exists()
    RewardModel.from_pretrained(tmp_path / "rm")


def test_decoder_backbone_uses_last_token(tiny_gpt2: str, pairs: list) -> None:
    model = _model(tiny_gpt2)
    assert model.pooling == "last"
    margins = score_pairs(model, encode(pairs[:8], model.tokenizer, 32))
    assert margins.shape == (8,) and np.all(np.isfinite(margins))


def test_left_truncation_keeps_the_end(tiny_bert: str) -> None:
    from fedrlhf.feedback import Preference

    model = _model(tiny_bert)
    long_prompt = "Human: " + "blah " * 200 + "Assistant:"
    data = encode([Preference(long_prompt, "the chosen ending", "the rejected ending")], model.tokenizer, 32)
    text = model.tokenizer.decode(data.input_ids[0, 0, : int(data.lengths[0, 0])])
    assert "chosen ending" in text and data.lengths[0, 0] == 32


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="lora_r"):
        ModelConfig(lora_r=0)
    with pytest.raises(ConfigError, match="pooling"):
        ModelConfig(pooling="max")


def test_personal_adapter_is_separate(tiny_bert: str) -> None:
    model = _model(tiny_bert, personal_adapter=True)
    personal = get_trainable_state(model, "personal")
    assert personal and not set(personal) & set(get_trainable_state(model, "global"))
    model.set_trainable("personal")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(personal)


def test_packaged_minilm_loads_offline() -> None:
    model = RewardModel.build(ModelConfig(max_length=64))
    assert model.backbone.get_base_model().config.hidden_size == 384
    n = sum(v.size for v in get_trainable_state(model).values())
    assert 300_000 < n < 400_000  # all-linear r=8 LoRA + head, not the 22.7M backbone
