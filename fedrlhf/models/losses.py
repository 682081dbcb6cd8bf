"""Reward-model losses as pure functions (per-sample, no reduction).

Each returns a ``[B]`` tensor so that callers (and Opacus) decide the reduction;
:data:`LOSSES` selects them by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def bradley_terry(margin: torch.Tensor) -> torch.Tensor:
    """Pairwise loss ``-log sigmoid(r_chosen - r_rejected)`` per pair.  ``margin``: [B]."""
    return -F.logsigmoid(margin)


def rating_logistic(reward: torch.Tensor, label: torch.Tensor, *, reference: float = 0.0) -> torch.Tensor:
    """Unpaired thumbs up/down loss ``-log sigmoid(label * (r - z0))``.

    KTO-style: a response is judged against a reference point ``z0`` instead of a
    second response, so ratings alone can train the model.  ``label``: +1 / -1.
    """
    return -F.logsigmoid(label * (reward - reference))


def dpo(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    """Direct Preference Optimization (Rafailov et al. 2023), per pair."""
    logits = (policy_chosen_logp - ref_chosen_logp) - (policy_rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * logits)


def kto(
    policy_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    label: torch.Tensor,
    *,
    beta: float = 0.1,
    reference: float = 0.0,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on unpaired thumbs up/down, per answer.

    ``1 - sigmoid(label * beta * (log-ratio - z0))`` weighted by the label's weight, where the
    log-ratio is ``policy_logp - ref_logp`` and ``label`` is +1 / -1.  The reference point
    ``z0`` is a fixed number, not the paper's batch KL estimate: an estimate from the batch
    would make one answer's gradient depend on the others, and under DP-SGD one answer must
    stay one sample.
    """
    z = label * beta * ((policy_logp - ref_logp) - reference)
    weight = torch.where(label > 0, desirable_weight, undesirable_weight).to(z.dtype)
    return weight * (1.0 - torch.sigmoid(z))


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bradley_terry": bradley_terry,
    "rating_logistic": rating_logistic,
    "dpo": dpo,
    "kto": kto,
}
