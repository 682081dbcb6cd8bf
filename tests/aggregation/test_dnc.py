"""Divide-and-Conquer (DnC): the spectral filter, its parameters, and the attacks it must catch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrlhf.aggregation import (
    RULES,
    AggregationError,
    aggregate,
    cosine_filter,
    cosine_keep,
    cosine_two_sided,
    cosine_two_sided_keep,
    dnc,
    dnc_keep,
    empty_updates,
    mean,
)
from fedrlhf.aggregation.rules import requires_individual_updates
from fedrlhf.simulation.attacks import alie, ipm, min_max, sybil_clones


def _honest(n: int = 12, d: int = 4000, seed: int = 0) -> np.ndarray:
    """Near-orthogonal honest updates with a small shared signal, as measured on MiniLM LoRA deltas."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=d)
    return rng.normal(size=(n, d)) + 0.3 * signal


def test_registered_and_needs_individual_updates() -> None:
    assert RULES["dnc"] is dnc
    assert requires_individual_updates("dnc")


def test_without_malicious_budget_it_is_the_mean() -> None:
    x = list(_honest(7, 50))
    w = [1.0, 2.0, 3.0, 1.0, 1.0, 5.0, 0.5]
    np.testing.assert_allclose(dnc(x, w, num_malicious=0, clip_median=False), mean(x, w), rtol=1e-12)
    assert list(dnc_keep(x, num_malicious=0)) == list(range(7))


def test_drops_a_coalition_that_shares_a_direction() -> None:
    """A backdoor's signature: attackers near-orthogonal to the honest ones, but alike among themselves
    (pairwise cosine ~0.2 in a measured MiniLM round, honest pairs ~0.03)."""
    rng = np.random.default_rng(1)
    honest = _honest()
    d = honest.shape[1]
    common = rng.normal(size=d)
    bad = rng.normal(size=(3, d)) + 0.5 * common  # cosine ~0.2 among the attackers
    x = np.concatenate([honest[:5], bad[:1], honest[5:9], bad[1:], honest[9:]])
    bad_idx = {5, 10, 11}
    for seed in range(5):
        kept = set(dnc_keep(list(x), num_malicious=3, seed=seed).tolist())
        assert kept == set(range(15)) - bad_idx
    out = dnc(list(x), num_malicious=3, clip_median=False)
    np.testing.assert_allclose(out, honest.mean(axis=0), rtol=1e-10)


# forged updates that every attacker sends identically (shared by test_cosine)
FORGED = pytest.mark.parametrize(
    "attack",
    [
        lambda h: alie(list(h), num_malicious=3, z=1.5),
        lambda h: ipm(list(h), num_malicious=3, epsilon=3.0),
        lambda h: min_max(list(h), num_malicious=3),
        lambda h: sybil_clones(list(h), num_malicious=3),
    ],
    ids=["alie", "ipm", "min_max", "sybil_clones"],
)


@FORGED
def test_drops_identical_forged_updates(attack) -> None:  # type: ignore[no-untyped-def]
    honest = _honest(12, 3000, seed=2)
    bad = np.stack(attack(honest))
    x = np.concatenate([bad, honest])
    kept = set(dnc_keep(list(x), num_malicious=3, seed=0).tolist())
    assert kept.isdisjoint({0, 1, 2}), kept


def test_median_clipping_bounds_an_update_the_filter_misses() -> None:
    honest = _honest(12, 500)
    rng = np.random.default_rng(3)
    noise = 1e3 * rng.normal(size=(3, 500))  # independent: no shared direction for the filter
    x = list(np.concatenate([honest, noise]))
    norms = np.linalg.norm(np.stack(x), axis=1)
    out = dnc(x, num_malicious=1, iterations=1)
    assert np.linalg.norm(out) <= np.median(norms) * (1 + 1e-9)
    unclipped = dnc(x, num_malicious=1, iterations=1, clip_median=False)
    assert np.linalg.norm(unclipped) > 10 * np.median(norms)  # what the clipping prevents


def test_seed_picks_the_coordinates_and_is_reproducible() -> None:
    x = list(_honest(9, 200, seed=4))
    a = dnc(x, num_malicious=2, seed=7, subsample_fraction=0.1)
    np.testing.assert_array_equal(a, dnc(x, num_malicious=2, seed=7, subsample_fraction=0.1))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"num_malicious": 5}, "needs more than 2\\*num_malicious = 10 updates"),
        ({"num_malicious": 3}, "sample at least 7 clients or lower num_malicious to 2"),
        ({"num_malicious": -1}, "num_malicious"),
        ({"num_malicious": 1, "iterations": 0}, "iterations"),
        ({"num_malicious": 1, "subsample_fraction": 0.0}, "subsample_fraction"),
        ({"num_malicious": 1, "subsample_fraction": 1.5}, "subsample_fraction"),
        ({"num_malicious": 1, "filter_fraction": float("nan")}, "filter_fraction"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, float], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        dnc(list(_honest(5, 10)), **params)  # type: ignore[arg-type]


def test_registry_requires_num_malicious() -> None:
    from fedrlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="num_malicious"):
        aggregate("dnc", list(_honest(5, 10)))


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float64,
        st.tuples(st.integers(2, 10), st.integers(1, 6)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    ),
    f=st.integers(0, 3),
)
@pytest.mark.parametrize(
    ("rule", "keep", "sides"),
    [(dnc, dnc_keep, 1), (cosine_filter, cosine_keep, 1), (cosine_two_sided, cosine_two_sided_keep, 2)],
    ids=["dnc", "cosine", "two_sided"],
)
def test_output_norm_is_at_most_the_median_norm(rule, keep, sides, x, f) -> None:  # type: ignore[no-untyped-def]
    """The filtering rules clip to the median norm and drop at most num_malicious updates (per side)."""
    f = min(f, (len(x) - 1) // 2)  # an honest majority
    empty = empty_updates(x)
    full = len(x) if rule is dnc or empty.all() else int((~empty).sum())
    out = rule(list(x), num_malicious=f)
    bound = float(np.median(np.linalg.norm(x, axis=1)))
    assert np.linalg.norm(out) <= bound * (1 + 1e-9) + 1e-9
    # the cosine filters also leave out empty updates (norm 0) beyond the f: they carry nothing
    assert len(keep(list(x), num_malicious=f)) >= full - sides * f


def test_server_path_runs_dnc_with_a_fresh_seed_each_round() -> None:
    """The server hands DnC ``robust.num_malicious`` and a seed drawn from the round's RNG."""
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    cfg = run_config_from_dict({"robust": {"rule": "dnc", "num_malicious": 3}})
    rng = np.random.default_rng(1)
    honest = _honest(12, 3000, seed=5)
    bad = np.stack(sybil_clones(list(honest), num_malicious=3))
    x = [v.astype(np.float32) for v in np.concatenate([honest, bad])]
    state = ServerState(round=0, global_state={}, rng={})
    before = rng.bit_generator.state
    out = aggregate_updates(x, cfg, state, [], rng)
    assert rng.bit_generator.state != before  # the round's RNG drew the seed
    seed = int(np.random.default_rng(1).integers(2**63))
    np.testing.assert_allclose(out, dnc(x, num_malicious=3, seed=seed), rtol=1e-6)
    assert set(dnc_keep(x, num_malicious=3, seed=seed).tolist()) == set(range(12))


def test_secure_mode_needs_an_honest_majority_of_group_means() -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.errors import ConfigError

    def cfg(**secagg: int) -> object:
        return run_config_from_dict(
            {
                "robust": {"rule": "dnc", "num_malicious": 2},
                "federation": {"clients_per_round": 10},
                "secagg": {"enabled": True, **secagg},
            }
        )

    cfg(min_group_size=2)  # 5 group means: DnC drops 2 of an honest majority of 3, averages 3
    with pytest.raises(ConfigError, match="needs at least 5 of them"):
        cfg(min_group_size=3)  # 3 group means: 2 attackers' groups of 3 are no minority
