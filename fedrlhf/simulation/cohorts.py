"""Synthetic cohorts with known ground-truth preferences.

A user is a Dirichlet mixture of preference *archetypes*; an archetype is a
utility weight vector over perceivable attributes of a response (see
:data:`FEATURES`). Responses are generated text, so a model must read the
attributes from wording, never from a leaked tag. For a pair (A, B) the label is
sampled from Bradley-Terry, ``P(A chosen) = sigmoid(beta * (u(A) - u(B)))``, so the
Bayes-optimal (per-user) accuracy ``E[max(p, 1 - p)]`` is below 1 and known.

User ``i`` is derived from ``(seed, i)`` alone (:func:`make_user`), so cohorts of
any size are generated lazily (:func:`iter_users`) and written one directory per
user (:func:`materialize`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrlhf.errors import ConfigError
from fedrlhf.feedback import Preference, write_jsonl
from fedrlhf.simulation._cohort_text import pick_prompt, render

FEATURES = ("long", "bullets", "polite", "hedged", "enthusiastic", "refuses_harmful", "refuses_benign")
"""Attributes of a response (each 0 or 1); the last two are exclusive (harmful or benign prompt)."""

ARCHETYPES: dict[str, tuple[float, ...]] = {
    # weights of the first six FEATURES; refusing a benign prompt costs every user the same
    "concise": (-2.0, -1.0, 0.0, -0.5, 0.0, 0.5),
    "thorough": (2.0, 1.5, 0.5, 0.0, 0.0, 0.5),
    "formal-polite": (0.0, 0.0, 2.0, 1.0, -1.5, 1.0),
    "casual-direct": (-0.5, 0.0, -1.5, -1.5, 1.5, -1.5),
    "safety-first": (0.0, 0.0, 0.5, 0.5, 0.0, 4.0),
}
"""Utility weights per archetype, in :data:`FEATURES` order (without ``refuses_benign``)."""

DEFAULT_PRIOR = (0.225, 0.225, 0.225, 0.225, 0.1)
"""Share of users per dominant archetype (in :data:`ARCHETYPES` order): safety-first is a 10 % minority."""

GENERATOR_VERSION = 1
"""Bumped when the generated data changes for the same config (invalidates materialized users)."""


@dataclass(frozen=True)
class SyntheticCohortConfig:
    """A synthetic cohort.

    Attributes:
        num_users: users in the cohort (user ``i``'s data does not depend on it).
        pairs_per_user, test_pairs_per_user: training / held-out pairs of a typical user.
        size_sigma: spread of per-user sizes; sizes are scaled by a lognormal factor of
            mean 1 and log-standard-deviation ``size_sigma`` (0: every user the same).
        alpha: Dirichlet concentration of a user's archetype mixture; small (0.1) gives
            users close to one archetype (non-IID), large (100) near-identical users.
        beta: Bradley-Terry inverse temperature; larger means less label noise.
        archetype_prior: share of users whose dominant archetype is each of
            :data:`ARCHETYPES` (in order; normalised); ``None`` is uniform.
        harmful_fraction: share of pairs whose prompt is a harmful request.
        benign_refusal_rate: chance a response to a benign prompt is a refusal.
        benign_refusal_penalty: utility every user loses for a refusal of a benign prompt.
        seed: root seed; user ``i`` uses ``numpy.random.default_rng([seed, i])``.
    """

    num_users: int = 100
    pairs_per_user: int = 32
    test_pairs_per_user: int = 16
    size_sigma: float = 0.0
    alpha: float = 0.1
    beta: float = 2.0
    archetype_prior: tuple[float, ...] | None = DEFAULT_PRIOR
    harmful_fraction: float = 0.2
    benign_refusal_rate: float = 0.1
    benign_refusal_penalty: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("num_users", 1), ("pairs_per_user", 1), ("test_pairs_per_user", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"cohort.{name} must be an integer >= {minimum}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"cohort.seed must be an integer >= 0, got {self.seed!r}")
        for name in ("alpha", "beta", "size_sigma", "benign_refusal_penalty"):
            _number(name, getattr(self, name), positive=name in ("alpha", "beta"))
        for name in ("harmful_fraction", "benign_refusal_rate"):
            value = getattr(self, name)
            _number(name, value, positive=False)
            if value > 1:
                raise ConfigError(f"cohort.{name} must be in [0, 1], got {value!r}")
        if self.archetype_prior is not None:
            object.__setattr__(self, "archetype_prior", _normalised_prior(self.archetype_prior))

    def prior(self) -> np.ndarray:
        """The normalised share of users per dominant archetype."""
        if self.archetype_prior is None:
            return np.full(len(ARCHETYPES), 1.0 / len(ARCHETYPES))
        return np.asarray(self.archetype_prior, dtype=np.float64)

    def fingerprint(self) -> str:
        """Hash of everything that determines a user's data (not ``num_users``)."""
        fields = dataclasses.asdict(self)
        fields.pop("num_users")
        fields["generator_version"] = GENERATOR_VERSION
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"cohort.{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"cohort.{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")


def _normalised_prior(prior: object) -> tuple[float, ...]:
    names = list(ARCHETYPES)
    if not isinstance(prior, (tuple, list)) or len(prior) != len(names):
        raise ConfigError(f"cohort.archetype_prior must list {len(names)} shares, one per {names}")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in prior):
        raise ConfigError(f"cohort.archetype_prior must hold numbers, got {prior!r}")
    if any(not math.isfinite(p) or p < 0 for p in prior) or sum(prior) <= 0:
        raise ConfigError(f"cohort.archetype_prior must be >= 0 with a positive sum, got {prior!r}")
    total = float(sum(prior))
    return tuple(float(p) / total for p in prior)


@dataclass(frozen=True, eq=False)  # numpy fields: compare users field by field
class UserData:
    """One synthetic user and their ground truth.

    ``*_bayes_prob[j]`` is the probability, under the user's utility, that pair ``j``'s
    labelled ``chosen`` is truly preferred; ``*_features[j]`` holds the
    :data:`FEATURES` of ``(chosen, rejected)``, shape ``(2, len(FEATURES))``.
    """

    index: int
    user_id: str
    dominant_archetype: str
    mixture: np.ndarray
    weights: np.ndarray
    train: list[Preference]
    test: list[Preference]
    train_bayes_prob: np.ndarray
    test_bayes_prob: np.ndarray
    train_features: np.ndarray
    test_features: np.ndarray


def user_id(index: int) -> str:
    """The id (and directory name) of user ``index``: ``user-00042``."""
    return f"user-{index:05d}"


def make_user(cfg: SyntheticCohortConfig, index: int) -> UserData:
    """User ``index`` of the cohort, derived from ``(cfg.seed, index)`` only."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < cfg.num_users:
        raise ConfigError(f"user index must be an integer in [0, {cfg.num_users}), got {index!r}")
    rng = np.random.default_rng([cfg.seed, index])
    names = list(ARCHETYPES)
    dominant = int(rng.choice(len(names), p=cfg.prior()))
    mixture = _mixture(rng, len(names), cfg.alpha, dominant)
    weights = np.append(mixture @ np.array(list(ARCHETYPES.values())), -cfg.benign_refusal_penalty)
    scale = math.exp(cfg.size_sigma * rng.standard_normal() - cfg.size_sigma**2 / 2)
    n_train = max(1, round(cfg.pairs_per_user * scale))
    n_test = max(1, round(cfg.test_pairs_per_user * scale)) if cfg.test_pairs_per_user else 0
    pairs, probs, feats = _sample_pairs(cfg, rng, weights, n_train + n_test)
    return UserData(
        index=index,
        user_id=user_id(index),
        dominant_archetype=names[dominant],
        mixture=mixture,
        weights=weights,
        train=pairs[:n_train],
        test=pairs[n_train:],
        train_bayes_prob=probs[:n_train],
        test_bayes_prob=probs[n_train:],
        train_features=feats[:n_train],
        test_features=feats[n_train:],
    )


def iter_users(cfg: SyntheticCohortConfig, indices: Iterable[int] | None = None) -> Iterator[UserData]:
    """Generate users one at a time (all of them, or ``indices``); memory stays per-user."""
    for i in range(cfg.num_users) if indices is None else indices:
        yield make_user(cfg, i)


def _mixture(rng: np.random.Generator, k: int, alpha: float, dominant: int) -> np.ndarray:
    """Dirichlet(alpha) weights whose largest entry is moved to ``dominant``."""
    pi = rng.dirichlet(np.full(k, alpha))
    if not np.all(np.isfinite(pi)) or pi.sum() <= 0:  # tiny alpha can underflow to all zeros
        pi = np.eye(k)[int(np.argmax(rng.random(k)))]
    top = int(np.argmax(pi))
    pi[[top, dominant]] = pi[[dominant, top]]
    return pi


def _sample_pairs(
    cfg: SyntheticCohortConfig, rng: np.random.Generator, weights: np.ndarray, n: int
) -> tuple[list[Preference], np.ndarray, np.ndarray]:
    """``n`` labelled pairs, P(chosen truly preferred) and (chosen, rejected) features."""
    harmful = rng.random(n) < cfg.harmful_fraction
    feats = _draw_features(rng, harmful, cfg.benign_refusal_rate)
    same = np.all(feats[:, 0] == feats[:, 1], axis=1)
    while same.any():  # identical attributes would be a coin flip: redraw B
        redraw = _draw_features(rng, harmful[same], cfg.benign_refusal_rate)
        feats[same, 1] = redraw[:, 1]
        same = np.all(feats[:, 0] == feats[:, 1], axis=1)
    margin = cfg.beta * (feats[:, 0] - feats[:, 1]) @ weights
    p_a = 1.0 / (1.0 + np.exp(-margin))
    a_chosen = rng.random(n) < p_a
    prob = np.where(a_chosen, p_a, 1.0 - p_a)
    feats = np.where(a_chosen[:, None, None], feats, feats[:, ::-1])
    rnd = random.Random(int(rng.integers(2**63)))
    pairs = []
    for j in range(n):
        prompt, topic = pick_prompt(rnd, bool(harmful[j]))
        chosen, rejected = (render(topic, bool(harmful[j]), f, rnd) for f in feats[j])
        pairs.append(Preference(prompt, chosen, rejected))
    return pairs, prob, feats


def _draw_features(rng: np.random.Generator, harmful: np.ndarray, benign_refusal: float) -> np.ndarray:
    """Random features of pairs, shape ``(n, 2, len(FEATURES))``."""
    n = len(harmful)
    feats = np.zeros((n, 2, len(FEATURES)))
    feats[:, :, :5] = rng.integers(0, 2, size=(n, 2, 5))
    refuses = rng.random((n, 2)) < np.where(harmful, 0.5, benign_refusal)[:, None]
    feats[:, :, 5] = refuses & harmful[:, None]
    feats[:, :, 6] = refuses & ~harmful[:, None]
    return feats


# --------------------------------------------------------------------------- a whole cohort


@dataclass(frozen=True, eq=False)
class Cohort:
    """A materialised cohort (fine for thousands of users; stream :func:`iter_users` beyond)."""

    config: SyntheticCohortConfig
    users: list[UserData]

    def __len__(self) -> int:
        return len(self.users)

    def global_test(self) -> list[Preference]:
        """Every user's test pairs, concatenated in user order."""
        return [pair for user in self.users for pair in user.test]

    def bayes_accuracy(self, split: str = "test") -> float:
        """Expected accuracy of the per-user Bayes-optimal predictor over all pairs."""
        return bayes_accuracy(self.users, split)

    def bayes_accuracy_by_archetype(self, split: str = "test") -> dict[str, float]:
        """:meth:`bayes_accuracy` over the users of each dominant archetype."""
        return bayes_accuracy_by_archetype(self.users, split)

    def population_accuracy(self, split: str = "test") -> float:
        """Expected accuracy of one utility for everyone (the users' mean weights).

        The gap to :meth:`bayes_accuracy` is what personalisation can win.
        """
        mean = np.mean([u.weights for u in self.users], axis=0)
        return utility_accuracy(self.users, mean, split)


def make_synthetic_cohort(cfg: SyntheticCohortConfig) -> Cohort:
    """All ``cfg.num_users`` users in memory."""
    return Cohort(cfg, list(iter_users(cfg)))


def _split(user: UserData, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if split == "train":
        return user.train_bayes_prob, user.train_features
    return user.test_bayes_prob, user.test_features


def bayes_accuracy(users: Iterable[UserData], split: str = "test") -> float:
    """Mean of ``max(p, 1 - p)`` over the pairs of ``users`` (NaN when there are none)."""
    total, count = 0.0, 0
    for user in users:
        prob = _split(user, split)[0]
        total += float(np.maximum(prob, 1 - prob).sum())
        count += len(prob)
    return total / count if count else float("nan")


def bayes_accuracy_by_archetype(users: Iterable[UserData], split: str = "test") -> dict[str, float]:
    """:func:`bayes_accuracy` per dominant archetype (archetypes without pairs left out)."""
    groups: dict[str, list[UserData]] = {}
    for user in users:
        groups.setdefault(user.dominant_archetype, []).append(user)
    return {name: bayes_accuracy(groups[name], split) for name in ARCHETYPES if name in groups}


def utility_accuracy(users: Iterable[UserData], weights: np.ndarray, split: str = "test") -> float:
    """Expected accuracy of predicting every pair by one utility ``weights``.

    A pair counts ``p`` if ``weights`` ranks its chosen first, ``1 - p`` if it ranks it
    second and ``0.5`` on a tie, where ``p`` is the user's true probability.
    """
    total, count = 0.0, 0
    for user in users:
        prob, feats = _split(user, split)
        margin = (feats[:, 0] - feats[:, 1]) @ np.asarray(weights, dtype=np.float64)
        total += float(np.where(margin > 0, prob, np.where(margin < 0, 1 - prob, 0.5)).sum())
        count += len(prob)
    return total / count if count else float("nan")


# --------------------------------------------------------------------------- clients at rest


def materialize(
    cohort_or_cfg: Cohort | SyntheticCohortConfig,
    root: Path,
    *,
    users: Iterable[int] | None = None,
    fingerprint: str | None = None,
) -> list[Path]:
    """Write users as client directories ``root/user-00042/{train.jsonl,test.jsonl,meta.json}``.

    Idempotent: a user whose ``meta.json`` carries the same config fingerprint is
    skipped. ``meta.json`` is written last, so an interrupted user is redone.

    ``fingerprint`` replaces the config's own (:meth:`SyntheticCohortConfig.fingerprint`) for
    users whose data is more than the config's, e.g. pairs over a policy's answers.

    Returns:
        The user directories, in the order of ``users`` (default: every user).

    Raises:
        ConfigError: a user directory holds a different cohort's data (use a fresh
            ``root`` or delete it).
    """
    cfg = cohort_or_cfg if isinstance(cohort_or_cfg, SyntheticCohortConfig) else cohort_or_cfg.config
    generated = [] if isinstance(cohort_or_cfg, SyntheticCohortConfig) else cohort_or_cfg.users
    known = {u.index: u for u in generated}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or cfg.fingerprint()
    out = []
    for i in range(cfg.num_users) if users is None else users:
        directory = root / user_id(i)
        if not _already_written(directory, fingerprint):
            _write_user(directory, known.get(i) or make_user(cfg, i), fingerprint)
        out.append(directory)
    return out


def _already_written(directory: Path, fingerprint: str) -> bool:
    meta = directory / "meta.json"
    if not meta.is_file():
        return False
    try:
        found = json.loads(meta.read_text()).get("config_fingerprint")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != fingerprint:
        raise ConfigError(
            f"{directory} holds a different cohort (config fingerprint {found!r}, expected "
            f"{fingerprint!r}); materialize into a fresh directory or delete the old one"
        )
    return True


def _write_user(directory: Path, user: UserData, fingerprint: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "train.jsonl", user.train)
    write_jsonl(directory / "test.jsonl", user.test)
    meta = {
        "user_id": user.user_id,
        "index": user.index,
        "dominant_archetype": user.dominant_archetype,
        "archetypes": list(ARCHETYPES),
        "mixture": user.mixture.tolist(),
        "features": list(FEATURES),
        "weights": user.weights.tolist(),
        "train_bayes_prob": user.train_bayes_prob.tolist(),
        "test_bayes_prob": user.test_bayes_prob.tolist(),
        "config_fingerprint": fingerprint,
    }
    tmp = directory / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(directory / "meta.json")
