"""Registry of aggregation rules: pick one by name from the run config.

Every rule is a pure function ``rule(updates, weights=None, **params) -> np.ndarray``
over flat update vectors (see :mod:`fedrlhf.aggregation.base`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedrlhf.aggregation.clipping import centered_clipping, norm_bound
from fedrlhf.aggregation.cosine import cosine_filter, cosine_keep, cosine_two_sided, cosine_two_sided_keep
from fedrlhf.aggregation.dnc import dnc, dnc_keep
from fedrlhf.aggregation.geomed import geometric_median
from fedrlhf.aggregation.krum import bulyan, krum, multi_krum
from fedrlhf.aggregation.mean import mean
from fedrlhf.aggregation.median import coordinate_median, trimmed_mean
from fedrlhf.errors import ConfigError

__all__ = [
    "FILTERING_RULES",
    "RULES",
    "aggregate",
    "dropped_by",
    "requires_individual_updates",
    "rule_parameters",
]

Rule = Callable[..., np.ndarray]

RULES: dict[str, Rule] = {
    "mean": mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geometric_median": geometric_median,
    "centered_clipping": centered_clipping,
    "norm_bound": norm_bound,
    "dnc": dnc,
    "cosine_filter": cosine_filter,
    "cosine_two_sided": cosine_two_sided,
}

# Rules that are linear in the (clipped) updates and so can run on a secure sum.
# norm_bound qualifies only if each client clips its own update before masking
# (fedrlhf.aggregation.clipping.clip_to_norm).
_WORKS_ON_SUMS = frozenset({"mean", "norm_bound"})

# Rules that leave whole updates out, and the function that says which they keep.
_KEEPERS: dict[str, Callable[..., np.ndarray]] = {
    "dnc": dnc_keep,
    "cosine_filter": cosine_keep,
    "cosine_two_sided": cosine_two_sided_keep,
}
FILTERING_RULES = frozenset(_KEEPERS)


def _get(name: str) -> Rule:
    if name not in RULES:
        raise ConfigError(f"Unknown aggregation rule {name!r}; choose one of {sorted(RULES)}.")
    return RULES[name]


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
    _get(name)
    return name not in _WORKS_ON_SUMS


def aggregate(
    name: str,
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
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
    which weigh, trim or select coordinates rather than drop whole updates.
    """
    keeper = _KEEPERS.get(name)
    if keeper is None:
        return None
    takes = inspect.signature(keeper).parameters
    kept = set(keeper(updates, **{k: v for k, v in params.items() if k in takes}).tolist())
    return [i for i in range(len(updates)) if i not in kept]
