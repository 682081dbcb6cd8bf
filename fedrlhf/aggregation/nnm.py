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
    as_matrix,
    check_weights,
    nonnegative_int,
    output_dtype,
)
from fedrlhf.aggregation.krum import pairwise_sq_distances

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
    """
    x = as_matrix(updates, rule="nnm")
    w = check_weights(weights, x.shape[0], rule="nnm")
    n = x.shape[0]
    f = nonnegative_int(num_malicious, name="num_malicious", rule="nnm")
    if f >= n:
        raise AggregationError(
            f"nnm: mixing with the n - num_malicious nearest updates needs num_malicious < n; "
            f"got num_malicious = {f} with {n} updates; sample more clients or lower num_malicious."
        )
    dist = pairwise_sq_distances(x)
    np.fill_diagonal(dist, -1.0)  # every update is its own nearest neighbour, whatever the ties
    nearest = np.argsort(dist, axis=1, kind="stable")[:, : n - f]
    return x[nearest].mean(axis=1).astype(output_dtype(updates)), w
