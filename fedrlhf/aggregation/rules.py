"""Registry of aggregation rules: pick one by name from the run config.

Every rule is a pure function ``rule(updates, weights=None, **params) -> np.ndarray``
over flat update vectors (see :mod:`fedrlhf.aggregation.base`). Each has one
:class:`RuleSpec` in :data:`REGISTRY` saying everything the rest of the code asks of it:
its parameters from the run config's ``[robust]`` table, whether it runs on a secure sum,
how many secure group means it needs, and (filtering rules) which updates it keeps.
Adding a rule is adding its entry.

Every robust rule gets f = ``num_malicious`` and refuses inputs that cannot outvote f
attackers (``n <= 2f``; Krum ``n <= 2f + 2``, Bulyan ``n < 4f + 3``); the trimmed mean trims
at least f per side whatever ``trim_fraction`` says. In secure mode an attacker spoils its
group's mean, so the same counts apply to group means (:func:`secure_groups_needed`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from fedrlhf.aggregation.bucketing import bucketing
from fedrlhf.aggregation.clipping import centered_clipping, norm_bound
from fedrlhf.aggregation.cosine import cosine_filter, cosine_keep, cosine_two_sided, cosine_two_sided_keep
from fedrlhf.aggregation.dnc import dnc, dnc_keep
from fedrlhf.aggregation.geomed import geometric_median
from fedrlhf.aggregation.krum import bulyan, krum, multi_krum
from fedrlhf.aggregation.mean import mean
from fedrlhf.aggregation.median import coordinate_median, trimmed_mean
from fedrlhf.aggregation.nnm import nnm
from fedrlhf.errors import ConfigError

__all__ = [
    "FILTERING_RULES",
    "OUTLIER_RULES",
    "PRE_AGGREGATIONS",
    "REGISTRY",
    "RULES",
    "CC_ITERATIONS",
    "CC_TAU_SCALE",
    "RuleSpec",
    "aggregate",
    "dropped_by",
    "pre_aggregate",
    "requires_individual_updates",
    "rule_kwargs",
    "rule_parameters",
    "secure_groups_needed",
]

Rule = Callable[..., np.ndarray]


class RobustSettings(Protocol):
    """What a rule's parameters are read from (the run config's ``[robust]`` table)."""

    @property
    def num_malicious(self) -> int: ...
    @property
    def trim_fraction(self) -> float: ...
    @property
    def clip_norm(self) -> float: ...
    @property
    def outlier_z(self) -> float: ...


def _no_params(r: RobustSettings, n: int, rng: np.random.Generator) -> dict[str, Any]:
    return {}


def _f(r: RobustSettings, n: int, rng: np.random.Generator) -> dict[str, Any]:
    return {"num_malicious": r.num_malicious}


def _f_z(r: RobustSettings, n: int, rng: np.random.Generator) -> dict[str, Any]:
    return {"num_malicious": r.num_malicious, "outlier_z": r.outlier_z}


def _majority(f: int) -> int:
    """Inputs that outvote f arbitrary ones."""
    return 2 * f + 1


#: Centered clipping as the server runs it: radius = this multiple of the median distance of
#: the updates to the current centre (it follows the updates' scale), this many iterations.
CC_TAU_SCALE = 1.0
CC_ITERATIONS = 3


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """One aggregation rule and what the server and the config checks need to know about it.

    Attributes:
        fn: the rule, ``fn(updates, weights=None, **params)``.
        params: its keyword parameters from ``[robust]``, the round's update count ``n`` and
            the server's RNG.
        on_sums: linear in the (clipped) updates, so it can run on one secure sum.
            ``norm_bound`` qualifies only if each client clips before masking
            (:func:`fedrlhf.aggregation.clipping.clip_to_norm`).
        groups_needed: how many secure group means it needs, given f (``num_malicious``).
        keep: filtering rules only: ``keep(updates, **params)`` -> indices of the updates kept.
        centered: takes ``center``, the previous round's aggregate, when the server keeps one.
    """

    fn: Rule
    params: Callable[[RobustSettings, int, np.random.Generator], dict[str, Any]] = _no_params
    on_sums: bool = False
    groups_needed: Callable[[int], int] = lambda f: 1
    keep: Callable[..., np.ndarray] | None = None
    centered: bool = False


REGISTRY: dict[str, RuleSpec] = {
    "mean": RuleSpec(mean, on_sums=True),
    "coordinate_median": RuleSpec(coordinate_median, params=_f, groups_needed=_majority),
    "trimmed_mean": RuleSpec(  # trims max(int(beta * n), f) per side
        trimmed_mean,
        params=lambda r, n, rng: {"beta": r.trim_fraction, "num_malicious": r.num_malicious},
        groups_needed=_majority,
    ),
    "krum": RuleSpec(krum, params=_f, groups_needed=lambda f: 2 * f + 3),
    "multi_krum": RuleSpec(
        multi_krum,
        params=lambda r, n, rng: {
            "num_malicious": r.num_malicious,
            "num_selected": max(1, n - r.num_malicious),
        },
        groups_needed=lambda f: 2 * f + 3,
    ),
    "bulyan": RuleSpec(bulyan, params=_f, groups_needed=lambda f: 4 * f + 3),
    "geometric_median": RuleSpec(geometric_median, params=_f, groups_needed=_majority),
    "centered_clipping": RuleSpec(
        centered_clipping,
        params=lambda r, n, rng: {
            "tau_scale": CC_TAU_SCALE,
            "iterations": CC_ITERATIONS,
            "num_malicious": r.num_malicious,
        },
        groups_needed=_majority,
        centered=True,
    ),
    "norm_bound": RuleSpec(norm_bound, params=lambda r, n, rng: {"max_norm": r.clip_norm}, on_sums=True),
    "dnc": RuleSpec(  # fresh coordinate subsets every round, so attackers cannot plan around them
        dnc,
        params=lambda r, n, rng: {"num_malicious": r.num_malicious, "seed": int(rng.integers(2**63))},
        groups_needed=_majority,  # drop f of an honest majority, average what is left
        keep=dnc_keep,
    ),
    "cosine_filter": RuleSpec(cosine_filter, params=_f_z, groups_needed=_majority, keep=cosine_keep),
    "cosine_two_sided": RuleSpec(
        cosine_two_sided,
        params=_f_z,
        groups_needed=_majority,
        keep=cosine_two_sided_keep,  # drop 2f
    ),
}

RULES: dict[str, Rule] = {name: spec.fn for name, spec in REGISTRY.items()}
#: The rules that take ``robust.outlier_z`` (the cosine filters).
OUTLIER_RULES = frozenset(
    name for name, spec in REGISTRY.items() if "outlier_z" in inspect.signature(spec.fn).parameters
)
FILTERING_RULES = frozenset(name for name, spec in REGISTRY.items() if spec.keep is not None)


def _spec(name: str) -> RuleSpec:
    if name not in REGISTRY:
        raise ConfigError(f"Unknown aggregation rule {name!r}; choose one of {sorted(REGISTRY)}.")
    return REGISTRY[name]


def _get(name: str) -> Rule:
    return _spec(name).fn


def rule_kwargs(
    name: str,
    robust: RobustSettings,
    n: int,
    rng: np.random.Generator,
    center: np.ndarray | None = None,
) -> dict[str, Any]:
    """The parameters rule ``name`` gets from the ``[robust]`` settings for a round of ``n`` updates.

    ``center``: the previous round's aggregate, if the server keeps one; passed on to the rules
    that clip around it (``centered_clipping``) and ignored by the others.
    """
    spec = _spec(name)
    params = spec.params(robust, n, rng)
    if spec.centered and center is not None:
        params["center"] = center
    return params


#: Pre-aggregations (``robust.pre_aggregation``): they map the round's inputs to new ones
#: (``(vectors, weights)``) that the rule then aggregates. "nnm" keeps one input per client,
#: "bucketing" gives ``ceil(n / bucket_size)`` bucket means.
PRE_AGGREGATIONS = ("none", "nnm", "bucketing")


def pre_aggregate(
    name: str,
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None,
    *,
    num_malicious: int,
    bucket_size: int,
    rng: np.random.Generator,
) -> tuple[Sequence[np.ndarray], Sequence[float] | np.ndarray | None]:
    """Run pre-aggregation ``name`` (``none``, ``nnm``, ``bucketing``) before the rule.

    Each attacker still spoils at most one output (a mixed vector, a bucket), so the rule
    that follows keeps ``num_malicious``; the rule's parameters come from the output count.
    """
    if name == "none":
        return updates, weights
    if name == "nnm":
        mixed, w = nnm(updates, weights, num_malicious=num_malicious)
        return list(mixed), w
    if name == "bucketing":
        means, w = bucketing(updates, weights, bucket_size=bucket_size, rng=rng)
        return list(means), w
    raise ConfigError(f"Unknown pre-aggregation {name!r}; choose one of {list(PRE_AGGREGATIONS)}.")


def secure_groups_needed(name: str, num_malicious: int) -> int:
    """How many inputs rule ``name`` needs with f = ``num_malicious``: secure group means, or updates.

    An attacker spoils at most its own group's mean, so the count that outvotes f attackers
    among client updates (``2f + 1``; Krum ``2f + 3``, Bulyan ``4f + 3``) also applies to
    group means. ``mean`` and ``norm_bound`` need 1 (they run on one secure sum).
    """
    return _spec(name).groups_needed(num_malicious)


def rule_parameters(name: str) -> tuple[str, ...]:
    """The keyword parameters rule ``name`` accepts (besides ``updates`` and ``weights``)."""
    params = inspect.signature(_get(name)).parameters
    return tuple(p for p in params if p not in ("updates", "weights"))


def requires_individual_updates(name: str) -> bool:
    """True if rule ``name`` must see each client's update, so it cannot run on a secure-aggregation sum.

    Only ``mean`` and ``norm_bound`` (with client-side clipping) work on sums.
    For the others under secure aggregation, aggregate group sums instead
    (:func:`fedrlhf.aggregation.grouping.make_groups`).
    """
    return not _spec(name).on_sums


def aggregate(
    name: str,
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    **params: Any,
) -> np.ndarray:
    """Run rule ``name`` on ``updates`` with ``params``.

    Raises :class:`~fedrlhf.errors.ConfigError` for an unknown rule or a
    parameter the rule does not take, and
    :class:`~fedrlhf.aggregation.base.AggregationError` when the inputs break
    the rule's precondition.
    """
    rule = _get(name)
    accepted = rule_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"Rule {name!r} takes no parameter(s) {unknown}; it accepts {list(accepted)}.")
    sig = inspect.signature(rule).parameters
    missing = [p for p in accepted if sig[p].default is inspect.Parameter.empty and p not in params]
    if missing:
        raise ConfigError(f"Rule {name!r} needs parameter(s) {missing}.")
    return rule(updates, weights, **params)


def dropped_by(name: str, updates: Sequence[np.ndarray], **params: Any) -> list[int] | None:
    """Indices of the updates rule ``name`` (with ``params``, as given to :func:`aggregate`) leaves out.

    Only for the filtering rules (``dnc``, ``cosine_filter``, ``cosine_two_sided``); None for the others,
    which weigh, trim or select coordinates rather than drop whole updates. Called after
    :func:`aggregate` with the same updates and ``params`` (the server's round), it reuses the
    rule's own filtering (:func:`fedrlhf.aggregation.base.remembered`): a digest of the
    updates, not a second ``O(n^2 d)`` pass.
    """
    keeper = _spec(name).keep
    if keeper is None:
        return None
    takes = inspect.signature(keeper).parameters
    kept = set(keeper(updates, **{k: v for k, v in params.items() if k in takes}).tolist())
    return [i for i in range(len(updates)) if i not in kept]
