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
    check_majority,
    check_weights,
    keep_all_but_highest,
    kept_mean,
    median_clip_factors,
    nonnegative_int,
    remembered,
    stack,
)
from fedrlhf.aggregation.blocks import column_blocks, gram, pow2_scale, row_norms

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


def _scores(x: np.ndarray, coords: np.ndarray, factors: np.ndarray, scale: float) -> np.ndarray:
    """Squared projections of the centred rows (on ``coords``) on their top right singular vector.

    The rows are ``x * factors / scale`` (median clipping; ``scale`` a power of two that keeps
    them finite). The top singular pair comes from the smaller Gram matrix, not an SVD of the
    ``n x b`` centred matrix Y: with ``b >= n`` coordinates, the top eigenpair ``(lam, u)`` of
    ``Y Y^T`` gives the projections ``Y v = sqrt(lam) u`` directly; with fewer, the top
    eigenvector ``v`` of ``Y^T Y`` gives ``Y v``. Same scores to ~1e-12 (tests/aggregation/test_dnc.py).
    """
    n = x.shape[0]
    if len(coords) >= n:
        lam, u = np.linalg.eigh(gram(x, cols=coords, row_scale=factors, scale=scale, centre="mean"))
        return max(float(lam[-1]), 0.0) * u[:, -1] ** 2
    y = np.empty((n, len(coords)))
    for span, b in column_blocks(x, cols=coords):
        y[:, span] = b * factors[:, None] / scale
    y -= y.mean(axis=0)
    _, v = np.linalg.eigh(y.T @ y)
    return (y @ v[:, -1]) ** 2


def _keep(
    x: np.ndarray, f: int, c: float, steps: int, share: float, clip_median: bool, seed: int
) -> np.ndarray:
    """:func:`dnc_keep` on the checked stack ``x``."""
    n, d = x.shape
    drop = math.floor(c * f)
    if drop == 0 or n < 2:
        return keep_all_but_highest(np.zeros(n), drop, rule="dnc", what="filter_fraction * num_malicious")
    factors = median_clip_factors(x) if clip_median else np.ones(n)
    scale = pow2_scale(float((row_norms(x) * factors).max()))  # |rows / scale| < 2
    rng = np.random.default_rng(seed)
    b = max(1, math.ceil(share * d))
    total = np.zeros(n)
    for _ in range(steps):
        coords = np.sort(rng.choice(d, size=b, replace=False))
        s = _scores(x, coords, factors, scale)
        top = float(s.max())
        total += s / top if top > 0 else s
    return keep_all_but_highest(total, drop, rule="dnc", what="filter_fraction * num_malicious")


def _checked_keep(
    x: np.ndarray,
    *,
    num_malicious: int,
    filter_fraction: float,
    iterations: int,
    subsample_fraction: float,
    clip_median: bool,
    seed: int,
    reuse: bool,
) -> np.ndarray:
    f = check_majority(x.shape[0], num_malicious, rule="dnc")
    steps = nonnegative_int(iterations, name="iterations", rule="dnc")
    c = _check_fraction(filter_fraction, name="filter_fraction", low_open=False)
    share = _check_fraction(subsample_fraction, name="subsample_fraction", low_open=True)
    if steps < 1:
        raise AggregationError("dnc: iterations must be at least 1.")
    params = {"f": f, "c": c, "steps": steps, "share": share, "clip_median": clip_median, "seed": seed}

    def compute() -> np.ndarray:
        return _keep(x, f, c, steps, share, clip_median, seed)

    return remembered("dnc", x, params, compute, reuse=reuse)


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
    """Indices (sorted) of the updates DnC keeps; see :func:`dnc` for the parameters.

    A second call on equal updates with equal parameters (the server's ``dropped_by`` after
    ``aggregate``) returns the first's answer without recomputing it.
    """
    return _checked_keep(
        stack(updates, rule="dnc"),
        num_malicious=num_malicious,
        filter_fraction=filter_fraction,
        iterations=iterations,
        subsample_fraction=subsample_fraction,
        clip_median=clip_median,
        seed=seed,
        reuse=True,
    )


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
    x = stack(updates, rule="dnc")
    w = check_weights(weights, x.shape[0], rule="dnc")
    keep = _checked_keep(
        x,
        num_malicious=num_malicious,
        filter_fraction=filter_fraction,
        iterations=iterations,
        subsample_fraction=subsample_fraction,
        clip_median=clip_median,
        seed=seed,
        reuse=False,
    )
    return kept_mean(x, w, keep, clip_median=clip_median, rule="dnc")
