"""Krum, Multi-Krum (Blanchard et al., NeurIPS 2017) and Bulyan (El Mhamdi et al., ICML 2018).

Distances are squared L2, as in the papers and in Flower, from the Gram matrix of the updates
centred on their coordinate-wise median, in float64 a block of coordinates at a time
(:func:`fedrlhf.aggregation.blocks.sq_distances`). Scores within ``1e-9`` (relative) of each
other count as tied, and ties are broken by the updates' values, not their position, so the
result does not depend on the order in which clients replied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    check_weights,
    nonnegative_int,
    stack,
)
from fedrlhf.aggregation.blocks import column_blocks, sq_distances, weighted_sum

__all__ = ["bulyan", "krum", "krum_scores", "krum_select", "multi_krum", "pairwise_sq_distances"]


def pairwise_sq_distances(x: np.ndarray) -> np.ndarray:
    """Symmetric matrix of squared L2 distances between the rows of ``x`` (``[n, d]``), in float64.

    From the Gram matrix of the rows centred on their coordinate-wise median, a block of
    coordinates at a time (:func:`fedrlhf.aggregation.blocks.sq_distances`): one BLAS call
    per block instead of a pass over the updates per row. Inputs above ~1e154 give infinite
    distances (the rules themselves rank in scaled units and stay finite).
    """
    dist, s = sq_distances(np.asarray(x))
    return dist * s * s


def _scores(dist: np.ndarray, num_closest: int, *, owned: bool = False) -> np.ndarray:
    """Sum of each row's ``num_closest`` smallest distances to *other* rows (0 with no other row).

    ``owned``: ``dist`` is a scratch copy the caller gives up (it is overwritten).
    """
    n = dist.shape[0]
    if n < 2:
        return np.zeros(n)
    others = dist if owned else dist.copy()
    np.fill_diagonal(others, np.inf)  # a row is never its own neighbour
    k = min(num_closest, n - 1)
    others.partition(k - 1, axis=1)
    return others[:, :k].sum(axis=1)


_TIE = 1e-9  # relative: Krum scores this close are tied (Gram-matrix distances round at ~1e-13)


def _rank(
    scores: np.ndarray,
    x: np.ndarray,
    w: np.ndarray | None = None,
    rows: list[int] | None = None,
    limit: int | None = None,
) -> list[int]:
    """Indices by increasing score; tied scores ordered by the rows' bytes, then weight.

    Scores count as tied when each is within ``_TIE`` (relative) of the one before in sorted
    order. Score ``i`` belongs to row ``rows[i]`` of ``x`` (row ``i`` when None); indices are
    into ``scores``; ``limit``: at least the first ``limit`` of the ranking (all when None).
    Order-invariant: the ranking of (update, weight) pairs does not depend on their positions.
    """
    at = list(range(len(scores))) if rows is None else rows
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = [0, *(np.flatnonzero(np.diff(s) > _TIE * np.abs(s[:-1])) + 1).tolist(), len(s)]
    ranked: list[int] = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        run = order[a:b].tolist()
        if len(run) > 1:
            run = sorted(run, key=lambda i: (x[at[i]].tobytes(), 0.0 if w is None else float(w[at[i]])))
        ranked.extend(run)
        if limit is not None and len(ranked) >= limit:
            break
    return ranked


def _check_krum(n: int, num_malicious: object, rule: str) -> int:
    f = nonnegative_int(num_malicious, name="num_malicious", rule=rule)
    if n <= 2 * f + 2:
        raise AggregationError(
            f"{rule}: needs more than 2*num_malicious + 2 = {2 * f + 2} updates, got {n}; "
            f"sample at least {2 * f + 3} clients or lower num_malicious to {max(0, (n - 3) // 2)}."
        )
    return f


def krum_scores(updates: Sequence[np.ndarray], *, num_malicious: int) -> np.ndarray:
    """Krum score of each update: sum of squared distances to its ``n - f - 2`` nearest others."""
    x = stack(updates, rule="krum")
    f = _check_krum(x.shape[0], num_malicious, "krum")
    dist, s = sq_distances(x)
    return _scores(dist, x.shape[0] - f - 2) * s * s


def _select(
    x: np.ndarray, num_malicious: object, num_selected: object, rule: str, w: np.ndarray | None = None
) -> list[int]:
    n = x.shape[0]
    f = _check_krum(n, num_malicious, rule)
    m = nonnegative_int(num_selected, name="num_selected", rule=rule)
    if not 1 <= m <= n - f:
        raise AggregationError(
            f"{rule}: num_selected must be in [1, n - num_malicious] = [1, {n - f}], got {m}."
        )
    return _rank(_scores(sq_distances(x)[0], n - f - 2), x, w)[:m]


def krum_select(updates: Sequence[np.ndarray], *, num_malicious: int, num_selected: int = 1) -> list[int]:
    """Indices of the ``num_selected`` lowest-scoring updates, best first (needs ``1 <= m <= n - f``)."""
    return _select(stack(updates, rule="multi_krum"), num_malicious, num_selected, "multi_krum")


def krum(
    updates: Sequence[np.ndarray], weights: Sequence[float] | None = None, *, num_malicious: int
) -> np.ndarray:
    """Krum: return the single update with the lowest Krum score.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017. Neighbours are counted as in the paper
    and Flower (``n - f - 2`` nearest *other* updates, squared distances). The
    paper's precondition ``n > 2f + 2`` is enforced here; Flower does not check
    it and clamps the neighbour count to at least 1 instead. ``weights`` are
    checked but not used.
    """
    x = stack(updates, rule="krum")
    check_weights(weights, x.shape[0], rule="krum")
    best = _select(x, num_malicious, 1, "krum")[0]
    return x[best].copy()


def multi_krum(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    num_malicious: int,
    num_selected: int,
) -> np.ndarray:
    """Multi-Krum: weighted mean of the ``num_selected`` lowest-scoring updates.

    El Mhamdi et al., ICML 2018 (Multi-Krum, from Blanchard et al., 2017).
    Scores are computed once, as in Flower's ``select_multikrum``; the selected
    updates are averaged with their ``weights`` (Flower: ``num-examples``;
    the paper: a plain mean, i.e. ``weights=None``).
    """
    x = stack(updates, rule="multi_krum")
    w = check_weights(weights, x.shape[0], rule="multi_krum")
    chosen = np.array(_select(x, num_malicious, num_selected, "multi_krum", w))
    if w[chosen].sum() <= 0:
        raise AggregationError(
            "multi_krum: the selected updates all have weight 0; give them positive weights."
        )
    return (weighted_sum(x, w[chosen], chosen) / w[chosen].sum()).astype(x.dtype)


def _iterative_krum(x: np.ndarray, dist: np.ndarray, f: int, theta: int) -> list[int]:
    """Apply Krum ``theta`` times, removing the winner each time (Bulyan, step 1)."""
    remaining = list(range(x.shape[0]))
    chosen: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(remaining, remaining)]  # a copy
        # Clamped to >= 1 as in Flower: the last rounds have fewer than 2f + 3 left.
        scores = _scores(sub, max(1, len(remaining) - f - 2), owned=True)
        best = remaining[_rank(scores, x, rows=remaining, limit=1)[0]]
        chosen.append(best)
        remaining.remove(best)
    return chosen


def _mean_closest_to_median(x: np.ndarray, rows: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate: the mean of the ``beta`` values of ``x[rows]`` closest to their median.

    Ties in distance go to the smaller value (order-invariant). Those ``beta`` values are a run
    of the sorted column: the run starts after the last ``a`` whose value is farther from the
    median than the value ``beta`` places above it (farther values lie only below that point).
    """
    out = np.empty(x.shape[1])
    for span, b in column_blocks(x, rows):
        t = b.shape[0]
        if beta == t:
            out[span] = b.mean(axis=0)
            continue
        b.sort(axis=0)
        med = b[t // 2] if t % 2 else (b[t // 2 - 1] + b[t // 2]) / 2
        gap = np.subtract(b, med, out=np.empty_like(b))
        np.abs(gap, out=gap)
        farther = gap[: t - beta] > gap[beta:]  # [t - beta, w]: moving the run up one place helps
        last = (t - beta) - np.argmax(farther[::-1], axis=0)  # 1 + the last such a
        start = np.where(farther.any(axis=0), last, 0)
        place = np.arange(t)[:, None]
        out[span] = np.sum(b, axis=0, where=(place >= start) & (place < start + beta)) / beta
    return out


def bulyan(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    num_malicious: int,
    selection: Literal["iterative", "one_shot"] = "iterative",
) -> np.ndarray:
    """Bulyan over Krum: select ``theta = n - 2f`` updates, then a coordinate-wise trimmed mean.

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018. Needs ``n >= 4f + 3``. Step 2 averages,
    per coordinate, the ``beta = theta - 2f`` selected values closest to the
    selected updates' coordinate-wise median (ties to the smaller value). ``selection``:

    - ``"iterative"`` (paper; Flower's legacy ``aggregate_bulyan``): Krum is
      re-run on the remaining updates ``theta`` times;
    - ``"one_shot"`` (Flower's new-API ``Bulyan``): the ``theta`` best Krum
      scores of one pass (``select_multikrum``).

    ``weights`` are checked but not used (as in Flower).
    """
    x = stack(updates, rule="bulyan")
    n = x.shape[0]
    check_weights(weights, n, rule="bulyan")
    f = nonnegative_int(num_malicious, name="num_malicious", rule="bulyan")
    if n < 4 * f + 3:
        raise AggregationError(
            f"bulyan: needs at least 4*num_malicious + 3 = {4 * f + 3} updates, got {n}; "
            f"sample more clients or lower num_malicious to {max(0, (n - 3) // 4)}."
        )
    if selection not in ("iterative", "one_shot"):
        raise AggregationError(f"bulyan: selection must be 'iterative' or 'one_shot', got {selection!r}.")
    theta, beta = n - 2 * f, n - 4 * f
    dist = sq_distances(x)[0]
    if selection == "iterative":
        chosen = _iterative_krum(x, dist, f, theta)
    else:
        chosen = _rank(_scores(dist, n - f - 2), x)[:theta]
    return _mean_closest_to_median(x, np.array(chosen), beta).astype(x.dtype)
