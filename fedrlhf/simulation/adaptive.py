"""Adaptive (white-box) update attacks: the attackers know the server's rule and tune against it.

Same signature as the attacks of :mod:`fedrlhf.simulation.attacks`, plus ``aggregator``::

    attack(honest, *, num_malicious, rng, aggregator=None, **params) -> list[np.ndarray]

``aggregator(inputs) -> aggregate`` is what the server does with a round's inputs (its checks,
pre-aggregation and rule with their parameters, :func:`fedrlhf.simulation.threats.server_view`);
the simulation supplies it, None stands for the plain mean. An optimised attack picks its
scale by a line search that maximises ``|aggregator(honest + malicious) - mean(honest)|``,
ByzFL's objective and search (expansion by doubling, then contraction by ``ratio``; Allouah
et al., "Fixing by Mixing", AISTATS 2023), so on the same inputs it returns ByzFL's vector.

- :func:`alie_opt`: ``mean + tau * std`` (Baruch et al. 2019, tau optimised);
- :func:`ipm_opt`: ``-tau * mean`` (Xie et al. 2020, tau optimised);
  both with ``noise = true``: each attacker adds its own honest-looking noise (a fresh draw
  with the honest updates' per-coordinate spread), so the attackers look no more alike
  than honest clients do;
- :func:`min_max_tailored`, :func:`min_sum_tailored`: ``mean + gamma * p`` with ``gamma``
  tuned against the rule, in units of the rule-agnostic bound of :func:`fedrlhf.simulation.attacks.min_max`
  / :func:`min_sum` (Shejwalkar & Houmansadr, NDSS 2021);
- :func:`min_sum`: the rule-agnostic min-sum attack;
- :func:`mimic`: every attacker copies the honest update that most over-represents the honest
  updates' main direction of spread (Karimireddy, He, Jaggi, ICLR 2022);
- :func:`zeros`: all-zero updates (no signal, zero norm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from fedrlhf.aggregation.krum import pairwise_sq_distances
from fedrlhf.errors import FedRLHFError
from fedrlhf.simulation.attacks import (
    ATTACKS,
    UPDATE_ATTACKS,
    AttackError,
    _count,
    _direction,
    _honest,
    _out,
    largest_fitting,
    min_max,
)

__all__ = [
    "ADAPTIVE_ATTACKS",
    "Aggregator",
    "alie_opt",
    "damage",
    "ipm_opt",
    "line_search",
    "mimic",
    "min_max_tailored",
    "min_sum",
    "min_sum_tailored",
    "zeros",
]

Aggregator = Callable[[list[np.ndarray]], np.ndarray]
Direction = Literal["std", "unit", "sign"]


def _mean(inputs: list[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(inputs), axis=0)


def damage(honest: np.ndarray, malicious: Sequence[np.ndarray], aggregator: Aggregator | None) -> float:
    """``|aggregator(honest + malicious) - mean(honest)|``; 0 where the server refuses the round."""
    agg = aggregator or _mean
    try:
        out = agg([*honest, *malicious])
    except FedRLHFError:  # the rule cannot run on these inputs: the round keeps the old model
        return 0.0
    return float(np.linalg.norm(np.asarray(out, dtype=np.float64) - honest.mean(axis=0)))


def line_search(
    objective: Callable[[float], float],
    *,
    evals: int = 20,
    start: float = 0.0,
    delta: float = 10.0,
    ratio: float = 0.8,
) -> float:
    """The ``x`` that maximises ``objective`` as ByzFL's optimal attacks find it, in ``evals`` calls.

    From ``start``, steps of ``delta`` double while the objective grows; after the first step
    that does not improve, the step shrinks by ``ratio`` each call and is taken if it improves.
    """
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise AttackError(f"line search: evals must be a positive integer, got {evals!r}.")
    if not 0.5 < ratio < 1 or not np.isfinite(delta) or delta == 0:
        raise AttackError(
            f"line search: needs ratio in (0.5, 1) and a finite non-zero delta, got {ratio}, {delta}."
        )
    best_x, best_y, left = start, objective(start), evals - 1
    while left > 0:  # expansion
        y, left = objective(best_x + delta), left - 1
        if y > best_y:
            best_x, best_y, delta = best_x + delta, y, 2 * delta
        else:
            delta *= ratio
            break
    while left > 0:  # contraction
        y, left = objective(best_x + delta), left - 1
        if y > best_y:
            best_x, best_y = best_x + delta, y
        delta *= ratio
    return best_x


def _noise(x: np.ndarray, k: int, on: bool, rng: np.random.Generator | None) -> np.ndarray:
    """``k`` honest-looking noise vectors (per-coordinate std of the honest updates), or zeros."""
    if not on:
        return np.zeros((k, x.shape[1]))
    if rng is None:
        raise AttackError("noise = true needs an rng (the simulation passes one).")
    return rng.standard_normal((k, x.shape[1])) * x.std(axis=0, ddof=1)


def _optimised(
    x: np.ndarray,
    k: int,
    vector: Callable[[float], np.ndarray],
    noise: np.ndarray,
    aggregator: Aggregator | None,
    search: dict[str, float],
) -> np.ndarray:
    """The ``k`` malicious updates ``vector(t) + noise_i`` at the ``t`` that hurts ``aggregator`` most."""

    def objective(t: float) -> float:
        return damage(x, list(vector(t) + noise), aggregator)

    if k == 0:
        return np.zeros((0, x.shape[1]))
    evals = search.pop("evals")
    return vector(line_search(objective, evals=int(evals), **search)) + noise


def alie_opt(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    aggregator: Aggregator | None = None,
    noise: bool = False,
    evals: int = 20,
    start: float = 0.0,
    delta: float = 10.0,
    ratio: float = 0.8,
) -> list[np.ndarray]:
    """Optimised ALIE: every attacker sends ``mean + tau * std`` (ByzFL's sign), ``tau`` tuned
    against ``aggregator``; with ``noise`` each adds its own honest-looking noise (same ``tau``)."""
    k, x = _count(num_malicious, "alie_opt"), _honest(honest, at_least=2, attack="alie_opt")
    mu, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    search = {"evals": evals, "start": start, "delta": delta, "ratio": ratio}
    out = _optimised(x, k, lambda t: mu + t * sd, _noise(x, k, noise, rng), aggregator, search)
    return _out(list(out), honest)


def ipm_opt(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    aggregator: Aggregator | None = None,
    noise: bool = False,
    evals: int = 20,
    start: float = 0.0,
    delta: float = 10.0,
    ratio: float = 0.8,
) -> list[np.ndarray]:
    """Optimised IPM: every attacker sends ``-tau * mean``, ``tau`` tuned against ``aggregator``;
    with ``noise`` each adds its own honest-looking noise (the issue's adaptive attacker)."""
    k, x = _count(num_malicious, "ipm_opt"), _honest(honest, at_least=1, attack="ipm_opt")
    mu = x.mean(axis=0)
    on = noise and len(x) > 1
    search = {"evals": evals, "start": start, "delta": delta, "ratio": ratio}
    out = _optimised(x, k, lambda t: -t * mu, _noise(x, k, on, rng), aggregator, search)
    return _out(list(out), honest)


def zeros(
    honest: Sequence[np.ndarray], *, num_malicious: int, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Every attacker sends an all-zero update (free-riding; cosine scores treat it as 0)."""
    k, x = _count(num_malicious, "zeros"), _honest(honest, at_least=1, attack="zeros")
    return _out([np.zeros(x.shape[1])] * k, honest)


def mimic(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    target: int | None = None,
) -> list[np.ndarray]:
    """Mimic (Karimireddy, He, Jaggi, ICLR 2022): every attacker copies one honest update.

    The copied one is ``honest[target]`` if given (ByzFL's ``Mimic(epsilon=target)``), else
    the one farthest from the mean along the honest updates' top principal direction: copying
    it over-weights one client's data (heterogeneity) while staying a genuine honest update.
    """
    k, x = _count(num_malicious, "mimic"), _honest(honest, at_least=1, attack="mimic")
    if target is None:
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)  # rows: principal directions
        target = int(np.argmax(np.abs(centred @ vt[0])))
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(x):
        raise AttackError(f"mimic: target must be an index of the {len(x)} honest updates, got {target!r}.")
    return _out([x[target]] * k, honest)


def _min_sum_gamma(x: np.ndarray, p: np.ndarray, tol: float) -> float:
    """Largest ``gamma`` with ``sum_j |mean + gamma p - x_j|^2 <= max_i sum_j |x_i - x_j|^2``."""
    mu = x.mean(axis=0)
    limit = float(pairwise_sq_distances(x).sum(axis=1).max())

    def fits(gamma: float) -> bool:
        return float(np.square(x - (mu + gamma * p)).sum()) <= limit

    return largest_fitting(fits, tol)


def min_sum(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    direction: Direction = "std",
    tol: float = 1e-6,
) -> list[np.ndarray]:
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): ``mean + gamma * p`` with the largest
    ``gamma`` whose sum of squared distances to the honest updates is at most the largest
    such sum of an honest update. ``p`` as in :func:`~fedrlhf.simulation.attacks.min_max`."""
    k, x = _count(num_malicious, "min_sum"), _honest(honest, at_least=2, attack="min_sum")
    p = _direction(x, direction)
    gamma = _min_sum_gamma(x, p, tol) if np.any(p) else 0.0
    return _out([x.mean(axis=0) + gamma * p] * k, honest)


def _tailored(
    honest: Sequence[np.ndarray],
    k: int,
    agnostic: list[np.ndarray],
    direction: Direction,
    aggregator: Aggregator | None,
    evals: int,
) -> list[np.ndarray]:
    """``mean + gamma * p``, gamma searched from 0 in steps of the agnostic attack's gamma."""
    x = _honest(honest, at_least=2, attack="tailored")
    mu, p = x.mean(axis=0), _direction(x, direction)
    if k == 0 or not np.any(p):
        return _out([mu] * k, honest)
    unit = float(np.dot(np.asarray(agnostic[0], dtype=np.float64) - mu, p) / np.dot(p, p))
    unit = unit if unit > 0 else 1.0
    search: dict[str, float] = {"evals": evals, "start": 0.0, "delta": unit, "ratio": 0.8}
    out = _optimised(x, k, lambda g: mu + g * p, np.zeros((k, x.shape[1])), aggregator, search)
    return _out(list(out), honest)


def min_max_tailored(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    aggregator: Aggregator | None = None,
    direction: Direction = "std",
    evals: int = 20,
) -> list[np.ndarray]:
    """Min-Max tailored to the rule: ``mean + gamma * p`` with ``gamma`` tuned against
    ``aggregator``, searched in units of :func:`~fedrlhf.simulation.attacks.min_max`'s gamma."""
    k = _count(num_malicious, "min_max_tailored")
    agnostic = min_max(honest, num_malicious=1, direction=direction)
    return _tailored(honest, k, agnostic, direction, aggregator, evals)


def min_sum_tailored(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    aggregator: Aggregator | None = None,
    direction: Direction = "std",
    evals: int = 20,
) -> list[np.ndarray]:
    """Min-Sum tailored to the rule: as :func:`min_max_tailored`, in units of :func:`min_sum`'s gamma."""
    k = _count(num_malicious, "min_sum_tailored")
    agnostic = min_sum(honest, num_malicious=1, direction=direction)
    return _tailored(honest, k, agnostic, direction, aggregator, evals)


#: Registered into :data:`fedrlhf.simulation.attacks.UPDATE_ATTACKS` (``attack.name``).
ADAPTIVE_ATTACKS: dict[str, Callable[..., list[np.ndarray]]] = {
    "alie_opt": alie_opt,
    "ipm_opt": ipm_opt,
    "min_max_tailored": min_max_tailored,
    "min_sum_tailored": min_sum_tailored,
    "min_sum": min_sum,
    "mimic": mimic,
    "zeros": zeros,
}
UPDATE_ATTACKS.update(ADAPTIVE_ATTACKS)
ATTACKS.update(ADAPTIVE_ATTACKS)
