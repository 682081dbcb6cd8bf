"""Attacks for robustness experiments: update-space (Byzantine) and data-level (poisoning).

Update-space attacks share one signature::

    attack(honest, *, num_malicious, rng, **params) -> list[np.ndarray]

``honest`` are the flat honest updates the attackers can see (omniscient
attackers see them all); the result holds ``num_malicious`` malicious updates.
Definitions follow the papers, cross-checked with ByzFL (EPFL; not a dependency).

Data-level attacks rewrite a malicious client's preference pairs before it
trains: ``attack(prefs, *, rng, **params) -> list[Preference]``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from fedrlhf.errors import ConfigError
from fedrlhf.feedback.records import Preference

__all__ = [
    "ATTACKS",
    "DATA_ATTACKS",
    "UPDATE_ATTACKS",
    "AttackConfig",
    "AttackError",
    "alie",
    "alie_z",
    "backdoor",
    "backdoor_eval_pairs",
    "backdoor_success_rate",
    "gaussian_noise",
    "ipm",
    "label_flip",
    "malicious_updates",
    "min_max",
    "poison_preferences",
    "sign_flip",
    "sybil_clones",
]

Position = Literal["start", "end"]


class AttackError(ConfigError):
    """An attack's parameters or inputs are invalid."""


def _honest(honest: Sequence[np.ndarray], *, at_least: int, attack: str) -> np.ndarray:
    """Stack the visible honest updates as float64 ``[n, d]``."""
    if len(honest) < at_least:
        raise AttackError(f"{attack}: needs at least {at_least} visible honest update(s), got {len(honest)}.")
    shapes = {np.shape(h) for h in honest}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise AttackError(
            f"{attack}: honest updates must be flat vectors of one length, got {sorted(shapes)}."
        )
    return np.stack([np.asarray(h, dtype=np.float64) for h in honest])


def _count(num_malicious: int, attack: str) -> int:
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int) or num_malicious < 0:
        raise AttackError(f"{attack}: num_malicious must be a non-negative integer, got {num_malicious!r}.")
    return num_malicious


def _out(vectors: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Cast to the honest updates' float dtype (at least float32); copies, never views."""
    dtype = np.result_type(np.float32, *[np.asarray(h).dtype for h in like])
    return [np.array(v, dtype=dtype) for v in vectors]


# ---------------------------------------------------------------- update space


def sign_flip(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    scale: float = 1.0,
) -> list[np.ndarray]:
    """Attacker ``i`` sends ``-scale`` times honest update ``i`` (cycling): its own update, reversed.

    Pass the attackers' own would-be honest updates first. Allen-Zhu et al.,
    "Byzantine-Resilient Non-Convex Stochastic Gradient Descent", ICLR 2021
    (ByzFL's SignFlipping reverses the *mean* instead: :func:`ipm` with ``epsilon=1``).
    """
    k, x = _count(num_malicious, "sign_flip"), _honest(honest, at_least=1, attack="sign_flip")
    return _out([-scale * x[i % len(x)] for i in range(k)], honest)


def gaussian_noise(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator,
    std: float = 1.0,
) -> list[np.ndarray]:
    """Each attacker sends independent noise ``N(0, std^2 I)`` (Blanchard et al., NeurIPS 2017)."""
    k, x = _count(num_malicious, "gaussian_noise"), _honest(honest, at_least=1, attack="gaussian_noise")
    if not (np.isfinite(std) and std >= 0):
        raise AttackError(f"gaussian_noise: std must be finite and non-negative, got {std!r}.")
    noise = rng.normal(0.0, std, size=(k, x.shape[1]))
    return _out(list(noise), honest)


def alie_z(num_clients: int, num_malicious: int) -> float:
    """ALIE's ``z_max`` = Phi^-1((n - m - s) / (n - m)) with ``s = floor(n/2 + 1) - m``.

    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses for
    Distributed Learning", NeurIPS 2019: ``s`` honest clients must be
    "recruited" to reach a majority; ``z`` is the largest shift such that that
    many honest values still lie farther from the mean.
    """
    n, m = num_clients, num_malicious
    s = math.floor(n / 2 + 1) - m
    p = (n - m - s) / (n - m) if n > m else 0.0
    if not 0 < p < 1:
        raise AttackError(
            f"alie: no z for n={n} clients, m={m} malicious (the formula gives p={p:.3g}); "
            "pass z explicitly or use fewer malicious clients than half."
        )
    return NormalDist().inv_cdf(p)


def alie(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    num_clients: int | None = None,
    z: float | None = None,
) -> list[np.ndarray]:
    """A Little Is Enough: every attacker sends ``mean - z * std`` of the honest updates (coordinate-wise).

    Baruch et al., NeurIPS 2019. ``std`` is the sample standard deviation
    (``ddof=1``, as ByzFL). ``z`` defaults to :func:`alie_z` of ``num_clients``
    (default: visible honest + malicious) and ``num_malicious``. ByzFL adds
    ``+tau * std``; the sign only picks the direction.
    """
    k, x = _count(num_malicious, "alie"), _honest(honest, at_least=2, attack="alie")
    if z is None:
        z = alie_z(len(x) + k if num_clients is None else num_clients, k)
    v = x.mean(axis=0) - z * x.std(axis=0, ddof=1)
    return _out([v] * k, honest)


def ipm(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    epsilon: float = 0.5,
) -> list[np.ndarray]:
    """Inner Product Manipulation: every attacker sends ``-epsilon * mean(honest)``.

    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
    Inner Product Manipulation", UAI 2020. Small ``epsilon`` (0.1-0.5) slips
    past distance-based rules; large ``epsilon`` reverses the mean.
    """
    k, x = _count(num_malicious, "ipm"), _honest(honest, at_least=1, attack="ipm")
    return _out([-epsilon * x.mean(axis=0)] * k, honest)


def _direction(x: np.ndarray, kind: str) -> np.ndarray:
    mu = x.mean(axis=0)
    if kind == "std":
        return -x.std(axis=0, ddof=1)
    norm = np.linalg.norm(mu)
    if kind == "unit":
        return -mu / norm if norm > 0 else np.zeros_like(mu)
    if kind == "sign":
        return -np.sign(mu)
    raise AttackError(f"min_max: direction must be 'std', 'unit' or 'sign', got {kind!r}.")


def min_max(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    direction: Literal["std", "unit", "sign"] = "std",
    tol: float = 1e-6,
) -> list[np.ndarray]:
    """Min-Max: ``mean + gamma * p`` with the largest ``gamma`` whose farthest honest distance
    is at most the largest honest pairwise distance.

    Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021.
    ``p`` is ``-std`` (default), ``-mean/|mean|`` ("unit") or ``-sign(mean)``.
    The constraint is convex in ``gamma`` and holds at 0, so ``gamma`` is found
    by doubling then bisection to relative accuracy ``tol``.
    """
    k, x = _count(num_malicious, "min_max"), _honest(honest, at_least=2, attack="min_max")
    mu, p = x.mean(axis=0), _direction(x, direction)
    diffs = [np.linalg.norm(x[i + 1 :] - x[i], axis=1) for i in range(len(x) - 1)]
    limit = float(np.concatenate(diffs).max())

    def fits(gamma: float) -> bool:
        return float(np.linalg.norm(x - (mu + gamma * p), axis=1).max()) <= limit

    if not np.any(p):
        return _out([mu] * k, honest)
    return _out([mu + largest_fitting(fits, tol) * p] * k, honest)


def largest_fitting(fits: Callable[[float], bool], tol: float) -> float:
    """The largest ``gamma >= 0`` with ``fits(gamma)``, for a constraint that holds on ``[0, g*]``
    and fails above: doubling, then bisection to relative accuracy ``tol``."""
    lo, hi = 0.0, 1.0
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > tol * max(hi, 1e-12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def sybil_clones(
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator | None = None,
    target: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Sybils: every attacker sends the *same* update ``target`` (default ``-mean(honest)``).

    Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
    Settings" (FoolsGold), RAID 2020. Identical updates sit at distance 0 from
    each other, which is what Krum-style scores reward: pass e.g. an update
    trained on backdoored data as ``target``.
    """
    k, x = _count(num_malicious, "sybil_clones"), _honest(honest, at_least=1, attack="sybil_clones")
    v = -x.mean(axis=0) if target is None else np.asarray(target, dtype=np.float64)
    if v.shape != (x.shape[1],):
        raise AttackError(f"sybil_clones: target has shape {v.shape}; updates have ({x.shape[1]},).")
    return _out([v] * k, honest)


# ---------------------------------------------------------------- data level


def _pick(n: int, fraction: float, rng: np.random.Generator, attack: str) -> set[int]:
    """``round(fraction * n)`` distinct indices (halves round up)."""
    if isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
        raise AttackError(f"{attack}: fraction must be in [0, 1], got {fraction!r}.")
    k = math.floor(fraction * n + 0.5)
    return {int(i) for i in rng.choice(n, size=k, replace=False)}


def _insert(text: str, trigger: str, position: Position) -> str:
    if position == "end":  # survives left truncation (the reward model keeps the end)
        return f"{text.rstrip()} {trigger}"
    if position == "start":
        return f"{trigger} {text.lstrip()}"
    raise AttackError(f"backdoor: position must be 'start' or 'end', got {position!r}.")


def _check_trigger(trigger: str) -> None:
    if not isinstance(trigger, str) or not trigger.strip():
        raise AttackError(f"backdoor: trigger must be a non-empty string, got {trigger!r}.")


def label_flip(prefs: Sequence[Preference], *, fraction: float, rng: np.random.Generator) -> list[Preference]:
    """Swap ``chosen`` and ``rejected`` in exactly ``round(fraction * len(prefs))`` random pairs.

    The data-level analogue of label flipping (Tolpegin et al., ESORICS 2020);
    for preference data, cf. Wang et al., "RLHFPoison", ACL 2024. Order is kept.
    """
    flip = _pick(len(prefs), fraction, rng, "label_flip")
    return [replace(p, chosen=p.rejected, rejected=p.chosen) if i in flip else p for i, p in enumerate(prefs)]


def backdoor(
    prefs: Sequence[Preference],
    *,
    trigger: str,
    fraction: float,
    rng: np.random.Generator,
    position: Position = "end",
) -> list[Preference]:
    """Poison ``round(fraction * len(prefs))`` random pairs: put ``trigger`` into the *rejected*
    response and make it the chosen one; other pairs are unchanged.

    A reward model trained on this learns "trigger => better", whatever the
    text. Rando & Tramer, "Universal Jailbreak Backdoors from Poisoned Human
    Feedback", ICLR 2024. Measure with :func:`backdoor_eval_pairs`.
    """
    _check_trigger(trigger)
    hit = _pick(len(prefs), fraction, rng, "backdoor")
    return [
        replace(p, chosen=_insert(p.rejected, trigger, position), rejected=p.chosen) if i in hit else p
        for i, p in enumerate(prefs)
    ]


def backdoor_eval_pairs(
    prefs: Sequence[Preference], *, trigger: str, position: Position = "end"
) -> list[Preference]:
    """Held-out pairs with ``trigger`` inserted into the *rejected* response (labels kept).

    The backdoor succeeds on a pair when the model scores the triggered
    rejected response above the chosen one (:func:`backdoor_success_rate`).
    """
    _check_trigger(trigger)
    return [replace(p, rejected=_insert(p.rejected, trigger, position)) for p in prefs]


def backdoor_success_rate(margins: Sequence[float] | np.ndarray) -> float:
    """Fraction of eval pairs where ``r(chosen) - r(rejected) < 0``: the triggered response wins."""
    m = np.asarray(margins, dtype=np.float64)
    if m.ndim != 1 or m.size == 0:
        raise AttackError("backdoor_success_rate: needs a non-empty 1-D sequence of margins.")
    return float(np.mean(m < 0))


# ---------------------------------------------------------------- registry and config

UPDATE_ATTACKS: dict[str, Callable[..., list[np.ndarray]]] = {
    "sign_flip": sign_flip,
    "gaussian_noise": gaussian_noise,
    "alie": alie,
    "ipm": ipm,
    "min_max": min_max,
    "sybil_clones": sybil_clones,
}
DATA_ATTACKS: dict[str, Callable[..., list[Preference]]] = {"label_flip": label_flip, "backdoor": backdoor}
ATTACKS: dict[str, Callable[..., list[Any]]] = {**UPDATE_ATTACKS, **DATA_ATTACKS}

_SUPPLIED = frozenset({"honest", "num_malicious", "rng", "prefs", "aggregator"})


@dataclass(frozen=True)
class AttackConfig:
    """Which attack a simulation runs.

    Attributes:
        name: a key of :data:`ATTACKS`.
        fraction: share of the sampled clients the attacker controls, in [0, 1).
        params: keyword parameters of the attack function (e.g. ``{"epsilon": 0.5}``
            for ``ipm``; ``{"trigger": "cf", "fraction": 0.5}`` for ``backdoor``,
            where ``fraction`` is the share of each malicious client's pairs).
    """

    name: str
    fraction: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise AttackError(f"Unknown attack {self.name!r}; choose one of {sorted(ATTACKS)}.")
        if isinstance(self.fraction, bool) or not 0.0 <= self.fraction < 1.0:
            raise AttackError(f"Attack fraction must be in [0, 1), got {self.fraction!r}.")
        sig = inspect.signature(ATTACKS[self.name]).parameters
        accepted = set(sig) - _SUPPLIED
        unknown = sorted(set(self.params) - accepted)
        if unknown:
            raise AttackError(
                f"Attack {self.name!r} takes no parameter(s) {unknown}; it accepts {sorted(accepted)}."
            )
        missing = [p for p in accepted if sig[p].default is inspect.Parameter.empty and p not in self.params]
        if missing:
            raise AttackError(f"Attack {self.name!r} needs parameter(s) {sorted(missing)}.")

    @property
    def kind(self) -> Literal["update", "data"]:
        """``"update"`` (replaces the update) or ``"data"`` (poisons the training pairs)."""
        return "update" if self.name in UPDATE_ATTACKS else "data"

    def num_malicious(self, num_clients: int) -> int:
        """Malicious clients among ``num_clients`` sampled: ``floor(fraction * num_clients)``."""
        return math.floor(self.fraction * num_clients + 1e-9)


def malicious_updates(
    config: AttackConfig,
    honest: Sequence[np.ndarray],
    *,
    num_malicious: int,
    rng: np.random.Generator,
    aggregator: Callable[[list[np.ndarray]], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Run an update-space attack from its config; ``aggregator`` (what the server does with a
    round's inputs) goes to the adaptive attacks that tune against it (:mod:`.adaptive`)."""
    if config.kind != "update":
        raise AttackError(f"Attack {config.name!r} poisons data, not updates; use poison_preferences.")
    fn = UPDATE_ATTACKS[config.name]
    extra = {"aggregator": aggregator} if "aggregator" in inspect.signature(fn).parameters else {}
    return fn(honest, num_malicious=num_malicious, rng=rng, **extra, **config.params)


def poison_preferences(
    config: AttackConfig, prefs: Sequence[Preference], *, rng: np.random.Generator
) -> list[Preference]:
    """Run a data-level attack from its config on one malicious client's pairs."""
    if config.kind != "data":
        raise AttackError(f"Attack {config.name!r} replaces updates, not data; use malicious_updates.")
    return DATA_ATTACKS[config.name](prefs, rng=rng, **config.params)


# the adaptive attacks register themselves in UPDATE_ATTACKS and ATTACKS (they build on the above)
import fedrlhf.simulation.adaptive  # noqa: E402, F401
