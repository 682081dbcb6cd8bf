"""Nearest-neighbour mixing (NNM), a pre-aggregation composable with any robust rule.

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
Optimal Byzantine ML under Heterogeneity", AISTATS 2023. Every input is replaced by the
mean of its ``n - f`` nearest inputs (itself included); the robust rule then runs over the
mixed vectors. Mixing pulls honest inputs together and drags each attacker's input towards
the honest ones, which lets a rule built for similar (i.i.d.) inputs cope with heterogeneous
clients. Same definition as ByzFL's ``NNM``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    check_weights,
    nonnegative_int,
    stack,
)
from fedrlhf.aggregation.blocks import column_blocks, sq_distances

__all__ = ["nnm"]


def nnm(
    updates: Sequence[np.ndarray] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    num_malicious: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mix every update with its ``n - f`` nearest neighbours; returns ``(mixed [n, d], weights)``.

    Row ``i`` of the result is the plain mean of the ``n - num_malicious`` updates closest to
    update ``i`` in L2 (update ``i`` among them) and keeps client ``i``'s weight, so the
    result is permuted with the inputs. Needs ``num_malicious < n``; the rule that follows
    checks its own majority (``n > 2f``).

    No ``[n, n - f, d]`` array of neighbours: the distances come from the Gram matrix, and the
    means are one ``[n, n]`` 0/1 neighbour matrix times the updates, a block of coordinates at
    a time. Returns the inputs' dtype (float32 stays float32).
    """
    x = stack(updates, rule="nnm")
    w = check_weights(weights, x.shape[0], rule="nnm")
    n = x.shape[0]
    f = nonnegative_int(num_malicious, name="num_malicious", rule="nnm")
    if f >= n:
        raise AggregationError(
            f"nnm: mixing with the n - num_malicious nearest updates needs num_malicious < n; "
            f"got num_malicious = {f} with {n} updates; sample more clients or lower num_malicious."
        )
    dist = sq_distances(x)[0]
    np.fill_diagonal(dist, -1.0)  # every update is its own nearest neighbour, whatever the ties
    nearest = np.argsort(dist, axis=1, kind="stable")[:, : n - f]
    pick = np.zeros((n, n))  # pick[i, j] = 1 if update j is among update i's neighbours
    np.put_along_axis(pick, nearest, 1.0, axis=1)
    mixed = np.empty_like(x)
    for span, b in column_blocks(x):
        mixed[:, span] = (pick @ b) / (n - f)
    return mixed, w
