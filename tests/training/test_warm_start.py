"""The public warm start's trainer (no Flower): the central non-private trainer on ``[model]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrlhf.config import ModelConfig, WarmStartConfig
from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel
from fedrlhf.models.state import get_trainable_state, state_layout
from fedrlhf.training.session import fit
from fedrlhf.training.warm_start import PRIVACY_NOTE, public_split, read_public, train_config, warm_start
from tests.helpers import synthetic_pairs

HH_HELPFUL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf-helpful"


@pytest.fixture()
def public(tmp_path: Path) -> Path:
    path = tmp_path / "public.jsonl"
    write_jsonl(path, synthetic_pairs(40, seed=7))
    return path


def _cfg(public: Path, **kw: object) -> WarmStartConfig:
    return WarmStartConfig(data=(str(public),), **{"epochs": 2.0, "batch_size": 8, "lr": 0.01, **kw})


def test_trains_the_federated_layout_and_reports_its_held_out_accuracy(tiny_bert: str, public: Path) -> None:
    model_cfg = ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2)
    lines: list[str] = []
    result = warm_start(_cfg(public, holdout=0.25, seed=1), model_cfg, say=lines.append)
    fresh = RewardModel.build(model_cfg, seed=1)
    assert {n: v.shape for n, v in result.state.items()} == state_layout(fresh)  # the payload layout
    untrained = get_trainable_state(fresh)
    assert any(not np.array_equal(result.state[n], untrained[n]) for n in untrained), "nothing trained"
    record = result.record
    assert (record["pairs"], record["held_out_pairs"], record["steps"]) == (30, 10, 8)  # 2 epochs of 4
    assert record["data"] == [str(public)] and record["privacy"] == PRIVACY_NOTE
    assert 0.0 <= record["accuracy"] <= 1.0 and record["seconds"] > 0
    assert len(lines) == 2 and "non-private" in lines[0] and "held-out" in lines[1]


def test_same_seed_same_state_as_the_central_trainer(tiny_bert: str, public: Path) -> None:
    model_cfg = ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2)
    cfg = _cfg(public, seed=4)
    first = warm_start(cfg, model_cfg).state
    again = warm_start(cfg, model_cfg).state
    train, _ = public_split(read_public(cfg.data)[0], cfg)
    central = get_trainable_state(fit(train, model_cfg, train_config(cfg), progress=False).model)
    for name in central:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
        np.testing.assert_array_equal(first[name], central[name], err_msg=name)
    other = warm_start(_cfg(public, seed=5), model_cfg).state
    assert any(not np.array_equal(first[n], other[n]) for n in first)


@pytest.mark.parametrize(
    ("model", "prefix"),
    [({"trainable": "head", "pool_layers": 2}, "prefix-"), ({"lora_layers": 1}, "prefix-")],
)
def test_head_only_and_top_layer_lora_train_on_cached_frozen_features(
    tiny_bert: str, public: Path, tmp_path: Path, model: dict, prefix: str
) -> None:
    model_cfg = ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2, **model)
    cache = tmp_path / "cache"
    result = warm_start(_cfg(public), model_cfg, cache_dir=cache)
    assert {n: v.shape for n, v in result.state.items()} == state_layout(RewardModel.build(model_cfg))
    if model_cfg.trainable == "head":
        assert set(result.state) == {"head.bias", "head.weight"}
    assert list(cache.glob(f"{prefix}*.safetensors")), "the frozen part's output was not cached"
    assert list(cache.glob("tokens-*.safetensors"))


def test_max_pairs_samples_and_holdout_zero_gives_no_accuracy(tiny_bert: str, public: Path) -> None:
    model_cfg = ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2)
    cfg = _cfg(public, max_pairs=12, holdout=0.0, epochs=1.0)
    records, skipped = read_public(cfg.data)
    train, held = public_split(records, cfg)
    assert (len(train), len(held), skipped) == (12, 0, 0)
    assert train == public_split(records, cfg)[0]  # seeded
    record = warm_start(cfg, model_cfg).record
    assert (record["pairs"], record["held_out_pairs"], record["accuracy"]) == (12, 0, None)


def test_a_missing_or_bad_file_is_named_with_the_key(tmp_path: Path, public: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.jsonl: warm_start\.data: file not found"):
        read_public([str(public), str(tmp_path / "missing.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "a", "rejected": "a"}\n' + public.read_text())
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1.*warm_start\.data: .*skip_invalid = true"):
        read_public([str(bad)])
    records, skipped = read_public([str(bad)], skip_invalid=True)
    assert (len(records), skipped) == (40, 1)
    with pytest.raises(ConfigError, match="warm_start.data is empty"):
        read_public([])


def test_the_shared_public_helpful_pairs_read_as_6240_lines() -> None:
    files = sorted(HH_HELPFUL.glob("*.jsonl.gz"))
    if not files:
        pytest.skip("../shared/data/hh-rlhf-helpful not present (a user's clone); CI has it")
    with pytest.raises(DataError, match="skip_invalid"):  # 36 pairs have identical responses
        read_public([str(f) for f in files])
    records, skipped = read_public([str(f) for f in files], skip_invalid=True)
    assert (len(records), skipped) == (6204, 36)
    train, held = public_split(records, WarmStartConfig(data=tuple(map(str, files))))
    assert (len(train), len(held)) == (5584, 620)
