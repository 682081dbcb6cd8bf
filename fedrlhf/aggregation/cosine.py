"""Cosine filter: drop the updates that point the same way as a coalition, average the rest.

Honest updates of a small LoRA over private, mostly different data are close to
orthogonal in parameter space (measured on MiniLM LoRA deltas, 332 161
coordinates: pairwise cosine 0.003 +- 0.03 on HH pairs). Attackers who pursue
one goal share a direction whatever their data: backdoor clients that trained
on the same trigger (cosine 0.14-0.23 with each other on HH), sybil clones,
ALIE / IPM / min-max forgeries (identical vectors, cosine 1). The score of an
update is the mean of its ``num_malicious - 1`` highest cosine similarities to
the other updates (its highest one when ``num_malicious = 1``): how strongly it
belongs to a group of ``num_malicious`` that agree. This is the signal of
FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020: the maximum pairwise cosine)
and of FLAME's clustering (Nguyen et al., USENIX Security 2022: cosine
distances); FoolsGold's logit weighting only acts near-identical sybils
(cosine > ~0.9) and FLAME's HDBSCAN is not in the stack, so fedrlhf drops the
``num_malicious`` highest scores instead, as DnC does with its own score.

No library has this rule; it is written by hand. It has no worst-case
guarantee: attackers who decorrelate their updates (noise, or each its own
direction) are not filtered, which is why the updates are first clipped to the
median norm (FLAME's adaptive clipping), so such an update weighs no more than
an honest one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import as_matrix, filtered_mean, keep_all_but_highest, nonnegative_int

__all__ = ["cosine_filter", "cosine_keep", "coalition_scores"]


def coalition_scores(updates: Sequence[np.ndarray], *, num_malicious: int) -> np.ndarray:
    """Per update: the mean of its ``max(1, num_malicious - 1)`` highest cosines to the others."""
    x = as_matrix(updates, rule="cosine_filter").astype(np.float64)
    f = nonnegative_int(num_malicious, name="num_malicious", rule="cosine_filter")
    n = x.shape[0]
    if n < 2:
        return np.zeros(n)
    norms = np.linalg.norm(x, axis=1)
    u = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
    c = u @ u.T
    np.fill_diagonal(c, -np.inf)
    m = min(max(1, f - 1), n - 1)
    return np.sort(c, axis=1)[:, -m:].mean(axis=1)


def cosine_keep(updates: Sequence[np.ndarray], *, num_malicious: int) -> np.ndarray:
    """Indices (sorted) of the updates kept: all but the ``num_malicious`` highest scores."""
    score = coalition_scores(updates, num_malicious=num_malicious)
    return keep_all_but_highest(score, int(num_malicious), rule="cosine_filter", what="num_malicious")


def cosine_filter(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    num_malicious: int,
    clip_median: bool = True,
) -> np.ndarray:
    """Drop the ``num_malicious`` updates most aligned with others (:func:`coalition_scores`), then average.

    Ties at the cut are kept, so the result does not depend on the order of the
    updates. ``clip_median`` (default) scales every update to at most the median
    update norm before averaging; the output norm is then at most that median.
    With ``num_malicious = 0`` the rule is the (clipped) mean.
    """
    keep = cosine_keep(updates, num_malicious=num_malicious)
    return filtered_mean(updates, weights, keep, clip_median=clip_median, rule="cosine_filter")
