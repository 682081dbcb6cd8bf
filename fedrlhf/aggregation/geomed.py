"""Geometric median by the smoothed Weiszfeld algorithm (RFA, Pillutla et al., IEEE TSP 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    check_majority,
    check_weights,
    stack,
)
from fedrlhf.aggregation.blocks import absmax, column_median, pow2_scale, row_blocks, weighted_sum

__all__ = ["geometric_median"]


def geometric_median(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    eps: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
    num_malicious: int = 0,
) -> np.ndarray:
    """Weighted geometric median ``argmin_v sum_i w_i ||v - x_i||`` (RFA).

    Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE Trans. Signal Processing 2022, Algorithm 2 (smoothed Weiszfeld):
    repeat ``v <- sum_i b_i x_i / sum_i b_i`` with
    ``b_i = w_i / max(eps, ||v - x_i||)``, at most ``max_iter`` times. ``eps``
    keeps the step defined when ``v`` lands on an update. It starts at the
    coordinate-wise median, not at RFA's weighted mean: Weiszfeld closes the gap
    to a cluster of honest updates by a constant factor per step, so a start
    dragged ``D`` away by far attackers costs ``~log(D / spread)`` of the
    ``max_iter`` steps (hundreds at float64's extremes).

    Numerically safe at any scale: the updates are first divided by a power of two
    ``s`` near their largest absolute value (exact in floating point) and the result
    multiplied back, so distances never overflow (plain float64 distances do above
    ~1e153 and gave NaN). ``eps`` stays in the updates' own units. Each step is two passes over
    the updates, a block of rows (the distances) or coordinates (the weighted mean) at a time.

    Stopping differs from RFA's code (relative change of the objective): that
    tolerance scales with the outliers' distance, so far-away attackers could
    loosen it. Here we stop once a step moves ``v`` by at most ``tol`` times the
    median distance from ``v`` to the updates (at least ``eps``), a scale set
    by the honest majority.

    Breakdown point 1/2: with a fraction ``a < 1/2`` of arbitrary updates and the
    rest within radius ``r`` of a point ``c``, ``||v - c|| <= r (1 - a) / sqrt(1 - 2a)``
    (Minsker, Bernoulli 2015, Lemma 2.1); so it refuses ``n <= 2 * num_malicious`` updates.
    """
    x = stack(updates, rule="geometric_median")
    w = check_weights(weights, x.shape[0], rule="geometric_median")
    check_majority(x.shape[0], num_malicious, rule="geometric_median")
    if not (eps > 0 and np.isfinite(eps)) or not tol >= 0:
        raise AggregationError(f"geometric_median: need eps > 0 and tol >= 0, got eps={eps!r}, tol={tol!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise AggregationError(f"geometric_median: max_iter must be a positive integer, got {max_iter!r}.")
    scale = pow2_scale(absmax(x))  # 2**k: exact, |x / s| < 2
    floor = min(max(eps / scale, 1e-300), 1e100)  # 1 / floor finite and nonzero: |x| < 2 here
    w = w / w.max()
    v = column_median(x) / scale
    for _ in range(max_iter):
        dist = _distances(x, scale, v)
        beta = w / np.maximum(floor, dist)
        new = weighted_sum(x, beta, scale=scale) / beta.sum()
        step = float(np.linalg.norm(new - v))
        v = new
        if step <= tol * max(float(np.median(dist)), floor):
            break
    return (v * scale).astype(x.dtype)


def _distances(x: np.ndarray, scale: float, v: np.ndarray) -> np.ndarray:
    """``||x_i / scale - v||`` for every row, a block of rows at a time."""
    out = np.empty(x.shape[0])
    for span, b in row_blocks(x):
        b /= scale
        b -= v
        out[span] = np.sqrt(np.einsum("ij,ij->i", b, b))
    return out
