"""Shared input checks for the aggregation rules (numpy only).

Every rule takes ``updates``: a sequence of flat float vectors of one length
(one per client), and optional ``weights`` (one non-negative number per
client, e.g. its number of examples). Rules compute in float64 and return a
vector in the inputs' float dtype (at least float32). They stack the updates once in
that dtype (:func:`stack`: float32 stays float32) and convert to float64 a block at a
time (:mod:`fedrlhf.aggregation.blocks`), never the whole stack.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedrlhf.aggregation import blocks
from fedrlhf.aggregation.blocks import row_norms, weighted_sum
from fedrlhf.errors import FedRLHFError

__all__ = [
    "AggregationError",
    "as_matrix",
    "check_majority",
    "check_weights",
    "filtered_mean",
    "keep_all_but_highest",
    "kept_mean",
    "median_clip_factors",
    "nonnegative_int",
    "output_dtype",
    "remembered",
    "row_norms",
    "stack",
]


class AggregationError(FedRLHFError, ValueError):
    """A rule's inputs or parameters break its precondition.

    The message says what to change (more clients, a smaller ``num_malicious``, ...).
    """


def stack(updates: Sequence[np.ndarray] | np.ndarray, *, rule: str) -> np.ndarray:
    """Stack ``updates`` into one C-contiguous ``[n, d]`` matrix of :func:`output_dtype`, checking them.

    Float32 updates stay float32 (the rules compute in float64 a block at a time,
    :mod:`fedrlhf.aggregation.blocks`); an ``[n, d]`` array already of that dtype is used as it
    is, not copied. Raises :class:`AggregationError` on no updates, non-vectors, unequal
    lengths, non-numeric or non-finite values.
    """
    if len(updates) == 0:
        raise AggregationError(f"{rule}: got no updates; sample at least one client.")
    if isinstance(updates, np.ndarray) and updates.ndim == 2 and updates.dtype.kind in "fiu":
        matrix = np.ascontiguousarray(updates, dtype=output_dtype([updates[0]]))
    else:
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
        common = _common_matrix(arrays)
        matrix = np.stack(arrays).astype(output_dtype(arrays), copy=False) if common is None else common
    rows = max(1, blocks.BLOCK_BYTES // max(1, matrix.itemsize * matrix.shape[1]))
    if not all(np.isfinite(matrix[i : i + rows]).all() for i in range(0, matrix.shape[0], rows)):
        raise AggregationError(
            f"{rule}: updates contain NaN or infinity; validate them first "
            "(fedrlhf.aggregation.validate.validate_update)."
        )
    return matrix


def _common_matrix(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The C-contiguous ``[n, d]`` matrix whose rows, in order, ``arrays`` are (``list(matrix)``), else None.

    Its rows need no copy: a pre-aggregation's output comes to the rule this way.
    """
    base = arrays[0].base
    if not (isinstance(base, np.ndarray) and base.ndim == 2 and base.flags.c_contiguous):
        return None
    if base.shape != (len(arrays), arrays[0].shape[0]) or base.dtype != output_dtype([base]):
        return None
    start, step = base.__array_interface__["data"][0], base.strides[0]
    for i, arr in enumerate(arrays):
        if arr.base is not base or arr.__array_interface__["data"][0] != start + i * step:
            return None
    return base


def as_matrix(updates: Sequence[np.ndarray] | np.ndarray, *, rule: str) -> np.ndarray:
    """:func:`stack` as a new float64 array (a full copy: for single vectors and small inputs)."""
    return np.array(stack(updates, rule=rule), dtype=np.float64)


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


def median_clip_factors(x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``x[rows]``: the factor that scales it to L2 norm at most the median row norm.

    FLAME's adaptive clipping; ``x[rows] * factors[:, None]`` is the clipped stack.
    """
    norms = row_norms(x, rows)
    bound = float(np.median(norms))
    return np.divide(bound, norms, out=np.ones_like(norms), where=norms > bound)


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
    x = stack(updates, rule=rule)
    return kept_mean(
        x, check_weights(weights, x.shape[0], rule=rule), keep, clip_median=clip_median, rule=rule
    )


def kept_mean(x: np.ndarray, w: np.ndarray, keep: np.ndarray, *, clip_median: bool, rule: str) -> np.ndarray:
    """:func:`filtered_mean` of the checked stack ``x`` and weights ``w`` (median norm over all rows)."""
    if w[keep].sum() <= 0:
        raise AggregationError(f"{rule}: every update it keeps has weight 0; give them positive weights.")
    wk = w[keep] * (median_clip_factors(x)[keep] if clip_median else 1.0)
    return (weighted_sum(x, wk, keep) / w[keep].sum()).astype(x.dtype)


_LOCK = threading.Lock()
_LAST: dict[str, tuple[object, np.ndarray]] = {}  # rule -> (key, kept indices) of its last call


def remembered(
    rule: str,
    x: np.ndarray,
    params: Mapping[str, object],
    compute: Callable[[], np.ndarray],
    *,
    reuse: bool,
) -> np.ndarray:
    """``compute()``, the indices a filtering rule keeps, remembered for the question that follows.

    The server asks a filtering rule for its aggregate and then whom it dropped
    (:func:`fedrlhf.aggregation.rules.dropped_by`) with the same updates and parameters; with
    ``reuse`` (the ``*_keep`` functions) the answer of the last call on equal inputs is returned
    instead of redoing the work (DnC's and the cosine filters' are ``O(n^2 d)``). The rule
    itself (``reuse=False``) always computes, so a round never gets a stale answer, and
    repeated calls on one input cost what a round costs. The key is the stack's content (a
    BLAKE2b digest of its bytes, shape and dtype) and ``params``; one entry per rule.
    """
    digest = hashlib.blake2b(x.data if x.flags.c_contiguous else x.tobytes(), digest_size=20).digest()
    key = (x.shape, x.dtype.str, digest, tuple(sorted((k, repr(v)) for k, v in params.items())))
    if reuse:
        with _LOCK:
            hit = _LAST.get(rule)
        if hit is not None and hit[0] == key:
            return hit[1].copy()
    keep = compute()
    with _LOCK:
        _LAST[rule] = (key, keep.copy())
    return keep
