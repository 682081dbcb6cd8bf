"""The one-run canary audit must fail plain training and a DP run with its noise off, and pass real DP.

Settings measured on a tiny BERT (hidden 64; the 32-wide fixture cannot memorise
~100 random canaries quickly), m = 200 canaries, 16 base pairs, 20 epochs, seeds 0-2:
no DP -> lower bound 1.72-1.94; noise silently off (C = 100) -> 1.48-2.02; DP at
epsilon 0.5 -> 0.0.  The largest bound m = 200 canaries can show is about 3.3.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.models import save_tiny_backbone
from fedrlhf.training import encode
from fedrlhf.training import private as private_module
from fedrlhf.training.canary import audit_scores, canary_words, make_canaries, run_canary_audit
from tests.helpers import synthetic_pairs

pytestmark = pytest.mark.filterwarnings(
    "ignore:DP-SGD runs with secure_mode=False",
    "ignore:.*Secure RNG turned off.*",
    "ignore:Full backward hook is firing",
    "ignore:Optimal order is the (largest|smallest) alpha",
)

TRAIN = TrainConfig(epochs=20, batch_size=16, lr=5e-3, seed=0)
PRIVATE = PrivacyConfig(enabled=True, target_epsilon=0.5, max_grad_norm=100.0)
"""A large C keeps clipping from hiding a missing noise; the guarantee does not depend on C."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 shared cores run tiny models far slower
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_cfg(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    path = save_tiny_backbone(tmp_path_factory.mktemp("tiny") / "bert64", kind="bert", hidden=64)
    return ModelConfig(backbone=str(path), max_length=32)


def _audit(model_cfg: ModelConfig, privacy: PrivacyConfig | None, ledger: Path) -> dict[str, Any]:
    return run_canary_audit(
        model_cfg, TRAIN, privacy, synthetic_pairs(16), num_canaries=200, seed=0, ledger_path=ledger
    )


def test_canaries_are_unique_seeded_and_fit_the_model(model_cfg: ModelConfig) -> None:
    from fedrlhf.models import RewardModel

    model = RewardModel.build(model_cfg)
    words = canary_words(model)
    records, included = make_canaries(words, 300, seed=3)
    again, included_again = make_canaries(words, 300, seed=3)
    assert records == again and np.array_equal(included, included_again)
    assert len({r.prompt for r in records}) == 300 and all(r.chosen != r.rejected for r in records)
    assert included.dtype == np.bool_ and 100 < included.sum() < 200
    assert make_canaries(words, 300, seed=4)[0] != records
    data = encode(records, model.tokenizer, 32)
    assert int(data.lengths.max()) < 32  # never truncated: the whole canary is seen


def test_audit_scores_separate_members() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    scores = np.where(included, 5.0, 0.0) + rng.normal(size=200)
    leaked = audit_scores(scores, included, beta=0.05, delta=1e-5)
    blind = audit_scores(rng.normal(size=200), included, beta=0.05, delta=1e-5)
    assert leaked["empirical_epsilon_lower_bound"] > 2.5 and leaked["m"] == 200
    assert blind["empirical_epsilon_lower_bound"] < 0.5


def test_audit_finds_leakage_without_dp(model_cfg: ModelConfig, tmp_path: Path) -> None:
    result = _audit(model_cfg, None, tmp_path / "ledger.json")
    assert result["claimed_epsilon"] == math.inf
    assert result["empirical_epsilon_lower_bound"] > 1.2, result
    assert not (tmp_path / "ledger.json").exists()


def test_audit_passes_dp(model_cfg: ModelConfig, tmp_path: Path) -> None:
    result = _audit(model_cfg, PRIVATE, tmp_path / "ledger.json")
    assert 0.45 <= result["claimed_epsilon"] <= 0.5
    assert result["empirical_epsilon_lower_bound"] < result["claimed_epsilon"], result


class _NoiselessEngine(PrivacyEngine):
    """A broken DP: clips and accounts as configured but adds no noise."""

    def make_private(self, **kwargs: Any) -> Any:
        return super().make_private(**{**kwargs, "noise_multiplier": 0.0})


def test_audit_catches_dp_with_the_noise_silently_off(
    model_cfg: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(private_module, "PrivacyEngine", _NoiselessEngine)
    result = _audit(model_cfg, PRIVATE, tmp_path / "ledger.json")
    assert result["claimed_epsilon"] <= 0.5  # the ledger still believes the noise was added
    assert result["empirical_epsilon_lower_bound"] > 2 * result["claimed_epsilon"], result
