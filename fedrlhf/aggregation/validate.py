"""Server-side checks on a client's update, and the flat-vector layout of the payload.

A *layout* is an ordered mapping ``name -> shape`` fixed for the run (the
trainable LoRA + head arrays). Updates travel as named float arrays; the
rules see one float32 vector per client, concatenated in layout order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import prod

import numpy as np

from fedrlhf.errors import ConfigError, FedRLHFError

__all__ = [
    "REASONS",
    "InvalidUpdate",
    "Layout",
    "ValidationStats",
    "aggregate_problem",
    "flatten",
    "layout_of",
    "layout_size",
    "norm_ratio_keep",
    "unflatten",
    "validate_update",
]

Layout = Mapping[str, tuple[int, ...]]

#: Every ``InvalidUpdate.reason`` of :func:`validate_update` (the server's reply decoding adds
#: ``malformed``: a record missing, arrays that cannot be decoded).
REASONS = ("not_a_mapping", "missing", "extra", "not_an_array", "dtype", "shape", "non_finite", "norm")


class InvalidUpdate(FedRLHFError, ValueError):
    """A client's update is malformed or implausible; the server drops it.

    ``reason`` is one of :data:`REASONS`; ``name`` the offending array, if any.
    """

    def __init__(self, message: str, *, reason: str, name: str | None = None) -> None:
        self.reason = reason
        self.name = name
        super().__init__(message)


def _check_layout(layout: Layout) -> None:
    for name, shape in layout.items():
        if not isinstance(name, str) or not isinstance(shape, tuple):
            raise ConfigError(f"Layout entries must be str -> tuple of ints, got {name!r} -> {shape!r}.")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise ConfigError(f"Layout shape for {name!r} must hold non-negative ints, got {shape!r}.")


def layout_of(named_arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The layout of a reference state (e.g. the initial trainable arrays), in its order."""
    return {name: tuple(int(s) for s in np.shape(arr)) for name, arr in named_arrays.items()}


def layout_size(layout: Layout) -> int:
    """Total number of scalars in ``layout``."""
    _check_layout(layout)
    return sum(prod(shape) for shape in layout.values())


def flatten(named_arrays: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    """Concatenate ``named_arrays`` in layout order into one float32 vector.

    Raises :class:`InvalidUpdate` on a missing or extra name, a non-array, a
    non-float dtype or a wrong shape.
    """
    _check_layout(layout)
    if not isinstance(named_arrays, Mapping):
        raise InvalidUpdate(
            f"update must map names to arrays, got {type(named_arrays).__name__}.", reason="not_a_mapping"
        )
    missing = [k for k in layout if k not in named_arrays]
    if missing:
        raise InvalidUpdate(f"update lacks array(s) {missing}.", reason="missing", name=missing[0])
    extra = [k for k in named_arrays if k not in layout]
    if extra:
        raise InvalidUpdate(f"update has unexpected array(s) {extra}.", reason="extra", name=str(extra[0]))
    parts = []
    for name, shape in layout.items():
        arr = named_arrays[name]
        if not isinstance(arr, np.ndarray):
            raise InvalidUpdate(
                f"{name!r} is a {type(arr).__name__}, not a numpy array.", reason="not_an_array", name=name
            )
        if arr.dtype.kind != "f":
            raise InvalidUpdate(
                f"{name!r} has dtype {arr.dtype}; expected a float array.", reason="dtype", name=name
            )
        if arr.shape != shape:
            raise InvalidUpdate(
                f"{name!r} has shape {arr.shape}; expected {shape}.", reason="shape", name=name
            )
        with np.errstate(over="ignore"):  # overflow becomes inf, which validate_update rejects
            parts.append(arr.reshape(-1).astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a flat vector back into named float32 arrays (the inverse of :func:`flatten`)."""
    size = layout_size(layout)
    vec = np.asarray(vector)
    if vec.ndim != 1 or vec.shape[0] != size:
        raise InvalidUpdate(f"vector has shape {vec.shape}; layout needs ({size},).", reason="shape")
    vec = vec.astype(np.float32)
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in layout.items():
        stop = start + prod(shape)
        out[name] = vec[start:stop].reshape(shape).copy()
        start = stop
    return out


def validate_update(
    update: Mapping[str, np.ndarray], layout: Layout, *, max_norm: float | None
) -> np.ndarray:
    """Check a client's update and return it flattened (float32, layout order).

    Rejects, with :class:`InvalidUpdate`: structural problems (see
    :func:`flatten`), NaN or infinite values (also values that overflow
    float32), and an L2 norm above ``max_norm`` (``None``: no norm check). Set
    ``max_norm`` generously (e.g. 10-100x a typical honest norm): it is a
    sanity bound against absurd updates, not a robust rule.
    """
    if max_norm is not None and not (np.isfinite(max_norm) and max_norm > 0):
        raise ConfigError(f"max_norm must be positive and finite or None, got {max_norm!r}.")
    vec = flatten(update, layout)
    if not np.all(np.isfinite(vec)):
        bad = next(k for k, v in unflatten(vec, layout).items() if not np.all(np.isfinite(v)))
        raise InvalidUpdate(f"{bad!r} contains NaN or infinite values.", reason="non_finite", name=bad)
    if max_norm is not None:
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        if norm > max_norm:
            raise InvalidUpdate(f"update L2 norm {norm:.4g} exceeds max_norm={max_norm:.4g}.", reason="norm")
    return vec


def norm_ratio_keep(updates: list[np.ndarray] | np.ndarray, max_ratio: float) -> np.ndarray:
    """Indices (sorted) of the updates whose L2 norm is at most ``max_ratio`` times the median norm.

    A scale-free bound against boosted updates (a scaled sign flip, a boosted backdoor): it
    follows the model's update scale round by round, where ``max_norm`` is one fixed number.
    More than half the updates always stay (the median one and all below it).
    """
    if not (np.isfinite(max_ratio) and max_ratio >= 1):
        raise ConfigError(f"max_ratio must be >= 1 and finite, got {max_ratio!r}.")
    x = np.asarray([np.asarray(u, dtype=np.float64).ravel() for u in updates])
    if x.shape[0] == 0:
        return np.arange(0)
    norms = np.linalg.norm(x, axis=1)
    return np.flatnonzero(norms <= max_ratio * float(np.median(norms)))


def aggregate_problem(
    aggregate: np.ndarray, updates: list[np.ndarray] | np.ndarray, *, bounded: bool = True
) -> str | None:
    """Why an aggregate of ``updates`` must not move the global model, or None if it may.

    Refused: NaN or infinite values (e.g. float32 overflow while averaging huge updates) and,
    when ``bounded``, an L2 norm above ``sqrt(sum_i ||x_i||^2)``. Every rule of
    :mod:`fedrlhf.aggregation.rules` stays within that bound: each coordinate of its output lies
    within the inputs' range of that coordinate, or the output is a convex combination of
    (clipped) inputs. Pass ``bounded=False`` where the server adds noise of its own (DP-FedAvg).
    """
    agg = np.asarray(aggregate, dtype=np.float64).ravel()
    if not np.all(np.isfinite(agg)):
        return "non-finite aggregate"
    if not bounded:
        return None
    x = np.asarray([np.asarray(u, dtype=np.float64).ravel() for u in updates])
    limit = float(np.sqrt(np.sum(x * x))) if x.size else 0.0
    norm = float(np.linalg.norm(agg))
    if norm > limit * (1 + 1e-5) + 1e-30:
        return f"aggregate norm {norm:.4g} exceeds {limit:.4g}, the most {len(x)} updates allow"
    return None


@dataclass
class ValidationStats:
    """Counts of accepted and rejected updates (by reason) over a run or a round."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def check(
        self, update: Mapping[str, np.ndarray], layout: Layout, *, max_norm: float | None
    ) -> np.ndarray | None:
        """:func:`validate_update`, counted: the flat vector, or None if rejected."""
        try:
            vec = validate_update(update, layout, max_norm=max_norm)
        except InvalidUpdate as err:
            self.rejected[err.reason] += 1
            return None
        self.accepted += 1
        return vec

    @property
    def total(self) -> int:
        """Updates seen."""
        return self.accepted + sum(self.rejected.values())

    def to_dict(self) -> dict[str, int]:
        """Flat counts for a metrics record: ``accepted``, ``rejected``, ``rejected_<reason>``."""
        out = {"accepted": self.accepted, "rejected": sum(self.rejected.values())}
        out.update({f"rejected_{r}": int(c) for r, c in sorted(self.rejected.items())})
        return out
