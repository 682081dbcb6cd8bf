"""Adaptive attacks: ByzFL's definitions on the same inputs, and they tune against the rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrlhf.aggregation import coordinate_median, cosine_filter, trimmed_mean
from fedrlhf.config import run_config_from_dict
from fedrlhf.simulation.adaptive import (
    alie_opt,
    damage,
    ipm_opt,
    line_search,
    mimic,
    min_max_tailored,
    min_sum,
    min_sum_tailored,
    zeros,
)
from fedrlhf.simulation.attacks import UPDATE_ATTACKS, AttackConfig, AttackError, malicious_updates, min_max

# ByzFL (github.com/LPD-EPFL/byzfl @ 69bd1ac, byzfl/attacks/attacks.py) on these inputs, f = 2,
# pre_agg_list = [], agg = Average() / Median() / TrMean(f=2):
# Optimal_ALittleIsEnough(agg=..., pre_agg_list=[], f=2)(X) and Optimal_InnerProductManipulation
X = [
    np.array(r)
    for r in [
        [1.0, 2.0, -1.0, 0.5],
        [0.5, 1.5, 0.0, 1.0],
        [2.0, 0.0, -0.5, 0.0],
        [1.5, 1.0, 1.0, -1.0],
        [0.0, 2.5, -2.0, 0.5],
        [1.0, 0.5, 0.5, 2.0],
    ]
]
BYZFL = {
    "mean": (
        [3707269.9298795145, 4904257.065848873, 5662946.497576937, 5242870.5],
        [-5242870.0, -6553587.5, 1747623.3333333333, -2621435.0],
    ),
    "median": (
        [8.071067811865476, 10.604143466934854, 10.467901164013101, 10.5],
        [-10.0, -12.5, 3.333333333333333, -5.0],
    ),
    "trimmed": (
        [8.071067811865476, 10.604143466934854, 10.467901164013101, 10.5],
        [-10.0, -12.5, 3.333333333333333, -5.0],
    ),
}
RULES = {
    "mean": None,
    "median": lambda u: coordinate_median(u),
    "trimmed": lambda u: trimmed_mean(u, num_trim=2),
}


@pytest.mark.parametrize("rule", sorted(BYZFL))
def test_optimised_alie_and_ipm_match_byzfl(rule: str) -> None:
    want_alie, want_ipm = BYZFL[rule]
    np.testing.assert_allclose(alie_opt(X, num_malicious=2, aggregator=RULES[rule])[0], want_alie, rtol=1e-12)
    np.testing.assert_allclose(ipm_opt(X, num_malicious=2, aggregator=RULES[rule])[0], want_ipm, rtol=1e-12)


@pytest.mark.parametrize(
    ("objective", "byzfl"),
    [  # ByzFL's expansion + contraction phases with _evaluate replaced by the objective
        (lambda t: t * math.exp(-t / 7.0), 10.0),
        (lambda t: -abs(t - 3.3), 6.4),
        (lambda t: math.sin(t / 9.0), 18.192),
    ],
)
def test_line_search_is_byzfls(objective, byzfl: float) -> None:
    assert line_search(objective) == pytest.approx(byzfl, rel=1e-12)


def test_mimic_copies_byzfls_target_or_the_most_spread_update() -> None:
    np.testing.assert_array_equal(mimic(X, num_malicious=2, target=3)[1], X[3])  # ByzFL Mimic(epsilon=3)
    rng = np.random.default_rng(0)
    h = list(rng.normal(size=(8, 5)) * 0.1)
    h[5] = h[5] + np.array([4.0, 0, 0, 0, 0])  # one client far along one direction
    assert all(np.array_equal(v, h[5]) for v in mimic(h, num_malicious=3))
    with pytest.raises(AttackError, match="target"):
        mimic(X, num_malicious=1, target=6)


def test_zeros() -> None:
    out = zeros([v.astype(np.float32) for v in X], num_malicious=3)
    assert len(out) == 3 and all(not v.any() and v.dtype == np.float32 for v in out)


def test_noise_makes_attackers_look_like_honest_clients() -> None:
    """Each attacker adds its own noise: they are no more alike than honest updates, and a
    filter that drops the f most aligned updates keeps them (the issue's finding)."""
    rng = np.random.default_rng(0)
    d, n, f = 400, 12, 3
    honest = list(rng.normal(size=(n, d)) + 0.2)  # pairwise cosine ~0.04, like real LoRA deltas

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    filt = lambda u: cosine_filter(u, num_malicious=f)  # noqa: E731
    plain = ipm_opt(honest, num_malicious=f, aggregator=filt)
    noisy = ipm_opt(honest, num_malicious=f, aggregator=filt, noise=True, rng=np.random.default_rng(1))
    assert np.array_equal(plain[0], plain[1])  # identical attackers: the filter catches them
    assert abs(cos(noisy[0], noisy[1])) < 0.3  # far from alike (honest pairs: ~0.03)
    x = np.stack(honest)
    assert damage(x, noisy, filt) > 10 * damage(x, plain, filt)
    assert damage(x, noisy, filt) > damage(x, noisy, None)  # worse than no defence at all


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), direction=st.sampled_from(["std", "unit", "sign"]))
def test_min_sum_respects_its_constraint_and_is_maximal(seed: int, direction: str) -> None:
    x = np.random.default_rng(seed).normal(size=(7, 4)) + 0.5
    v = min_sum(list(x), num_malicious=1, direction=direction, tol=1e-9)[0].astype(np.float64)
    limit = max(np.square(x - x[i]).sum() for i in range(7))
    assert np.square(x - v).sum() <= limit * (1 + 1e-5)
    further = v + 0.01 * (v - x.mean(0))
    assert np.square(x - further).sum() > limit


@pytest.mark.parametrize("tailored, agnostic", [(min_max_tailored, min_max), (min_sum_tailored, min_sum)])
@pytest.mark.parametrize("rule", ["median", "trimmed"])
def test_tailored_attacks_hurt_the_rule_at_least_as_much_as_agnostic_ones(tailored, agnostic, rule) -> None:
    honest = list(np.random.default_rng(3).normal(size=(10, 6)) + 0.3)
    agg = RULES[rule]
    t = tailored(honest, num_malicious=2, aggregator=agg)
    a = agnostic(honest, num_malicious=2)
    x = np.stack(honest)
    assert damage(x, t, agg) >= damage(x, a, agg) * (1 - 1e-6)
    assert damage(x, t, agg) > 0


def test_attack_config_knows_the_adaptive_attacks_and_supplies_the_aggregator() -> None:
    adaptive = {"alie_opt", "ipm_opt", "min_max_tailored", "min_sum_tailored", "min_sum", "mimic", "zeros"}
    assert adaptive <= set(UPDATE_ATTACKS)
    cfg = AttackConfig("ipm_opt", fraction=0.2, params={"noise": True, "evals": 10})
    with pytest.raises(AttackError, match="takes no parameter"):
        AttackConfig("ipm_opt", fraction=0.2, params={"aggregator": "mean"})
    med = lambda u: coordinate_median(u)  # noqa: E731
    got = malicious_updates(cfg, X, num_malicious=2, rng=np.random.default_rng(0), aggregator=med)
    want = ipm_opt(X, num_malicious=2, rng=np.random.default_rng(0), aggregator=med, noise=True, evals=10)
    np.testing.assert_array_equal(got[0], want[0])
    run_config_from_dict({"attack": {"name": "alie_opt", "fraction": 0.2, "params": "noise=true"}})


def test_plain_hook_tunes_against_the_configured_rule() -> None:
    """The server hook gives the attack the server's own rule: ALIE tuned against the median
    lands elsewhere than ALIE tuned against the mean."""
    from fedrlhf.simulation.threats import update_hook

    def run(rule: str) -> np.ndarray:
        cfg = run_config_from_dict(
            {
                "cohort": {"num_clients": 10},
                "robust": {"rule": rule, "num_malicious": 2 if rule != "mean" else 0, "max_norm_ratio": 0},
                "attack": {"name": "alie_opt", "fraction": 0.2},
            }
        )
        devices = [f"user-{i:05d}" for i in range(10)]
        from fedrlhf.simulation.threats import attackers

        bad = attackers(cfg)
        updates = list(np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32) + 0.5)
        hook = update_hook(cfg, bad)
        assert hook is not None
        out = hook(1, devices, updates, np.random.default_rng(0))
        return next(v for d, v in zip(devices, out, strict=True) if d in bad)

    assert np.linalg.norm(run("mean")) > 100 * np.linalg.norm(run("coordinate_median"))


def test_secure_view_refuses_group_means_above_the_clip_bound() -> None:
    from fedrlhf.simulation.threats import secure_view

    cfg = run_config_from_dict(
        {
            "cohort": {"num_clients": 12},
            "federation": {"clients_per_round": 12},
            "robust": {"rule": "coordinate_median", "num_malicious": 1},
            "secagg": {"enabled": True, "min_group_size": 3, "clip_norm": 1.0},
            "attack": {"name": "ipm_opt", "fraction": 0.2},
        }
    )
    view = secure_view(cfg, 2, np.random.default_rng(0))
    honest = [np.full(4, 0.1), np.full(4, 0.12)]
    small = view([*honest, np.full(4, -0.1), np.full(4, -0.1)])
    huge = view([*honest, np.full(4, -100.0), np.full(4, -100.0)])  # its groups' means are refused
    assert np.all(np.isfinite(small)) and np.linalg.norm(huge) <= 1.0
    forged = ipm_opt(honest, num_malicious=2, aggregator=view)
    assert damage(np.stack(honest), forged, view) >= damage(np.stack(honest), [np.zeros(4)] * 2, view)
