"""Robust aggregation of client updates: pure numpy, no Flower, no torch.

- rules (:mod:`.mean`, :mod:`.median`, :mod:`.krum`, :mod:`.geomed`,
  :mod:`.clipping`, :mod:`.dnc`, :mod:`.cosine`), picked by name through :mod:`.rules`;
- :mod:`.blocks`: their float64 arithmetic over a float32 stack, a block at a time (Gram
  matrices and distances, norms, weighted sums, medians);
- :mod:`.validate`: checks on incoming updates, flat-vector layout;
- pre-aggregations composable with any rule (:mod:`.nnm`, :mod:`.bucketing`);
- :mod:`.reputation`: per-client scores over rounds;
- :mod:`.grouping`: random groups for secure + robust aggregation.
"""

from fedrlhf.aggregation.base import AggregationError
from fedrlhf.aggregation.bucketing import bucketing, num_buckets
from fedrlhf.aggregation.clipping import centered_clipping, clip_named, clip_to_norm, norm_bound
from fedrlhf.aggregation.cosine import (
    EMPTY_SCORE,
    agreement_scores,
    coalition_scores,
    cosine_filter,
    cosine_keep,
    cosine_two_sided,
    cosine_two_sided_keep,
    empty_updates,
)
from fedrlhf.aggregation.dnc import dnc, dnc_keep
from fedrlhf.aggregation.geomed import geometric_median
from fedrlhf.aggregation.grouping import GroupingError, make_groups
from fedrlhf.aggregation.krum import bulyan, krum, krum_scores, krum_select, multi_krum
from fedrlhf.aggregation.mean import RunningMean, mean
from fedrlhf.aggregation.median import coordinate_median, trimmed_mean
from fedrlhf.aggregation.nnm import nnm
from fedrlhf.aggregation.reputation import Reputation
from fedrlhf.aggregation.rules import (
    FILTERING_RULES,
    PRE_AGGREGATIONS,
    REGISTRY,
    RULES,
    RuleSpec,
    aggregate,
    dropped_by,
    pre_aggregate,
    requires_individual_updates,
    rule_kwargs,
    rule_parameters,
    secure_groups_needed,
)
from fedrlhf.aggregation.validate import (
    InvalidUpdate,
    ValidationStats,
    flatten,
    layout_of,
    layout_size,
    norm_ratio_keep,
    unflatten,
    validate_update,
)

__all__ = [
    "EMPTY_SCORE",
    "FILTERING_RULES",
    "PRE_AGGREGATIONS",
    "REGISTRY",
    "RULES",
    "AggregationError",
    "GroupingError",
    "InvalidUpdate",
    "Reputation",
    "RuleSpec",
    "RunningMean",
    "ValidationStats",
    "aggregate",
    "agreement_scores",
    "bucketing",
    "bulyan",
    "centered_clipping",
    "clip_named",
    "clip_to_norm",
    "coalition_scores",
    "coordinate_median",
    "cosine_filter",
    "cosine_keep",
    "cosine_two_sided",
    "cosine_two_sided_keep",
    "dnc",
    "dnc_keep",
    "dropped_by",
    "empty_updates",
    "flatten",
    "geometric_median",
    "krum",
    "krum_scores",
    "krum_select",
    "layout_of",
    "layout_size",
    "make_groups",
    "mean",
    "multi_krum",
    "nnm",
    "norm_bound",
    "norm_ratio_keep",
    "num_buckets",
    "pre_aggregate",
    "requires_individual_updates",
    "rule_kwargs",
    "rule_parameters",
    "secure_groups_needed",
    "trimmed_mean",
    "unflatten",
    "validate_update",
]
