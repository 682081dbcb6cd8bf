"""Coordinate-wise median and trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    check_majority,
    check_weights,
    nonnegative_int,
    stack,
)
from fedrlhf.aggregation.blocks import column_blocks, column_median

__all__ = ["coordinate_median", "trimmed_mean", "trim_count"]


def coordinate_median(
    updates: Sequence[np.ndarray], weights: Sequence[float] | None = None, *, num_malicious: int = 0
) -> np.ndarray:
    """Coordinate-wise median (``np.median``: mean of the two middle values for even n).

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018. Same as Flower's ``FedMedian`` /
    ``aggregate_median``. ``weights`` are checked but not used (as in Flower).
    With fewer than half the updates malicious, every coordinate stays within
    the honest updates' range; so it refuses ``n <= 2 * num_malicious`` updates
    (a median of two is their mean).
    """
    x = stack(updates, rule="coordinate_median")
    check_weights(weights, x.shape[0], rule="coordinate_median")
    check_majority(x.shape[0], num_malicious, rule="coordinate_median")
    return column_median(x).astype(x.dtype)


def trim_count(n: int, *, beta: float | None = None, num_trim: int | None = None) -> int:
    """How many values to drop at each end of each coordinate; exactly one of ``beta``/``num_trim``.

    ``beta`` is a fraction in ``[0, 0.5)`` and rounds *down*: ``int(beta * n)``,
    as Flower's ``trim_mean`` and ``scipy.stats.trim_mean`` do. ``2 * num_trim``
    must be below ``n``.
    """
    if (beta is None) == (num_trim is None):
        raise AggregationError("trimmed_mean: give exactly one of beta (a fraction) or num_trim (a count).")
    if beta is not None:
        if isinstance(beta, bool) or not 0.0 <= float(beta) < 0.5:
            raise AggregationError(f"trimmed_mean: beta must be in [0, 0.5), got {beta!r}.")
        return int(float(beta) * n)
    k = nonnegative_int(num_trim, name="num_trim", rule="trimmed_mean")
    if 2 * k >= n:
        raise AggregationError(
            f"trimmed_mean: num_trim={k} drops all {n} updates; use num_trim < n/2 or sample more clients."
        )
    return k


def trimmed_mean(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    beta: float | None = None,
    num_trim: int | None = None,
    num_malicious: int = 0,
) -> np.ndarray:
    """Coordinate-wise trimmed mean: drop the ``k`` largest and ``k`` smallest values, average the rest.

    Yin et al., ICML 2018. ``k = int(beta * n)`` (rounded down, like Flower's
    ``FedTrimmedAvg`` and scipy) or ``k = num_trim``, but never fewer than
    ``num_malicious``: the paper's guarantee needs ``k >= f`` (the number of
    malicious updates), and then the result stays within the honest updates'
    coordinate range. So ``beta = 0.1`` with 9 updates and f = 2 trims 2 per
    side, not ``int(0.9) = 0`` (a plain mean); ``n <= 2f`` is refused.
    ``weights`` are checked but not used (as in Flower).
    """
    x = stack(updates, rule="trimmed_mean")
    check_weights(weights, x.shape[0], rule="trimmed_mean")
    n = x.shape[0]
    f = check_majority(n, num_malicious, rule="trimmed_mean", extra=" to trim num_malicious per side")
    k = max(trim_count(n, beta=beta, num_trim=num_trim), f)
    out = np.empty(x.shape[1])
    for span, b in column_blocks(x):  # in float64, a block of coordinates at a time
        kept = np.partition(b, sorted({k, n - k - 1}), axis=0)[k : n - k] if k else b
        out[span] = kept.mean(axis=0)
    return out.astype(x.dtype)
