"""Evaluating a model whose frozen part is cached runs only its top, on the same cache as training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedrlhf.config import ModelConfig, TrainConfig
from fedrlhf.models import RewardModel
from fedrlhf.training import encode
from fedrlhf.training.data import encode_cached
from fedrlhf.training.evaluate import evaluate
from fedrlhf.training.local import train


def _full_margins(model: RewardModel, data) -> np.ndarray:
    """Margins through the whole backbone, unit by unit (the uncached definition)."""
    out = []
    with torch.no_grad():
        for u in range(len(data)):
            r = []
            for slot in (0, 1):
                n = int(data.lengths[u, slot])
                ids = data.input_ids[u, slot, :n].long().unsqueeze(0)
                r.append(float(model(ids, torch.ones_like(ids))))
            out.append(r[0] - r[1])
    return np.array(out)


@pytest.mark.parametrize(
    "settings", [{"trainable": "head", "pool_layers": 2}, {"lora_layers": 1, "lora_r": 2}]
)
def test_cached_evaluation_equals_the_full_model(tiny_bert: str, pairs: list, settings: dict) -> None:
    model = RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32, **settings)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or n.startswith("head."):
                p.normal_(0, 0.5)
    data = encode(pairs[:12], model.tokenizer, 32)
    got = evaluate(model, data).margins
    tol = 1e-4 if settings.get("trainable") == "head" else 2e-2  # LoRA states are cached in float16
    np.testing.assert_allclose(got, _full_margins(model, data), rtol=tol, atol=tol)


def test_a_second_evaluation_does_not_run_the_backbone(
    tiny_bert: str, pairs: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=32, trainable="head"))
    data = encode_cached(pairs, model.tokenizer, 32, tmp_path)
    first = evaluate(model, data).accuracy
    assert list(tmp_path.glob("prefix-*.safetensors"))  # on disk beside the token cache

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone ran again")

    monkeypatch.setattr(model.backbone, "forward", refuse)
    assert evaluate(model, data).accuracy == first
    train(
        model, data, TrainConfig(batch_size=0, epochs=3.0, lr=0.05), progress=False
    )  # cache stays trainable
