"""Bucketing, a pre-aggregation composable with any robust rule.

Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing",
ICLR 2022. The updates are shuffled and averaged in buckets of ``s``; the robust rule runs
over the ``ceil(n / s)`` bucket means. Averaging shrinks the honest inputs' spread (their
heterogeneity) by about ``sqrt(s)``, while each attacker still spoils at most one bucket:
the rule over buckets must tolerate f of them, so it needs ``ceil(n / s) > 2f`` buckets.
Same definition as ByzFL's ``Bucketing`` (the last bucket holds the remainder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    check_weights,
    nonnegative_int,
    stack,
)

__all__ = ["bucketing", "num_buckets"]


def num_buckets(n: int, bucket_size: int) -> int:
    """How many buckets ``n`` updates fill: ``ceil(n / bucket_size)``."""
    return math.ceil(n / bucket_size)


def bucketing(
    updates: Sequence[np.ndarray] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    bucket_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle with ``rng``, average buckets of ``bucket_size``; returns ``(means [b, d], weights [b])``.

    A bucket's mean weighs its members by ``weights`` (a bucket whose weights are all 0 takes
    the plain mean) and its weight is their sum. ``bucket_size = 1`` only shuffles.
    """
    x = stack(updates, rule="bucketing")
    w = check_weights(weights, x.shape[0], rule="bucketing")
    s = nonnegative_int(bucket_size, name="bucket_size", rule="bucketing")
    if s < 1:
        raise AggregationError("bucketing: bucket_size must be at least 1 (1 = no bucketing).")
    order = rng.permutation(x.shape[0])
    means = np.empty((num_buckets(len(order), s), x.shape[1]), dtype=x.dtype)
    sums = []
    for b, start in enumerate(range(0, len(order), s)):
        idx = order[start : start + s]
        wb = w[idx]
        total = float(wb.sum())
        mean = (
            (wb @ x[idx].astype(np.float64)) / total if total > 0 else x[idx].astype(np.float64).mean(axis=0)
        )
        means[b] = mean
        sums.append(total)
    return means, np.asarray(sums)
