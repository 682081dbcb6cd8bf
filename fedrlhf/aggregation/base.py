"""Shared input checks for the aggregation rules (numpy only).

Every rule takes ``updates``: a sequence of flat float vectors of one length
(one per client), and optional ``weights`` (one non-negative number per
client, e.g. its number of examples). Rules compute in float64 and return a
vector in the inputs' float dtype (at least float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrlhf.errors import FedRLHFError

__all__ = [
    "AggregationError",
    "as_matrix",
    "check_majority",
    "check_weights",
    "filtered_mean",
    "keep_all_but_highest",
    "median_clip",
    "nonnegative_int",
    "output_dtype",
    "row_norms",
]


class AggregationError(FedRLHFError, ValueError):
    """A rule's inputs or parameters break its precondition.

    The message says what to change (more clients, a smaller ``num_malicious``, ...).
    """


def as_matrix(updates: Sequence[np.ndarray] | np.ndarray, *, rule: str) -> np.ndarray:
    """Stack ``updates`` into a float64 matrix of shape ``[n, d]``, checking them.

    Raises :class:`AggregationError` on no updates, non-vectors, unequal lengths,
    non-numeric or non-finite values.
    """
    if len(updates) == 0:
        raise AggregationError(f"{rule}: got no updates; sample at least one client.")
    arrays = [np.asarray(u) for u in updates]
    for i, arr in enumerate(arrays):
        if arr.ndim != 1:
            raise AggregationError(
                f"{rule}: update {i} has shape {arr.shape}; flatten each update to one vector "
                "(fedrlhf.aggregation.validate.flatten)."
            )
        if arr.dtype.kind not in "fiu":
            raise AggregationError(f"{rule}: update {i} has dtype {arr.dtype}; send float vectors.")
    sizes = {arr.shape[0] for arr in arrays}
    if len(sizes) != 1:
        raise AggregationError(f"{rule}: updates have different lengths {sorted(sizes)}; all must match.")
    matrix = np.stack(arrays).astype(np.float64, copy=False)
    if not np.all(np.isfinite(matrix)):
        raise AggregationError(
            f"{rule}: updates contain NaN or infinity; validate them first "
            "(fedrlhf.aggregation.validate.validate_update)."
        )
    return matrix


def check_weights(weights: Sequence[float] | np.ndarray | None, n: int, *, rule: str) -> np.ndarray:
    """Return the weights as a float64 vector of length ``n`` (all ones if None).

    Weights must be finite, non-negative and sum to a positive number.
    """
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise AggregationError(f"{rule}: got {w.size} weights for {n} updates; give one weight per update.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise AggregationError(f"{rule}: weights must be finite and non-negative, got {w.tolist()}.")
    if w.sum() <= 0:
        raise AggregationError(f"{rule}: weights sum to zero; give at least one update a positive weight.")
    return w


def output_dtype(updates: Sequence[np.ndarray] | np.ndarray) -> np.dtype:
    """The float dtype to return: the inputs' common float type, at least float32."""
    return np.result_type(np.float32, *[np.asarray(u).dtype for u in updates])


def nonnegative_int(value: object, *, name: str, rule: str) -> int:
    """Check that ``value`` is a non-negative integer (not a bool) and return it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise AggregationError(f"{rule}: {name} must be a non-negative integer, got {value!r}.")
    return int(value)


def check_majority(n: int, num_malicious: object, *, rule: str, extra: str = "") -> int:
    """Check that ``n`` inputs outvote f = ``num_malicious`` arbitrary ones (``n > 2f``); return f.

    Below that, f attackers are half the inputs or more and a median, a trimmed mean or a
    filter that drops f of them can return exactly the attackers' vector. ``extra`` is added to
    the error (e.g. what trimming f per side needs).
    """
    f = nonnegative_int(num_malicious, name="num_malicious", rule=rule)
    if n <= 2 * f:
        raise AggregationError(
            f"{rule}: with num_malicious = {f} it needs more than 2*num_malicious = {2 * f} updates "
            f"(an honest majority){extra}, got {n}; sample at least {2 * f + 1} clients or lower "
            f"num_malicious to {max(0, (n - 1) // 2)}."
        )
    return f


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of every row of ``x`` (``[n, d]``) without overflow: ``s * ||row / s||``, s = max |row|.

    ``np.linalg.norm`` squares the values, so rows above ~1e154 get an infinite norm.
    """
    scale = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0])
    safe = np.where(scale > 0, scale, 1.0)
    return scale * np.linalg.norm(x / safe[:, None], axis=1)


def median_clip(x: np.ndarray) -> np.ndarray:
    """Scale every row to L2 norm at most the median row norm (FLAME's adaptive clipping)."""
    norms = row_norms(x)
    bound = float(np.median(norms))
    return x * np.divide(bound, norms, out=np.ones_like(norms), where=norms > bound)[:, None]


_TIE = 1e-9  # relative slack: scores this close to the cut count as tied, and ties are kept


def keep_all_but_highest(score: np.ndarray, drop: int, *, rule: str, what: str) -> np.ndarray:
    """Indices (sorted) of all but the ``drop`` highest scores, for the filtering rules.

    Scores tied with the cut are kept, so the result does not depend on the order of
    the updates. ``what`` names the count in the error when it would leave none.
    """
    n = len(score)
    if drop >= n:
        raise AggregationError(
            f"{rule}: dropping {what} = {drop} of {n} updates leaves none; "
            "sample more clients or lower num_malicious."
        )
    if drop <= 0:
        return np.arange(n)
    cut = np.sort(score)[n - drop - 1]  # the (n - drop)-th smallest score
    span = max(abs(float(cut)), float(np.abs(score).max()), 1e-300)
    return np.flatnonzero(score <= cut + _TIE * span)


def filtered_mean(
    updates: Sequence[np.ndarray] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    keep: np.ndarray,
    *,
    clip_median: bool,
    rule: str,
) -> np.ndarray:
    """The ``weights``-mean of the kept updates, each first clipped to the median norm if asked."""
    x = as_matrix(updates, rule=rule)
    w = check_weights(weights, x.shape[0], rule=rule)
    if clip_median:
        x = median_clip(x)
    wk = w[keep]
    if wk.sum() <= 0:
        raise AggregationError(f"{rule}: every update it keeps has weight 0; give them positive weights.")
    return ((wk @ x[keep]) / wk.sum()).astype(output_dtype(updates))
