"""Evaluation of a reward model on preference pairs: accuracy, margin, calibration."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrlhf.errors import ConfigError
from fedrlhf.feedback.records import Preference
from fedrlhf.models.prefix import supports_prefix_cache
from fedrlhf.models.reward import RewardModel
from fedrlhf.training.data import PAIR, EncodedFeedback, batch_tensors


@dataclass
class EvalResult:
    """Pairwise metrics.  ``margins`` are r(chosen) - r(rejected), in input order."""

    pairs: int
    accuracy: float
    mean_margin: float
    ece: float
    margins: np.ndarray

    def to_dict(self) -> dict[str, float | int]:
        return {
            "pairs": self.pairs,
            "accuracy": self.accuracy,
            "mean_margin": self.mean_margin,
            "ece": self.ece,
        }


@torch.inference_mode()
def score_pairs(model: RewardModel, data: EncodedFeedback, *, batch_size: int = 64) -> np.ndarray:
    """Margins of the preference pairs in ``data`` (ratings are ignored), in input order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    is_pair = data.kind == PAIR
    pairs = data if bool(is_pair.all()) else data.subset(torch.nonzero(is_pair).flatten())
    n = len(pairs)
    margins = np.zeros(n, dtype=np.float64)
    if n == 0:
        return margins
    model.eval()
    if supports_prefix_cache(model):  # the frozen part's output is cached: run only what trains
        return _cached_margins(model, pairs, batch_size)
    order = torch.argsort(pairs.lengths.max(dim=1).values)  # similar lengths together: less padding
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        ids, mask = batch_tensors(pairs.input_ids[idx], pairs.lengths[idx])
        margin = model(ids[:, 0], mask[:, 0]) - model(ids[:, 1], mask[:, 1])
        margins[idx.numpy()] = margin.double().numpy()
    return margins


def _cached_margins(model: RewardModel, pairs: EncodedFeedback, batch_size: int) -> np.ndarray:
    """:func:`score_pairs` on the cached frozen-prefix output (computed once per dataset, shared
    with training): each later evaluation of the same pairs costs only the top of the model."""
    from fedrlhf.models.prefix import TopStack
    from fedrlhf.training.features import cached_prefix_states

    with torch.inference_mode(False), torch.no_grad():  # cached tensors must stay usable for training
        states = cached_prefix_states(model, pairs)
    top = TopStack(model).eval()
    n = len(pairs)
    margins = np.zeros(n, dtype=np.float64)
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        if model.config.trainable == "head":  # pooled features [U, 2, F]: no mask needed
            first, second = top(states[rows, 0], None), top(states[rows, 1], None)
        else:
            width = states.shape[2]
            mask = (torch.arange(width).view(1, 1, -1) < pairs.lengths[rows, :, None]).long()
            first, second = top(states[rows, 0], mask[:, 0]), top(states[rows, 1], mask[:, 1])
        margins[start : start + len(first)] = (first - second).double().numpy()
    return margins


def expected_calibration_error(margins: np.ndarray, *, bins: int = 10) -> float:
    """ECE of p = sigmoid(margin) as the probability that the chosen response wins.

    Confidence is max(p, 1 - p); a prediction is correct when p > 0.5.
    """
    if margins.size == 0:
        return float("nan")
    p = 1.0 / (1.0 + np.exp(-margins))
    conf = np.maximum(p, 1.0 - p)
    correct = (p > 0.5).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def metrics_from_margins(margins: np.ndarray) -> EvalResult:
    """Accuracy counts ties as half right (a constant model scores 50 %, not 0 %)."""
    n = int(margins.size)
    if n == 0:
        return EvalResult(0, float("nan"), float("nan"), float("nan"), margins)
    acc = float(((margins > 0) + 0.5 * (margins == 0)).mean())
    return EvalResult(n, acc, float(margins.mean()), expected_calibration_error(margins), margins)


def evaluate(model: RewardModel, data: EncodedFeedback, *, batch_size: int = 64) -> EvalResult:
    """Pairwise accuracy, mean margin and ECE over the pairs in ``data``."""
    return metrics_from_margins(score_pairs(model, data, batch_size=batch_size))


def pair_scorer(model: RewardModel, *, batch_size: int = 64) -> Callable[[Sequence[Preference]], np.ndarray]:
    """``preferences -> margins`` with ``model``: plugs a reward model into
    :class:`fedrlhf.feedback.quality.RewardModelJudge` (flag feedback the global model strongly disputes).
    """
    from fedrlhf.training.data import encode

    def score(pairs: Sequence[Preference]) -> np.ndarray:
        if not pairs:
            return np.zeros(0)
        return score_pairs(
            model, encode(list(pairs), model.tokenizer, model.config.max_length), batch_size=batch_size
        )

    return score
