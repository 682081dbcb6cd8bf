"""Training on a device's records end to end: tokenize (cached), train (plain or DP), account.

This is what ``fedrlhf train`` and a federated client both call, so central and
federated training run the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError
from fedrlhf.feedback.records import Feedback
from fedrlhf.models.reward import RewardModel
from fedrlhf.training.data import EncodedFeedback, encode_cached
from fedrlhf.training.local import TrainResult, train


@dataclass
class FitResult:
    """The trained model, what the loop did, and (with DP) the privacy.json contents."""

    model: RewardModel
    train: TrainResult
    privacy: dict[str, Any] | None


def check_delta(delta: float, num_units: int) -> None:
    """Refuse a DP delta that is not below 1/N for N units (pairs or ratings), one line why."""
    if num_units > 0 and delta >= 1.0 / num_units:
        raise ConfigError(
            f"privacy.delta (--dp-delta) is {delta:g}, not below 1/N = {1.0 / num_units:.3g} for "
            f"N = {num_units} records: a run that publishes a record outright meets such a delta; "
            f"use a delta well below {1.0 / num_units:.3g}"
        )


def train_model(
    model: RewardModel,
    data: EncodedFeedback,
    train_cfg: TrainConfig,
    *,
    privacy: PrivacyConfig | None = None,
    ledger_path: Path | None = None,
    progress: bool = True,
    label: str = "train",
    runs: int = 1,
) -> tuple[TrainResult, dict[str, Any] | None]:
    """Train ``model`` in place, privately when ``privacy.enabled`` (accounted in the ledger)."""
    if privacy is not None and privacy.enabled:
        from fedrlhf.training.private import train_private

        if ledger_path is None:
            raise ValueError("DP training needs a ledger_path to account the privacy spent")
        return train_private(
            model,
            data,
            train_cfg,
            privacy,
            ledger_path=ledger_path,
            progress=progress,
            label=label,
            runs=runs,
        )
    return train(model, data, train_cfg, progress=progress), None


def fit(
    records: Sequence[Feedback],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    privacy: PrivacyConfig | None = None,
    ledger_path: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> FitResult:
    """Build a reward model and train it on ``records``.

    Raises:
        ConfigError: DP is on and ``privacy.delta`` is not below 1/len(records).
    """
    if privacy is not None and privacy.enabled:
        check_delta(privacy.delta, len(records))
    model = RewardModel.build(model_cfg, seed=train_cfg.seed)
    data = encode_cached(records, model.tokenizer, model_cfg.max_length, cache_dir)
    result, report = train_model(
        model, data, train_cfg, privacy=privacy, ledger_path=ledger_path, progress=progress
    )
    return FitResult(model, result, report)
