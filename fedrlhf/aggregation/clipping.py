"""Norm clipping rules: norm bounding (Sun et al., 2019) and centered clipping (Karimireddy et al., 2021)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    as_matrix,
    check_majority,
    check_weights,
    nonnegative_int,
    output_dtype,
    stack,
)
from fedrlhf.aggregation.blocks import column_median, row_blocks, row_norms, weighted_sum

__all__ = ["centered_clipping", "clip_named", "clip_to_norm", "norm_bound"]


def _check_bound(value: float, *, name: str, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise AggregationError(f"{rule}: {name} must be a positive number, got {value!r}.")
    if not (np.isfinite(value) and value > 0):
        raise AggregationError(f"{rule}: {name} must be positive and finite, got {value!r}.")
    return float(value)


def _clip_factors(norms: np.ndarray, bound: float) -> np.ndarray:
    """``min(1, bound / norm)`` per row, 1 where the norm is 0."""
    return np.divide(bound, norms, out=np.ones_like(norms), where=norms > bound)


def clip_to_norm(update: np.ndarray, *, max_norm: float) -> np.ndarray:
    """Scale ``update`` down so its L2 norm is at most ``max_norm`` (unchanged if already inside).

    A client can call this before secure aggregation: the sum of clipped
    updates is then all the server needs for :func:`norm_bound`.
    """
    bound = _check_bound(max_norm, name="max_norm", rule="clip_to_norm")
    x = as_matrix([update], rule="clip_to_norm")
    x *= _clip_factors(row_norms(x), bound)[:, None]
    return x[0].astype(output_dtype([update]))


def clip_named(arrays: Mapping[str, np.ndarray], *, max_norm: float) -> dict[str, np.ndarray]:
    """:func:`clip_to_norm` for an update held as named arrays: one factor for all of them.

    The L2 norm is over every value of every array, as if the update were one flat vector,
    so the result flattens to ``clip_to_norm(flat, max_norm=max_norm)``. Dtypes are kept.
    """
    bound = _check_bound(max_norm, name="max_norm", rule="clip_named")
    norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(a, dtype=np.float64))) for a in arrays.values())))
    factor = bound / norm if norm > bound else 1.0
    return {name: (np.asarray(a) * factor).astype(np.asarray(a).dtype) for name, a in arrays.items()}


def norm_bound(
    updates: Sequence[np.ndarray], weights: Sequence[float] | None = None, *, max_norm: float
) -> np.ndarray:
    """Clip every update to L2 norm ``max_norm``, then take the weighted mean.

    Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated
    Learning?", 2019. The output norm is at most ``max_norm``. Because it is a
    mean of clipped updates it works on sums: with secure aggregation, clip on
    the client (:func:`clip_to_norm`) and average the sum on the server.
    """
    bound = _check_bound(max_norm, name="max_norm", rule="norm_bound")
    x = stack(updates, rule="norm_bound")
    w = check_weights(weights, x.shape[0], rule="norm_bound")
    return (weighted_sum(x, w * _clip_factors(row_norms(x), bound)) / w.sum()).astype(x.dtype)


def _start(x: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """The first centre: ``center`` scaled to at most the median update norm, else the coordinate median."""
    if center is None:
        return column_median(x)
    v = as_matrix([center], rule="centered_clipping")[0]
    if v.shape[0] != x.shape[1]:
        raise AggregationError(
            f"centered_clipping: center has length {v.shape[0]}, updates {x.shape[1]}; they must match."
        )
    bound = float(np.median(row_norms(x)))
    norm = float(row_norms(v[None, :])[0])
    return v * (bound / norm) if norm > bound else v


def _distances(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``||x_i - v||`` for every row, a block of rows at a time (overflow-safe)."""
    out = np.empty(x.shape[0])
    for span, b in row_blocks(x):
        b -= v
        out[span] = row_norms(b)
    return out


def _clipped_step(x: np.ndarray, v: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``sum_i coef_i (x_i - v)``, a block of rows at a time."""
    step = np.zeros(x.shape[1])
    for span, b in row_blocks(x):
        b -= v
        step += coef[span] @ b
    return step


def centered_clipping(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    tau: float | None = None,
    tau_scale: float | None = None,
    center: np.ndarray | None = None,
    iterations: int = 1,
    num_malicious: int = 0,
) -> np.ndarray:
    """Centered clipping: ``v <- v + sum_i w_i clip_r(x_i - v) / sum_i w_i``, ``iterations`` times.

    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021: clip around the previous aggregate (the server's
    momentum), iterated. Each malicious update moves ``v`` by at most ``r * w_i / sum w``
    per iteration. The radius ``r`` is exactly one of:

    - ``tau``: a fixed L2 radius (as in the paper and ByzFL);
    - ``tau_scale``: ``tau_scale`` times the median distance of the updates to the current
      ``v``, recomputed each iteration, so it follows the updates' scale (a fixed radius far
      below it turns the rule into a norm bound around ``v``, far above it into the mean).
      With an honest majority the median distance is set by honest updates.

    ``center`` is ``v_0``: the previous round's aggregate when the caller keeps one,
    first scaled down to at most the median update norm (a stale centre from a round
    with larger updates must not pin the result; the output then stays within the
    convex hull of the centre and the updates). Without one, ``v_0`` is the
    coordinate-wise median of the updates, a robust start (ByzFL starts at zero).
    Refuses ``n <= 2 * num_malicious`` updates.
    """
    if tau is not None and tau_scale is None:
        bound = _check_bound(tau, name="tau", rule="centered_clipping")
    elif tau_scale is not None and tau is None:
        bound = _check_bound(tau_scale, name="tau_scale", rule="centered_clipping")
    else:
        raise AggregationError(
            "centered_clipping: give exactly one of tau (a radius) or tau_scale (a multiple)."
        )
    steps = nonnegative_int(iterations, name="iterations", rule="centered_clipping")
    if steps < 1:
        raise AggregationError("centered_clipping: iterations must be at least 1.")
    x = stack(updates, rule="centered_clipping")
    w = check_weights(weights, x.shape[0], rule="centered_clipping")
    check_majority(x.shape[0], num_malicious, rule="centered_clipping")
    v = _start(x, center)
    for _ in range(steps):  # two passes over the updates: the distances, then the clipped step
        norms = _distances(x, v)
        radius = bound if tau is not None else bound * float(np.median(norms))
        v = v + _clipped_step(x, v, w * _clip_factors(norms, radius)) / w.sum()
    return v.astype(x.dtype)
