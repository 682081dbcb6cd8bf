"""Unit tests of the rules, the registry and the numpy-only import rule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedrlhf.aggregation import (
    FILTERING_RULES,
    REGISTRY,
    RULES,
    AggregationError,
    RunningMean,
    aggregate,
    bulyan,
    centered_clipping,
    clip_to_norm,
    coordinate_median,
    geometric_median,
    krum,
    krum_scores,
    mean,
    multi_krum,
    norm_bound,
    requires_individual_updates,
    rule_kwargs,
    rule_parameters,
    secure_groups_needed,
    trimmed_mean,
)
from fedrlhf.aggregation.base import filtered_mean
from fedrlhf.errors import ConfigError, FedRLHFError


def _updates(n: int = 7, d: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.normal(size=(n, d)))


def test_core_imports_numpy_only() -> None:
    code = (
        "import sys, fedrlhf.aggregation, fedrlhf.simulation.attacks; "
        "bad = [m for m in ('flwr', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_errors_are_typed_value_errors() -> None:
    assert issubclass(AggregationError, ValueError) and issubclass(AggregationError, FedRLHFError)


def test_mean_weighted_and_dtype() -> None:
    x = [np.array([0.0, 2.0], dtype=np.float32), np.array([3.0, 5.0], dtype=np.float32)]
    out = mean(x, [2.0, 1.0])
    np.testing.assert_allclose(out, [1.0, 3.0])
    assert out.dtype == np.float32
    assert mean([np.array([1.0, 2.0])]).dtype == np.float64


def test_running_mean_equals_mean() -> None:
    x, w = _updates(), [1.0, 2.0, 0.0, 3.5, 1.0, 1.0, 4.0]
    acc = RunningMean()
    for u, wi in zip(x, w, strict=True):
        acc.add(u, wi)
    np.testing.assert_allclose(acc.result(), mean(x, w), rtol=1e-12)
    assert acc.count == 7 and acc.total_weight == pytest.approx(sum(w))


def test_running_mean_rejects_bad_input() -> None:
    acc = RunningMean()
    with pytest.raises(AggregationError):
        acc.result()
    acc.add(np.ones(3))
    with pytest.raises(AggregationError, match="length"):
        acc.add(np.ones(4))
    with pytest.raises(AggregationError, match="weight"):
        acc.add(np.ones(3), -1.0)
    with pytest.raises(AggregationError, match="NaN"):
        acc.add(np.array([1.0, np.nan, 0.0]))


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ([], "no updates"),
        ([np.ones((2, 2))], "flatten"),
        ([np.ones(2), np.ones(3)], "different lengths"),
        ([np.array([1.0, np.inf])], "NaN or infinity"),
        ([np.array(["a", "b"])], "dtype"),
    ],
)
def test_input_checks(updates: list[np.ndarray], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        coordinate_median(updates)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [1.0, np.nan]])
def test_weight_checks(weights: list[float]) -> None:
    with pytest.raises(AggregationError, match="weight"):
        mean([np.ones(2), np.zeros(2)], weights)


def test_median_and_trimmed_mean_values() -> None:
    x = [np.array([v]) for v in (1.0, 2.0, 3.0, 100.0, -50.0)]
    assert coordinate_median(x)[0] == 2.0
    assert trimmed_mean(x, num_trim=1)[0] == pytest.approx(2.0)
    assert trimmed_mean(x, beta=0.2)[0] == pytest.approx(2.0)  # int(0.2 * 5) = 1
    assert trimmed_mean(x, beta=0.19)[0] == pytest.approx(11.2)  # int(0.95) = 0: plain mean


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({}, "exactly one"),
        ({"beta": 0.1, "num_trim": 1}, "exactly one"),
        ({"beta": 0.5}, r"\[0, 0.5\)"),
        ({"num_trim": 3}, "num_trim < n/2"),
        ({"num_trim": -1}, "non-negative"),
    ],
)
def test_trimmed_mean_parameter_checks(params: dict[str, float], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        trimmed_mean(_updates(n=5), **params)


def test_krum_preconditions_say_what_to_change() -> None:
    with pytest.raises(AggregationError, match=r"sample at least 7 clients or lower num_malicious to 1"):
        krum(_updates(n=6), num_malicious=2)
    with pytest.raises(AggregationError, match=r"= \[1, 5\], got 6"):
        multi_krum(_updates(n=7), num_malicious=2, num_selected=6)
    with pytest.raises(AggregationError, match=r"at least 4\*num_malicious \+ 3 = 11"):
        bulyan(_updates(n=10), num_malicious=2)
    with pytest.raises(AggregationError, match="selection"):
        bulyan(_updates(n=7), num_malicious=1, selection="greedy")  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="non-negative integer"):
        krum(_updates(), num_malicious=1.5)  # type: ignore[arg-type]


def test_krum_scores_hand_computed() -> None:
    x = [np.array([v]) for v in (0.0, 1.0, 3.0, 10.0)]  # n=4, f=0: 2 nearest others
    np.testing.assert_allclose(krum_scores(x, num_malicious=0), [1 + 9, 1 + 4, 4 + 9, 49 + 81])
    assert krum(x, num_malicious=0)[0] == 1.0


def test_multi_krum_with_all_selected_is_mean() -> None:
    x, w = _updates(n=7), [1.0, 2, 3, 4, 5, 6, 7]
    np.testing.assert_allclose(multi_krum(x, w, num_malicious=0, num_selected=7), mean(x, w))


def test_bulyan_without_malicious_is_mean() -> None:
    x = _updates(n=5)
    np.testing.assert_allclose(bulyan(x, num_malicious=0), mean(x), rtol=1e-12)


def test_geometric_median_simple_cases() -> None:
    x = [np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])]
    np.testing.assert_allclose(geometric_median(x), [0.5, 0.5], atol=1e-6)
    collinear = [np.array([v]) for v in (0.0, 1.0, 10.0)]
    np.testing.assert_allclose(geometric_median(collinear), [1.0], atol=1e-4)
    with pytest.raises(AggregationError, match="max_iter"):
        geometric_median(x, max_iter=0)


def test_clipping_rules() -> None:
    big = np.array([3.0, 4.0])
    np.testing.assert_allclose(clip_to_norm(big, max_norm=1.0), [0.6, 0.8])
    np.testing.assert_allclose(clip_to_norm(np.array([0.3, 0.4]), max_norm=1.0), [0.3, 0.4])
    np.testing.assert_allclose(
        norm_bound([big, -big * 0.1], max_norm=1.0), [(0.6 - 0.3) / 2, (0.8 - 0.4) / 2]
    )
    np.testing.assert_allclose(norm_bound([big], max_norm=1e20), big)  # huge bound: plain mean
    x = _updates()
    np.testing.assert_allclose(centered_clipping(x, tau=1e20), mean(x), rtol=1e-12)
    center = np.full(5, 0.1)  # inside the median norm: used as is
    assert np.linalg.norm(centered_clipping(x, tau=0.5, center=center) - center) <= 0.5 + 1e-12
    with pytest.raises(AggregationError, match="positive"):
        norm_bound(x, max_norm=0.0)
    with pytest.raises(AggregationError, match="center has length"):
        centered_clipping(x, tau=1.0, center=np.zeros(3))


def test_registry_and_aggregate() -> None:
    assert set(RULES) == {
        "mean",
        "coordinate_median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "bulyan",
        "geometric_median",
        "centered_clipping",
        "norm_bound",
        "dnc",
        "cosine_filter",
        "cosine_two_sided",
    }
    x = _updates(n=7)
    np.testing.assert_allclose(aggregate("krum", x, num_malicious=2), krum(x, num_malicious=2))
    assert rule_parameters("trimmed_mean") == ("beta", "num_trim", "num_malicious")
    with pytest.raises(ConfigError, match="choose one of"):
        aggregate("fedavg", x)
    with pytest.raises(ConfigError, match="takes no parameter"):
        aggregate("mean", x, beta=0.1)
    with pytest.raises(ConfigError, match="needs parameter"):
        aggregate("krum", x)


def test_every_registry_entry_runs_with_the_parameters_it_reads_from_the_config() -> None:
    """One entry per rule: what it reads from [robust] is exactly what the rule accepts and needs,
    and a filtering rule's keeper agrees with the rule."""

    class Robust:
        num_malicious, trim_fraction, clip_norm, outlier_z = 2, 0.2, 1.0, 0.0

    x = _updates(n=11, d=6, seed=4)
    for name in REGISTRY:
        kwargs = rule_kwargs(name, Robust(), len(x), np.random.default_rng(0))
        assert set(kwargs) <= set(rule_parameters(name)), name
        out = aggregate(name, x, **kwargs)  # raises ConfigError on a missing or unknown parameter
        assert out.shape == (6,) and np.isfinite(out).all(), name
    assert FILTERING_RULES == {n for n, spec in REGISTRY.items() if spec.keep is not None}
    kw = rule_kwargs("cosine_filter", Robust(), len(x), np.random.default_rng(0))
    kept = REGISTRY["cosine_filter"].keep(x, **kw)
    assert len(kept) == len(x) - 2
    want = filtered_mean(x, None, kept, clip_median=True, rule="cosine_filter")
    np.testing.assert_allclose(aggregate("cosine_filter", x, **kw), want)


def test_secure_group_needs_follow_each_rules_precondition() -> None:
    f = 3
    assert {n: secure_groups_needed(n, f) for n in REGISTRY} == {
        "mean": 1,
        "coordinate_median": 2 * f + 1,
        "trimmed_mean": 2 * f + 1,
        "krum": 2 * f + 3,
        "multi_krum": 2 * f + 3,
        "bulyan": 4 * f + 3,
        "geometric_median": 2 * f + 1,
        "centered_clipping": 2 * f + 1,
        "norm_bound": 1,
        "dnc": 2 * f + 1,
        "cosine_filter": 2 * f + 1,
        "cosine_two_sided": 2 * f + 1,
    }

    class Robust:
        num_malicious, trim_fraction, clip_norm, outlier_z = 2, 0.1, 1.0, 0.0

    rng = np.random.default_rng(0)
    for name in REGISTRY:  # the rule as the server calls it runs on exactly that many, not one fewer
        need = secure_groups_needed(name, Robust.num_malicious)
        aggregate(name, _updates(n=need), **rule_kwargs(name, Robust(), need, rng))
        if need > 1:
            with pytest.raises(AggregationError, match="num_malicious"):
                aggregate(name, _updates(n=need - 1), **rule_kwargs(name, Robust(), need - 1, rng))


def test_requires_individual_updates() -> None:
    assert not requires_individual_updates("mean")
    assert not requires_individual_updates("norm_bound")
    for name in (
        "coordinate_median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "bulyan",
        "geometric_median",
        "centered_clipping",
    ):
        assert requires_individual_updates(name)
    with pytest.raises(ConfigError):
        requires_individual_updates("nope")


def test_inputs_are_not_modified() -> None:
    x = _updates()
    before = [u.copy() for u in x]
    for name, params in [
        ("norm_bound", {"max_norm": 0.1}),
        ("centered_clipping", {"tau": 0.1}),
        ("bulyan", {"num_malicious": 1}),
        ("trimmed_mean", {"num_trim": 2}),
    ]:
        aggregate(name, x, **params)
    for a, b in zip(x, before, strict=True):
        np.testing.assert_array_equal(a, b)
