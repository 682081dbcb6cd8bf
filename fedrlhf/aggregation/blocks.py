"""Float64 arithmetic over a stack of (float32) updates, one block at a time.

The rules take an ``[n, d]`` stack in the updates' own dtype (:func:`fedrlhf.aggregation.base.stack`)
and compute in float64, but never convert the whole stack at once: 1,000 LoRA updates
(d = 332,161) are 1.3 GB in float32 and would be 2.7 GB more in float64, and an ``x - v`` or an
``np.abs(x)`` on top of that is another 2.7 GB each. Here every float64 copy is a block of about
:data:`BLOCK_BYTES`: whole columns (all rows, some coordinates) for what mixes rows (Gram
matrices, weighted sums, coordinate-wise medians), whole rows for what mixes coordinates (norms).

Pairwise distances come from the Gram matrix, ``|a|^2 + |b|^2 - 2 a.b`` (``O(n^2 d)`` in one
BLAS call per block instead of ``n`` passes over the stack), on the updates first divided by a
power of two near their largest value (exact, so nothing overflows, whatever their scale) and
centred on their coordinate-wise (upper) median: a point among the honest updates whatever a
minority sends, and order-invariant. The error of a distance is about 1e-16 times the squared
distances of the two updates to that centre, so a large common offset costs no precision.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "BLOCK_BYTES",
    "absmax",
    "column_blocks",
    "column_median",
    "gram",
    "pow2_scale",
    "row_absmax",
    "row_blocks",
    "row_norms",
    "sq_distances",
    "weighted_sum",
]

#: Working memory of one float64 block (the stack itself is not counted).
BLOCK_BYTES = 32 * 2**20

Rows = np.ndarray | None  # row indices into the stack (a subset, in that order), or all rows


def _count(x: np.ndarray, rows: Rows) -> int:
    return x.shape[0] if rows is None else len(rows)


def column_blocks(
    x: np.ndarray, rows: Rows = None, cols: np.ndarray | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """``(span, block)``: float64 copies of ``x[rows][:, cols]``, a run of columns at a time.

    ``span`` is where the block's columns sit among ``cols`` (all columns when None). The block
    is a fresh array the caller may change in place.
    """
    m = _count(x, rows)
    d = x.shape[1] if cols is None else len(cols)
    width = max(1, BLOCK_BYTES // (8 * max(1, m)))
    for start in range(0, d, width):
        span = slice(start, min(d, start + width))
        if cols is None:
            block = x[:, span] if rows is None else x[rows, span]
        else:
            block = x[:, cols[span]] if rows is None else x[np.ix_(rows, cols[span])]
        fresh = rows is not None or cols is not None  # fancy indexing copied already
        yield span, block.astype(np.float64, copy=not fresh)


def row_blocks(x: np.ndarray, rows: Rows = None) -> Iterator[tuple[slice, np.ndarray]]:
    """``(span, block)``: float64 copies of ``x[rows]``, a run of whole rows at a time.

    ``span`` indexes the rows as listed in ``rows`` (all rows when None).
    """
    m = _count(x, rows)
    height = max(1, BLOCK_BYTES // (8 * max(1, x.shape[1])))
    for start in range(0, m, height):
        span = slice(start, min(m, start + height))
        if rows is None:
            yield span, x[span].astype(np.float64)
        else:
            yield span, x[rows[span]].astype(np.float64, copy=False)


def absmax(x: np.ndarray) -> float:
    """Largest absolute value in ``x`` (0 for an empty array), without an ``np.abs`` copy."""
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


def row_absmax(x: np.ndarray) -> np.ndarray:
    """Largest absolute value of every row of ``x`` (0 for rows of length 0)."""
    out = np.zeros(x.shape[0])
    for span, b in row_blocks(x):
        if b.shape[1]:
            out[span] = np.abs(b).max(axis=1)
    return out


def pow2_scale(top: float) -> float:
    """A power of two ``s`` with ``top / s`` in ``[1, 2)`` (1 when ``top`` is 0): exact to divide by."""
    return float(np.ldexp(1.0, np.frexp(top)[1] - 1)) if top > 0 else 1.0


def row_norms(x: np.ndarray, rows: Rows = None) -> np.ndarray:
    """L2 norm of every row of ``x`` (``[n, d]``, or the ``rows`` listed) without overflow.

    Each row is divided by its largest absolute value first (``s * ||row / s||``):
    ``np.linalg.norm`` squares the values, so rows above ~1e154 got an infinite norm.
    """
    out = np.zeros(_count(x, rows))
    for span, b in row_blocks(x, rows):
        scale = np.abs(b).max(axis=1) if b.shape[1] else np.zeros(b.shape[0])
        safe = np.where(scale > 0, scale, 1.0)
        b /= safe[:, None]
        out[span] = scale * np.sqrt(np.einsum("ij,ij->i", b, b))
    return out


def weighted_sum(x: np.ndarray, w: np.ndarray, rows: Rows = None, *, scale: float = 1.0) -> np.ndarray:
    """``w @ (x[rows] / scale)`` in float64 (``w`` has one weight per row used)."""
    out = np.empty(x.shape[1])
    for span, b in column_blocks(x, rows):
        if scale != 1.0:
            b /= scale
        out[span] = w @ b
    return out


def column_median(x: np.ndarray, rows: Rows = None) -> np.ndarray:
    """Coordinate-wise median of ``x[rows]`` in float64, equal to ``np.median(x[rows], axis=0)``.

    The mean of the middle two for an even count; selected along rows of a transposed copy,
    which numpy does about 4x faster than along columns.
    """
    m = _count(x, rows)
    mid = sorted({(m - 1) // 2, m // 2})
    out = np.empty(x.shape[1])
    for span, b in column_blocks(x, rows):
        part = np.partition(np.ascontiguousarray(b.T), mid, axis=1)
        out[span] = part[:, m // 2] if m % 2 else (part[:, mid[0]] + part[:, mid[1]]) / 2
    return out


def gram(
    x: np.ndarray,
    *,
    cols: np.ndarray | None = None,
    row_scale: np.ndarray | None = None,
    scale: float | np.ndarray = 1.0,
    centre: str | None = None,
) -> np.ndarray:
    """Gram matrix ``Y Y^T`` (float64, ``[n, n]``, symmetric) of ``Y = x[:, cols]`` transformed.

    Each row of ``Y`` is first multiplied by ``row_scale`` (one factor per row) and divided by
    ``scale`` (a number, or one per row), then every column centred on its ``"mean"`` or
    ``"median"`` over the rows (``centre``), as a full float64 copy would be; but the copy is
    made a block of columns at a time.
    """
    n = x.shape[0]
    g = np.zeros((n, n))
    for _, b in column_blocks(x, cols=cols):
        if row_scale is not None:
            b *= row_scale[:, None]
        if isinstance(scale, np.ndarray):
            b /= scale[:, None]
        elif scale != 1.0:
            b /= scale
        if centre == "mean":
            b -= b.mean(axis=0)
        elif centre == "median":
            b -= _middle(b)
        g += b @ b.T
    return (g + g.T) * 0.5  # exactly symmetric, whatever order BLAS summed in


def _middle(b: np.ndarray) -> np.ndarray:
    """Per column of ``b`` (``[m, w]``): its ``m // 2``-th smallest value, the (upper) median.

    A value of the column, so it does not depend on the order of the rows; selected along
    rows of a transposed copy, which numpy does about 4x faster than along a column.
    """
    m = b.shape[0]
    return np.partition(np.ascontiguousarray(b.T), m // 2, axis=1)[:, m // 2]


def sq_distances(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Squared L2 distances between the rows of ``x``, as ``(dist, s)``: the true ones are ``dist * s * s``.

    ``s`` is a power of two near the largest absolute value, so ``dist`` is finite at any
    scale (the true distances of float64 inputs above ~1e154 are not). Computed from the Gram
    matrix of the rows centred on their coordinate-wise median; exactly symmetric, with zeros on
    the diagonal and no negative value.
    """
    s = pow2_scale(absmax(x))
    g = gram(x, scale=s, centre="median")
    sq = np.diag(g).copy()
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist, s
