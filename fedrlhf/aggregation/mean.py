"""Weighted mean (FedAvg, McMahan et al., AISTATS 2017), batch and streaming."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import AggregationError, as_matrix, check_weights, output_dtype, stack
from fedrlhf.aggregation.blocks import weighted_sum

__all__ = ["RunningMean", "mean"]


def mean(updates: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean ``sum_i w_i x_i / sum_i w_i`` (plain mean when ``weights`` is None).

    Same as Flower's ``aggregate`` / ``aggregate_arrayrecords`` (FedAvg) with
    ``weights`` = the clients' ``num-examples``. Not robust: one client moves it
    arbitrarily far. Works on sums, so it is compatible with secure aggregation.
    """
    x = stack(updates, rule="mean")
    w = check_weights(weights, x.shape[0], rule="mean")
    return (weighted_sum(x, w) / w.sum()).astype(x.dtype)


class RunningMean:
    """Weighted mean accumulated one update at a time, so the server never stacks.

    >>> acc = RunningMean()
    >>> acc.add(np.ones(3), weight=2.0)
    >>> acc.add(np.zeros(3))
    >>> acc.result()
    array([0.6666667, 0.6666667, 0.6666667], dtype=float32)

    Accumulates in float64; :meth:`result` returns float32 unless an input was float64.
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._dtype: np.dtype = np.dtype(np.float32)
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: np.ndarray, weight: float = 1.0) -> None:
        """Add one flat update with a non-negative finite ``weight``."""
        x = as_matrix([update], rule="RunningMean")[0]
        w = float(weight)
        if not np.isfinite(w) or w < 0:
            raise AggregationError(f"RunningMean: weight must be finite and non-negative, got {weight!r}.")
        if self._sum is None:
            self._sum = np.zeros_like(x)
        elif self._sum.shape != x.shape:
            raise AggregationError(
                f"RunningMean: update has length {x.shape[0]}, earlier ones {self._sum.shape[0]}."
            )
        self._sum += w * x
        self._dtype = np.result_type(self._dtype, output_dtype([update]))
        self.total_weight += w
        self.count += 1

    def result(self) -> np.ndarray:
        """The weighted mean of everything added so far."""
        if self._sum is None or self.total_weight <= 0:
            raise AggregationError("RunningMean: nothing with positive weight was added yet.")
        return (self._sum / self.total_weight).astype(self._dtype)
