"""One-run privacy auditing (Steinke, Nasr, Jagielski 2023, arXiv:2305.08846).

``m`` canaries each get an independent fair coin ``truth[i]`` (included or not; for
preference pairs: which side is labelled preferred). After training, an attack
gives each canary a membership score. The auditor guesses the ``k_pos`` highest
scores as True, the ``k_neg`` lowest as False and abstains on the rest; if the
training were (eps, delta)-DP, the number of correct guesses could not beat a
binomial tail by much. The largest eps rejected at level ``beta`` is an empirical
*lower* bound on the epsilon the training actually provides.

This is the paper's exact bound (Appendix D, ``p_value_DP_audit`` /
``get_eps_audit``): with ``delta = 0`` it is the binomial tail of Theorem 3.1,
``P[Binomial(r, e^eps / (1 + e^eps)) >= v]``; with ``delta > 0`` it adds their
``2 m delta`` correction term. It reproduces the paper's printed values (0.673 for
m=1000, r=100, v=75, delta=1e-4, beta=0.05).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats  # type: ignore[import-untyped]  # scipy-stubs is not a dependency

from fedrlhf.errors import ConfigError

BISECTION_STEPS = 30  # as in the paper's get_eps_audit


@dataclass(frozen=True)
class AuditResult:
    """Outcome of one audit.

    Attributes:
        epsilon_lower_bound: with probability >= 1 - beta, the training is not
            (eps, delta)-DP for any eps below this.
        correct: correct guesses v.
        guesses: guesses made r = k_pos + k_neg (abstentions excluded).
        k_pos, k_neg: how many top / bottom scores were guessed True / False.
    """

    epsilon_lower_bound: float
    correct: int
    guesses: int
    k_pos: int = 0
    k_neg: int = 0


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float = 0.0) -> float:
    """P[>= ``correct`` of ``guesses`` right] under (epsilon, delta)-DP (paper's App. D)."""
    _check_counts(canaries=canaries, guesses=guesses, correct=correct, delta=delta)
    if not epsilon >= 0:
        raise ConfigError(f"epsilon must be >= 0, got {epsilon!r}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of eps-DP randomized response
    tail = float(stats.binom.sf(correct - 1, guesses, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    # alpha = max_i P[v > Binomial(r, q) >= v - i] / i, the paper's running maximum, vectorised
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(tail + alpha * delta * 2 * canaries, 1.0)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, beta: float = 0.05, delta: float = 0.0
) -> float:
    """Largest eps whose p-value is below ``beta`` (bracket then 30 bisections; the low end)."""
    _check_counts(canaries=canaries, guesses=guesses, correct=correct, delta=delta)
    if not 0 < beta < 1:
        raise ConfigError(f"beta must be in (0, 1), got {beta!r}")

    def rejected(eps: float) -> bool:
        return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta) < beta

    eps_min, eps_max = 0.0, 1.0
    if not rejected(eps_min):
        return 0.0
    while rejected(eps_max):  # terminates: the p-value -> 1 as eps -> inf
        eps_max += 1.0
    for _ in range(BISECTION_STEPS):
        eps = (eps_min + eps_max) / 2
        if rejected(eps):
            eps_min = eps
        else:
            eps_max = eps
    return eps_min


def count_correct(scores: np.ndarray, truth: np.ndarray, *, k_pos: int, k_neg: int) -> int:
    """Correct guesses when the top ``k_pos`` scores are guessed True and the bottom ``k_neg`` False.

    Ties are broken by canary index (stable sort), so canary order must not depend on ``truth``.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth).ravel()
    m = scores.size
    if truth.size != m or truth.dtype != np.bool_:
        raise ConfigError(f"truth must be a bool array of the same length as scores ({m})")
    if not np.all(np.isfinite(scores)):
        raise ConfigError("scores must be finite")
    for name, k in (("k_pos", k_pos), ("k_neg", k_neg)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {k!r}")
    if k_pos + k_neg > m:
        raise ConfigError(f"k_pos + k_neg = {k_pos + k_neg} exceeds the number of canaries {m}")
    order = np.argsort(-scores, kind="stable")  # highest score first
    top, bottom = order[:k_pos], order[m - k_neg :]
    return int(truth[top].sum() + (~truth[bottom]).sum())


def empirical_epsilon(
    scores: np.ndarray,
    truth: np.ndarray,
    *,
    k_pos: int,
    k_neg: int,
    beta: float = 0.05,
    delta: float = 0.0,
) -> AuditResult:
    """Empirical epsilon lower bound from one run's canary scores (confidence ``1 - beta``).

    Args:
        scores: membership score per canary (higher = more likely True).
        truth: the canaries' fair coins (bool), drawn independently with probability 1/2.
        k_pos, k_neg: guesses made at the top and at the bottom of the score order.
        beta: 1 - confidence of the bound.
        delta: the delta of the (eps, delta)-DP hypothesis being tested.
    """
    correct = count_correct(scores, truth, k_pos=k_pos, k_neg=k_neg)
    guesses = k_pos + k_neg
    eps = epsilon_lower_bound(
        canaries=int(np.size(scores)), guesses=guesses, correct=correct, beta=beta, delta=delta
    )
    return AuditResult(epsilon_lower_bound=eps, correct=correct, guesses=guesses, k_pos=k_pos, k_neg=k_neg)


def best_epsilon_over_k(
    scores: np.ndarray,
    truth: np.ndarray,
    ks: Sequence[int | tuple[int, int]],
    beta: float = 0.05,
    *,
    delta: float = 0.0,
) -> AuditResult:
    """The best audit over several guess counts, still valid at confidence ``1 - beta``.

    ``ks`` holds ``(k_pos, k_neg)`` pairs, or ints ``k`` meaning ``(k, k)``. Choosing
    the best of ``len(ks)`` audits after seeing them is a multiple comparison, so each
    audit runs at ``beta / len(ks)`` (union bound).
    """
    if not ks:
        raise ConfigError("ks must name at least one (k_pos, k_neg)")
    pairs = [(k, k) if isinstance(k, (int, np.integer)) else (k[0], k[1]) for k in ks]
    per_audit_beta = beta / len(pairs)
    results = [
        empirical_epsilon(scores, truth, k_pos=kp, k_neg=kn, beta=per_audit_beta, delta=delta)
        for kp, kn in pairs
    ]
    return max(results, key=lambda r: r.epsilon_lower_bound)


def _check_counts(*, canaries: int, guesses: int, correct: int, delta: float) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ConfigError(f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")
    if not 0 <= delta <= 1:
        raise ConfigError(f"delta must be in [0, 1], got {delta!r}")
