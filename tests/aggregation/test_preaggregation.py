"""Pre-aggregations (NNM, bucketing): ByzFL's definitions, properties, the server's wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrlhf.aggregation import (
    AggregationError,
    bucketing,
    coordinate_median,
    geometric_median,
    nnm,
    num_buckets,
    pre_aggregate,
    trimmed_mean,
)
from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError

# six honest-looking vectors; the expected outputs below were computed with ByzFL
# (github.com/LPD-EPFL/byzfl @ 69bd1ac, byzfl/aggregators/preaggregators.py) on these inputs
X = np.array(
    [
        [1.0, 2.0, -1.0, 0.5],
        [0.5, 1.5, 0.0, 1.0],
        [2.0, 0.0, -0.5, 0.0],
        [1.5, 1.0, 1.0, -1.0],
        [0.0, 2.5, -2.0, 0.5],
        [1.0, 0.5, 0.5, 2.0],
    ]
)
BYZFL_NNM_F2 = np.array(
    [
        [0.875, 1.5, -0.875, 0.5],
        [0.625, 1.625, -0.625, 1.0],
        [1.25, 1.125, -0.125, 0.125],
        [1.25, 1.125, -0.125, 0.125],
        [0.875, 1.5, -0.875, 0.5],
        [1.125, 1.0, -0.25, 0.875],
    ]
)
# np.random.seed(3); Bucketing(s=4)(X)
BYZFL_BUCKETING_S4_SEED3 = np.array([[0.75, 1.375, -0.125, 0.625], [1.5, 1.0, -0.75, 0.25]])


def test_nnm_matches_byzfl() -> None:
    mixed, w = nnm(list(X), num_malicious=2)
    np.testing.assert_allclose(mixed, BYZFL_NNM_F2, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(w, np.ones(6))


def test_bucketing_matches_byzfl_with_the_same_permutation() -> None:
    # RandomState(3).permutation is np.random.seed(3); np.random.permutation (ByzFL's draw)
    out, w = bucketing(list(X), bucket_size=4, rng=np.random.RandomState(3))  # type: ignore[arg-type]
    np.testing.assert_allclose(out, BYZFL_BUCKETING_S4_SEED3, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(w, [4.0, 2.0])


def test_bucketing_weights_and_sizes() -> None:
    x = [np.full(3, float(i)) for i in range(7)]
    out, w = bucketing(x, [1, 1, 1, 1, 1, 1, 0], bucket_size=3, rng=np.random.default_rng(0))
    assert out.shape == (num_buckets(7, 3), 3) == (3, 3) and w.sum() == 6
    assert sorted(out[:, 0].tolist()) != sorted([1.0, 4.0, 6.0])  # shuffled, not in order
    single, _ = bucketing(x, bucket_size=1, rng=np.random.default_rng(0))
    assert sorted(single[:, 0].tolist()) == list(range(7))  # bucket_size 1 only shuffles
    with pytest.raises(AggregationError, match="bucket_size"):
        bucketing(x, bucket_size=0, rng=np.random.default_rng(0))


def test_nnm_refuses_f_at_least_n() -> None:
    with pytest.raises(AggregationError, match="num_malicious < n"):
        nnm(list(X), num_malicious=6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 12), f=st.integers(0, 5))
def test_nnm_is_permutation_equivariant(seed: int, n: int, f: int) -> None:
    f = min(f, n - 1)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    perm = rng.permutation(n)
    np.testing.assert_allclose(nnm(x[perm], num_malicious=f)[0], nnm(x, num_malicious=f)[0][perm], atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    f=st.integers(1, 3),
    scale=st.sampled_from([1e-3, 1.0, 1e3, 1e8]),
    rule=st.sampled_from(["median", "trimmed", "geomed"]),
)
def test_nnm_then_rule_stays_near_the_honest_updates(seed: int, f: int, scale: float, rule: str) -> None:
    """Whatever f attackers send, each honest mixed vector lies within the honest diameter of
    its own update (its n - f nearest include only points at most that far), so a rule that
    tolerates f keeps the aggregate within the honest range widened by the diameter."""
    rng = np.random.default_rng(seed)
    n = 2 * f + 1 + int(rng.integers(0, 4))
    honest = rng.normal(size=(n - f, 4))
    bad = rng.normal(size=(f, 4)) * scale + rng.normal(size=4) * scale
    x = np.concatenate([honest, bad])
    mixed, _ = nnm(x, num_malicious=f)
    diam = max(np.linalg.norm(a - b) for a in honest for b in honest)
    assert np.all(np.linalg.norm(mixed[: n - f] - honest, axis=1) <= diam * (1 + 1e-9) + 1e-12)
    agg = {
        "median": lambda m: coordinate_median(list(m), num_malicious=f),
        "trimmed": lambda m: trimmed_mean(list(m), num_trim=f),
        "geomed": lambda m: geometric_median(list(m), num_malicious=f),
    }[rule](mixed)
    slack = diam * (1 + 1e-6) + 1e-9
    if rule == "geomed":  # a geometric median is within 2x the honest spread, not per coordinate
        slack = 2 * np.linalg.norm(honest.max(0) - honest.min(0)) + 2 * diam + 1e-9
    assert np.all(agg >= honest.min(axis=0) - slack) and np.all(agg <= honest.max(axis=0) + slack)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 15), s=st.integers(1, 6))
def test_bucketing_keeps_the_weighted_mean(seed: int, n: int, s: int) -> None:
    """Buckets partition the inputs: their weight-weighted mean is the inputs' mean."""
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(n, 3)), rng.uniform(0.5, 2.0, size=n)
    out, bw = bucketing(x, w, bucket_size=s, rng=rng)
    assert len(out) == math.ceil(n / s) and math.isclose(bw.sum(), w.sum())
    np.testing.assert_allclose(bw @ out / bw.sum(), w @ x / w.sum(), atol=1e-12)


def test_pre_aggregate_dispatch() -> None:
    rng = np.random.default_rng(0)
    updates = list(X)
    assert pre_aggregate("none", updates, None, num_malicious=2, bucket_size=2, rng=rng) == (updates, None)
    np.testing.assert_allclose(
        pre_aggregate("nnm", list(X), None, num_malicious=2, bucket_size=2, rng=rng)[0], BYZFL_NNM_F2
    )
    with pytest.raises(ConfigError, match="pre-aggregation"):
        pre_aggregate("krum", list(X), None, num_malicious=2, bucket_size=2, rng=rng)


@pytest.mark.parametrize(
    ("robust", "match"),
    [
        ({"pre_aggregation": "buckets"}, "robust.pre_aggregation"),
        ({"pre_aggregation": "bucketing", "bucket_size": 0}, "robust.bucket_size"),
        ({"bucket_size": 1.5}, "robust.bucket_size"),
    ],
)
def test_config_refuses_bad_pre_aggregation(robust: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_config_from_dict({"robust": robust})


def _server(
    updates: list[np.ndarray], robust: dict[str, object], seed: int = 0, sampled: int = 0
) -> np.ndarray:
    """The server's aggregation step; ``sampled`` clients per round (default: as many as replied)."""
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    cfg = run_config_from_dict(
        {"robust": robust, "federation": {"clients_per_round": sampled or len(updates)}}
    )
    state = ServerState(round=0, global_state={}, rng={})
    return aggregate_updates(updates, cfg, state, [], np.random.default_rng(seed))


def test_server_runs_the_pre_aggregation_before_the_rule() -> None:
    rng = np.random.default_rng(1)
    x = [v.astype(np.float32) for v in rng.normal(size=(9, 6))]
    x[-2:] = [np.full(6, 50.0, dtype=np.float32)] * 2  # two attackers
    base = {"rule": "coordinate_median", "num_malicious": 2}
    mixed, _ = nnm(x, num_malicious=2)
    want = coordinate_median(list(mixed), num_malicious=2)
    np.testing.assert_allclose(_server(x, {**base, "pre_aggregation": "nnm"}), want, rtol=1e-6)
    buckets, _ = bucketing(x, bucket_size=2, rng=np.random.default_rng(0))  # the server's rng, first draw
    got = _server(x, {**base, "num_malicious": 1, "pre_aggregation": "bucketing", "bucket_size": 2})
    np.testing.assert_allclose(got, coordinate_median(list(buckets), num_malicious=1), rtol=1e-6)
    assert not np.allclose(got, _server(x, {**base, "num_malicious": 1}))
    spoilt = {**base, "num_malicious": 3, "pre_aggregation": "bucketing", "bucket_size": 2}
    with pytest.raises(ConfigError, match="makes 5 buckets"):  # 9 sampled: 5 buckets, 3 may be spoilt
        _server(x, spoilt)
    with pytest.raises(AggregationError, match="2\\*num_malicious"):  # 15 sampled, 6 dropped out
        _server(x, spoilt, sampled=15)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (
            {"robust": {"pre_aggregation": "bucketing", "bucket_size": 2, "rule": "coordinate_median",
                        "num_malicious": 5}, "federation": {"clients_per_round": 15}},
            "makes 8 buckets of 2 from 15 clients",
        ),
        (
            {"robust": {"pre_aggregation": "nnm", "rule": "mean"},
             "user_dp": {"enabled": True, "noise_multiplier": 1.0}},
            "ignores it",
        ),
        (
            {"robust": {"pre_aggregation": "bucketing", "rule": "mean"}, "secagg": {"enabled": True},
             "federation": {"clients_per_round": 8}},
            "already means of random groups",
        ),
    ],
)  # fmt: skip
def test_pre_aggregations_the_run_cannot_use_are_config_errors(settings: dict, match: str) -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        run_config_from_dict(settings)
    fine = {"robust": {"pre_aggregation": "bucketing", "bucket_size": 2, "rule": "coordinate_median",
                       "num_malicious": 3}, "federation": {"clients_per_round": 15}}  # fmt: skip
    run_config_from_dict(fine)  # 8 buckets outvote f = 3
