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
    "check_weights",
    "filtered_mean",
    "keep_all_but_highest",
    "median_clip",
    "nonnegative_int",
    "output_dtype",
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


def median_clip(x: np.ndarray) -> np.ndarray:
    """Scale every row to L2 norm at most the median row norm (FLAME's adaptive clipping)."""
    norms = np.linalg.norm(x, axis=1)
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
