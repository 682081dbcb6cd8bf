"""Divide-and-Conquer (DnC): a spectral filter over the updates, then their mean.

Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Algorithm 2.
Attackers who pull the model the same way (a backdoor, sybils, ALIE, min-max,
IPM) share a direction that honest, mostly independent updates do not: the top
singular vector of the centred updates. DnC scores each update by its squared
projection on that vector and drops the ``filter_fraction * num_malicious``
highest, over several random subsets of the coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    as_matrix,
    check_majority,
    filtered_mean,
    keep_all_but_highest,
    median_clip,
    nonnegative_int,
)

__all__ = ["dnc", "dnc_keep"]


def _check_fraction(value: float, *, name: str, low_open: bool) -> float:
    number = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    if not number or not math.isfinite(value):
        raise AggregationError(f"dnc: {name} must be a finite number, got {value!r}.")
    ok = (0 < value <= 1) if low_open else (value >= 0)
    if not ok:
        span = "(0, 1]" if low_open else "[0, inf)"
        raise AggregationError(f"dnc: {name} must be in {span}, got {value!r}.")
    return float(value)


def _scores(x: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Squared projections of the centred rows (on ``coords``) on their top right singular vector."""
    sub = x[:, coords]
    centred = sub - sub.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def dnc_keep(
    updates: Sequence[np.ndarray],
    *,
    num_malicious: int,
    filter_fraction: float = 1.0,
    iterations: int = 5,
    subsample_fraction: float = 0.2,
    clip_median: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted) of the updates DnC keeps; see :func:`dnc` for the parameters."""
    x = as_matrix(updates, rule="dnc")
    n, d = x.shape
    f = check_majority(n, num_malicious, rule="dnc")
    steps = nonnegative_int(iterations, name="iterations", rule="dnc")
    c = _check_fraction(filter_fraction, name="filter_fraction", low_open=False)
    share = _check_fraction(subsample_fraction, name="subsample_fraction", low_open=True)
    drop = math.floor(c * f)
    if steps < 1:
        raise AggregationError("dnc: iterations must be at least 1.")
    if drop == 0 or n < 2:
        return keep_all_but_highest(np.zeros(n), drop, rule="dnc", what="filter_fraction * num_malicious")
    if clip_median:
        x = median_clip(x)
    rng = np.random.default_rng(seed)
    b = max(1, math.ceil(share * d))
    total = np.zeros(n)
    for _ in range(steps):
        coords = np.sort(rng.choice(d, size=b, replace=False))
        s = _scores(x, coords)
        top = float(s.max())
        total += s / top if top > 0 else s
    return keep_all_but_highest(total, drop, rule="dnc", what="filter_fraction * num_malicious")


def dnc(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    num_malicious: int,
    filter_fraction: float = 1.0,
    iterations: int = 5,
    subsample_fraction: float = 0.2,
    clip_median: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """DnC: drop the updates that stand out along the main direction of disagreement; average the rest.

    Each of ``iterations`` passes draws ``subsample_fraction`` of the coordinates
    at random (``seed``), centres the updates on them, and scores each update by
    its squared projection on the top right singular vector, divided by the pass's
    largest score. The ``floor(filter_fraction * num_malicious)`` updates with the
    highest total over the passes are dropped (ties at the cut are kept, so the
    result does not depend on the order of the updates) and the rest averaged with
    ``weights``. Defaults: c = 1 and 5 passes of 20 % of the coordinates (FLPoison's).
    The paper instead keeps the intersection of the passes' kept sets; on few inputs
    (the 7 group means of a secure round, 3 dropped per pass) that can keep none, so
    fedrlhf drops exactly ``floor(c * f)``.

    ``clip_median`` (fedrlhf's addition, on by default) first scales every update
    to at most the median update norm, as FLAME's adaptive clipping does (Nguyen
    et al., USENIX Security 2022): a large update the filter misses (one of several
    independent noise vectors, say) then weighs no more than an honest one, and the
    output norm is at most the median norm. ``clip_median=False`` is the paper's rule.
    DnC has no worst-case guarantee; with ``num_malicious = 0`` it is the (clipped) mean. It needs
    an honest majority, more than ``2 * num_malicious`` updates: with fewer the attackers' shared
    direction is the majority's and the rule would keep exactly the attackers' vector.
    """
    keep = dnc_keep(
        updates,
        num_malicious=num_malicious,
        filter_fraction=filter_fraction,
        iterations=iterations,
        subsample_fraction=subsample_fraction,
        clip_median=clip_median,
        seed=seed,
    )
    return filtered_mean(updates, weights, keep, clip_median=clip_median, rule="dnc")
