"""Tests of update validation and the flat layout."""

from __future__ import annotations

import numpy as np
import pytest

from fedrlhf.aggregation import (
    InvalidUpdate,
    ValidationStats,
    flatten,
    layout_of,
    layout_size,
    norm_ratio_keep,
    unflatten,
    validate_update,
)
from fedrlhf.aggregation.validate import REASONS
from fedrlhf.errors import ConfigError

LAYOUT = {"lora_A": (2, 3), "lora_B": (3, 2), "head.bias": (1,)}


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in LAYOUT.items()}


def test_flatten_unflatten_round_trip() -> None:
    upd = _update()
    vec = flatten(upd, LAYOUT)
    assert vec.dtype == np.float32 and vec.shape == (layout_size(LAYOUT),) == (13,)
    np.testing.assert_array_equal(vec[:6], upd["lora_A"].ravel())  # layout order
    back = unflatten(vec, LAYOUT)
    assert list(back) == list(LAYOUT)
    for k in LAYOUT:
        np.testing.assert_array_equal(back[k], upd[k])
        assert back[k].dtype == np.float32
    assert layout_of(upd) == LAYOUT


def test_flatten_ignores_dict_order_and_casts_float64() -> None:
    upd = _update()
    shuffled = {k: upd[k].astype(np.float64) for k in reversed(list(upd))}
    np.testing.assert_array_equal(flatten(shuffled, LAYOUT), flatten(upd, LAYOUT))


def test_unflatten_rejects_wrong_length() -> None:
    with pytest.raises(InvalidUpdate) as err:
        unflatten(np.zeros(12), LAYOUT)
    assert err.value.reason == "shape"


def _bad(kind: str) -> object:
    upd: dict[str, object] = dict(_update())
    if kind == "missing":
        del upd["lora_B"]
    elif kind == "extra":
        upd["base.weight"] = np.zeros(2, dtype=np.float32)
    elif kind == "shape":
        upd["lora_A"] = np.zeros((3, 2), dtype=np.float32)
    elif kind == "dtype":
        upd["lora_A"] = np.zeros((2, 3), dtype=np.int64)
    elif kind == "not_an_array":
        upd["lora_A"] = [[0.0] * 3] * 2
    elif kind == "non_finite":
        upd["lora_B"] = np.full((3, 2), np.nan, dtype=np.float32)
    elif kind == "norm":
        upd["head.bias"] = np.array([1e6], dtype=np.float32)
    elif kind == "not_a_mapping":
        return [np.zeros(2)]
    return upd


@pytest.mark.parametrize("reason", REASONS)
def test_validate_rejects_with_reason(reason: str) -> None:
    with pytest.raises(InvalidUpdate) as err:
        validate_update(_bad(reason), LAYOUT, max_norm=100.0)  # type: ignore[arg-type]
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)


def test_validate_catches_float32_overflow_and_infinity() -> None:
    upd = _update()
    upd["lora_A"] = upd["lora_A"].astype(np.float64)
    upd["lora_A"][0, 0] = 1e300  # finite in float64, inf in float32
    with pytest.raises(InvalidUpdate) as err:
        validate_update(upd, LAYOUT, max_norm=None)
    assert (err.value.reason, err.value.name) == ("non_finite", "lora_A")


def test_validate_accepts_and_norm_is_optional() -> None:
    upd = _update()
    upd["head.bias"] = np.array([1e6], dtype=np.float32)
    vec = validate_update(upd, LAYOUT, max_norm=None)
    assert vec.shape == (13,)
    with pytest.raises(ConfigError):
        validate_update(upd, LAYOUT, max_norm=-1.0)


def test_bad_layout_is_config_error() -> None:
    with pytest.raises(ConfigError):
        flatten(_update(), {"a": [2, 3]})  # type: ignore[dict-item]


def test_validation_stats_counts() -> None:
    stats = ValidationStats()
    assert stats.check(_update(), LAYOUT, max_norm=100.0) is not None
    for reason in ("missing", "norm", "norm"):
        assert stats.check(_bad(reason), LAYOUT, max_norm=100.0) is None  # type: ignore[arg-type]
    assert stats.total == 4
    assert stats.to_dict() == {"accepted": 1, "rejected": 3, "rejected_missing": 1, "rejected_norm": 2}


def test_norm_ratio_keeps_updates_up_to_the_ratio_times_the_median_norm() -> None:
    rng = np.random.default_rng(3)
    honest = [
        u / np.linalg.norm(u) * s for u, s in zip(rng.normal(size=(9, 20)), np.linspace(5, 7, 9), strict=True)
    ]
    boosted = [-4.0 * honest[0], 50.0 * rng.normal(size=20)]
    updates = honest + boosted
    assert norm_ratio_keep(updates, 2.0).tolist() == list(range(9))
    order = rng.permutation(len(updates))  # which updates stay does not depend on their order
    kept = norm_ratio_keep([updates[i] for i in order], 2.0)
    assert sorted(order[kept].tolist()) == list(range(9))
    # the bound follows the scale: the same cohort 1000x smaller keeps the same updates
    assert norm_ratio_keep([u / 1000 for u in updates], 2.0).tolist() == list(range(9))
    # more than half always stay, even when most updates are boosted
    assert len(norm_ratio_keep(updates[:3] + [10.0 * u for u in updates[3:]], 1.5)) > len(updates) // 2
    with pytest.raises(ConfigError, match="max_ratio"):
        norm_ratio_keep(updates, 0.5)


@pytest.mark.parametrize("value", [0.5, 1.0, -2.0])
def test_max_norm_ratio_config_says_what_it_must_be(value: float) -> None:
    from fedrlhf.config import run_config_from_dict

    with pytest.raises(ConfigError, match="robust.max_norm_ratio"):
        run_config_from_dict({"robust": {"max_norm_ratio": value}})


def test_aggregate_problem_refuses_non_finite_and_oversized_aggregates() -> None:
    from fedrlhf.aggregation.validate import aggregate_problem

    updates = [np.array([3.0, 4.0], dtype=np.float32), np.array([0.0, 1.0], dtype=np.float32)]
    assert aggregate_problem(np.array([1.5, 2.5], dtype=np.float32), updates) is None
    assert aggregate_problem(np.array([np.inf, 0.0]), updates) == "non-finite aggregate"
    assert aggregate_problem(np.array([np.nan, 0.0]), updates, bounded=False) == "non-finite aggregate"
    too_big = aggregate_problem(np.array([3.0, 4.2]), updates)  # sqrt(25 + 1) = 5.099 < 5.16
    assert too_big is not None and "exceeds" in too_big
    assert aggregate_problem(np.array([3.0, 4.2]), updates, bounded=False) is None  # e.g. DP noise


@pytest.mark.parametrize("seed", range(4))
def test_every_rule_stays_within_the_bound_aggregate_problem_checks(seed: int) -> None:
    """The server refuses an aggregate above sqrt(sum ||x_i||^2): no rule may ever produce one,
    whatever its inputs (here with a few far-out ones)."""
    from fedrlhf.aggregation import aggregate, rule_kwargs
    from fedrlhf.aggregation.rules import REGISTRY
    from fedrlhf.aggregation.validate import aggregate_problem
    from fedrlhf.config import RobustConfig

    rng = np.random.default_rng(seed)
    updates = list(rng.normal(size=(11, 20)).astype(np.float32))
    updates[0] *= 1e6
    updates[1] = -50.0 * updates[2]
    for rule in REGISTRY:
        robust = RobustConfig(rule=rule, num_malicious=2, clip_norm=3.0)
        out = aggregate(rule, updates, None, **rule_kwargs(rule, robust, len(updates), rng))
        assert aggregate_problem(out, updates) is None, rule
