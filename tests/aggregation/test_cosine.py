"""Cosine filter: the coalition score, the updates it drops, in plain and grouped (secure) rounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedrlhf.aggregation import (
    EMPTY_SCORE,
    RULES,
    AggregationError,
    aggregate,
    agreement_scores,
    coalition_scores,
    cosine_filter,
    cosine_keep,
    cosine_two_sided,
    cosine_two_sided_keep,
    make_groups,
    mean,
)
from fedrlhf.aggregation.clipping import clip_to_norm
from fedrlhf.aggregation.rules import requires_individual_updates
from tests.aggregation.test_dnc import FORGED, _honest


def _backdoor_round(seed: int, n_honest: int = 12, d: int = 4000) -> tuple[np.ndarray, set[int]]:
    """Honest updates near-orthogonal; 3 attackers with pairwise cosine ~0.2 (as measured on HH)."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(size=(n_honest, d))
    bad = rng.normal(size=(3, d)) + 0.5 * rng.normal(size=d)
    x = np.concatenate([honest[:5], bad[:1], honest[5:9], bad[1:], honest[9:]])
    return x, {5, 10, 11}


def test_registered_and_needs_individual_updates() -> None:
    assert RULES["cosine_filter"] is cosine_filter
    assert requires_individual_updates("cosine_filter")


def test_scores_on_a_small_example() -> None:
    e1, e2, e3 = np.eye(3)
    x = [e1, 2.0 * e1, e2, e2 + e3]
    # f = 2: each update's single highest cosine to another update
    np.testing.assert_allclose(coalition_scores(x, num_malicious=2), [1.0, 1.0, 2**-0.5, 2**-0.5])
    # f = 3: the mean of the two highest
    np.testing.assert_allclose(coalition_scores(x, num_malicious=3), [0.5, 0.5, 2**-0.5 / 2, 2**-0.5 / 2])
    # an empty update has no direction: it scores above any cosine and counts as cosine 0 to the rest
    assert coalition_scores([np.zeros(3), e1, e2], num_malicious=2).tolist() == [EMPTY_SCORE, 0.0, 0.0]


def test_without_malicious_budget_it_is_the_mean() -> None:
    x = list(_honest(7, 50))
    w = [1.0, 2.0, 3.0, 1.0, 1.0, 5.0, 0.5]
    np.testing.assert_allclose(
        cosine_filter(x, w, num_malicious=0, clip_median=False), mean(x, w), rtol=1e-12
    )


def test_drops_a_coalition_that_shares_a_direction() -> None:
    for seed in range(5):
        x, bad = _backdoor_round(seed)
        assert set(cosine_keep(list(x), num_malicious=3).tolist()) == set(range(15)) - bad
    honest = np.delete(x, sorted(bad), axis=0)
    out = cosine_filter(list(x), num_malicious=3, clip_median=False)
    np.testing.assert_allclose(out, honest.mean(axis=0), rtol=1e-10)


@FORGED
def test_drops_identical_forged_updates(attack) -> None:  # type: ignore[no-untyped-def]
    honest = _honest(12, 3000, seed=2)
    x = np.concatenate([np.stack(attack(honest)), honest])
    assert set(cosine_keep(list(x), num_malicious=3).tolist()).isdisjoint({0, 1, 2})


@pytest.mark.parametrize("z", [0.0, 2.0])
def test_copies_of_one_honest_update_count_once_whatever_the_order(z: float) -> None:
    # Mimic: f attackers copy one honest update; its f + 1 equal scores tie at the cut. Any one
    # copy gives the same mean, so f of them go (before, all f + 1 were kept: 4x its weight).
    from fedrlhf.simulation.adaptive import mimic

    honest = _honest(12, 3000, seed=2)
    x = np.concatenate([honest, np.stack(mimic(list(honest), num_malicious=3))])
    kept = cosine_keep(list(x), num_malicious=3, outlier_z=z)
    assert len(kept) == 12 and len({x[i].tobytes() for i in kept}) == 12
    med = np.median(np.linalg.norm(x, axis=1))  # clipped to the median norm of all 15
    want = np.mean([h * min(1.0, med / np.linalg.norm(h)) for h in honest], axis=0)
    for order in (np.arange(15), np.random.default_rng(1).permutation(15)):
        got = cosine_filter(list(x[order]), num_malicious=3, outlier_z=z)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_finds_the_coalition_among_secure_group_means() -> None:
    """Secure mode: 15 clients clip to norm 1 and are averaged in 7 random groups; the groups
    that hold an attacker still share the attackers' direction, so the filter drops them."""
    kept_bad = 0
    for seed in range(20):
        x, bad = _backdoor_round(seed)
        clipped = np.stack([clip_to_norm(v, max_norm=1.0) for v in x])
        groups = make_groups(
            [str(i) for i in range(15)], min_group_size=2, num_groups=7, rng=np.random.default_rng(seed)
        )
        means = [clipped[[int(i) for i in g]].mean(axis=0) for g in groups]
        tainted = [bool(bad & {int(i) for i in g}) for g in groups]
        assert sum(tainted) <= 3
        kept = cosine_keep(means, num_malicious=3)
        kept_bad += sum(tainted[k] for k in kept)
    assert kept_bad <= 2, kept_bad  # of ~55 tainted group means over the 20 rounds


@pytest.mark.parametrize(
    ("f", "match"),
    [(3, "needs more than 2\\*num_malicious = 6"), (-1, "num_malicious"), (1.5, "num_malicious")],
)
def test_bad_parameters_are_named(f: float, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        cosine_filter(list(_honest(5, 10)), num_malicious=f)  # type: ignore[arg-type]


def test_registry_requires_num_malicious() -> None:
    from fedrlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="num_malicious"):
        aggregate("cosine_filter", list(_honest(5, 10)))


def test_server_path_hands_it_num_malicious() -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    cfg = run_config_from_dict({"robust": {"rule": "cosine_filter", "num_malicious": 3}})
    x, _ = _backdoor_round(0)
    x32 = [v.astype(np.float32) for v in x]
    out = aggregate_updates(
        x32, cfg, ServerState(round=0, global_state={}, rng={}), [], np.random.default_rng(0)
    )
    np.testing.assert_allclose(out, cosine_filter(x32, num_malicious=3), rtol=1e-6)


def test_secure_mode_needs_an_honest_majority_of_group_means() -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.errors import ConfigError

    def cfg(min_group_size: int) -> object:
        return run_config_from_dict(
            {
                "robust": {"rule": "cosine_filter", "num_malicious": 2},
                "federation": {"clients_per_round": 10},
                "secagg": {"enabled": True, "min_group_size": min_group_size},
            }
        )

    cfg(2)  # 5 group means: drops 2, averages 3
    with pytest.raises(ConfigError, match="needs at least 5 of them"):
        cfg(3)  # 3 group means, 2 of them possibly the attackers'


def test_dropped_by_names_the_filtered_updates() -> None:
    from fedrlhf.aggregation import FILTERING_RULES, dropped_by

    x, bad = _backdoor_round(3)
    assert FILTERING_RULES == {"dnc", "cosine_filter", "cosine_two_sided"}
    assert dropped_by("cosine_filter", list(x), num_malicious=3, clip_median=True) == sorted(bad)
    assert dropped_by("dnc", list(x), num_malicious=3, seed=1) == sorted(bad)
    assert dropped_by("coordinate_median", list(x)) is None


def test_server_path_lists_what_the_filter_dropped() -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    x, bad = _backdoor_round(4)
    dropped: list[int] = []
    cfg = run_config_from_dict({"robust": {"rule": "cosine_filter", "num_malicious": 3}})
    state = ServerState(round=0, global_state={}, rng={})
    aggregate_updates(list(x), cfg, state, [], np.random.default_rng(0), dropped=dropped)
    assert dropped == sorted(bad)
    median = run_config_from_dict({"robust": {"rule": "coordinate_median"}})
    aggregate_updates(list(x), median, state, [], np.random.default_rng(0), dropped=(none := []))
    assert none == []


def _flip_round(seed: int, n_honest: int = 12, d: int = 4000) -> tuple[np.ndarray, set[int]]:
    """Label or sign flippers: each pushes against the honest direction on its own (no shared
    direction among them); cosines to the others' mean ~+0.1 vs ~-0.1 (on HH ~+0.01 vs ~-0.02)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=d)
    honest = 0.2 * signal + rng.normal(size=(n_honest, d))
    bad = -0.2 * signal + rng.normal(size=(3, d))
    bad[0] *= 4.0  # a scaled sign flip
    x = np.concatenate([honest[:4], bad[:1], honest[4:7], bad[1:], honest[7:]])
    return x, {4, 8, 9}


def test_two_sided_is_registered_and_needs_individual_updates() -> None:
    assert RULES["cosine_two_sided"] is cosine_two_sided
    assert requires_individual_updates("cosine_two_sided")


def test_agreement_scores_on_a_small_example() -> None:
    e1, e2 = np.eye(2)
    # after median clipping (median norm 1) the inputs are e1, e1, -e1, e2
    scores = agreement_scores([e1, e1, -3.0 * e1, e2])
    np.testing.assert_allclose(scores[0], 0.0, atol=1e-12)  # the others' mean is e2 / 3
    np.testing.assert_allclose(scores[2], -((2 / 3) / np.sqrt((2 / 3) ** 2 + (1 / 3) ** 2)), rtol=1e-12)
    assert scores[2] == scores.min()
    assert agreement_scores([np.zeros(2), e1]).tolist() == [0.0, 0.0]
    # unclipped, -3 e1 turns the others' mean of update 0 its way: (e1 - 3 e1 + e2) / 3
    raw = agreement_scores([e1, e1, -3.0 * e1, e2], clip_median=False)
    np.testing.assert_allclose(raw[0], -2 / np.sqrt(5), rtol=1e-12)


def test_two_sided_drops_flippers_the_one_sided_filter_keeps() -> None:
    for seed in range(5):
        x, bad = _flip_round(seed)
        assert bad <= set(cosine_keep(list(x), num_malicious=3).tolist())  # no shared direction
        kept = set(cosine_two_sided_keep(list(x), num_malicious=3).tolist())
        assert kept.isdisjoint(bad), (seed, kept)
        assert len(kept) == 15 - 6
    out = cosine_two_sided(list(x), num_malicious=3, clip_median=False)
    np.testing.assert_allclose(out, x[sorted(kept)].mean(axis=0), rtol=1e-10)


def test_two_sided_still_drops_a_coalition() -> None:
    for seed in range(5):
        x, bad = _backdoor_round(seed)
        assert set(cosine_two_sided_keep(list(x), num_malicious=3).tolist()).isdisjoint(bad)


def test_two_sided_without_malicious_budget_is_the_mean() -> None:
    x = list(_honest(7, 50))
    w = [1.0, 2.0, 3.0, 1.0, 1.0, 5.0, 0.5]
    np.testing.assert_allclose(
        cosine_two_sided(x, w, num_malicious=0, clip_median=False), mean(x, w), rtol=1e-12
    )


def test_two_sided_needs_more_than_2f_updates() -> None:
    with pytest.raises(AggregationError, match=r"2 \* num_malicious = 6 of 6 updates leaves none"):
        cosine_two_sided(list(_honest(6, 10)), num_malicious=3)
    assert len(cosine_two_sided_keep(list(_honest(7, 10)), num_malicious=3)) == 1


def test_two_sided_on_the_server_path_and_in_secure_config() -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.errors import ConfigError
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    x, bad = _flip_round(0)
    cfg = run_config_from_dict({"robust": {"rule": "cosine_two_sided", "num_malicious": 3}})
    dropped: list[int] = []
    state = ServerState(round=0, global_state={}, rng={})
    out = aggregate_updates(list(x), cfg, state, [], np.random.default_rng(0), dropped=dropped)
    np.testing.assert_allclose(out, cosine_two_sided(list(x), num_malicious=3), rtol=1e-6)
    assert bad <= set(dropped) and len(dropped) == 6

    def secure(min_group_size: int) -> object:
        return run_config_from_dict(
            {
                "robust": {"rule": "cosine_two_sided", "num_malicious": 2},
                "federation": {"clients_per_round": 10},
                "secagg": {"enabled": True, "min_group_size": min_group_size},
            }
        )

    secure(2)  # 5 group means: drops 4, averages 1
    with pytest.raises(ConfigError, match="needs at least 5 of them"):
        secure(3)


def test_outlier_z_keeps_a_clean_round_whole_and_still_drops_a_coalition() -> None:
    """With ``outlier_z`` only scores that stand out go: none of 15 near-orthogonal honest updates
    (the ungated filter drops 3 of them), the whole coalition of a backdoor round."""
    for seed in range(5):
        clean = list(np.random.default_rng(seed).normal(size=(15, 4000)))
        assert len(cosine_keep(clean, num_malicious=3)) == 12
        assert len(cosine_keep(clean, num_malicious=3, outlier_z=3.0)) == 15
        x, bad = _backdoor_round(seed)
        kept = set(cosine_keep(list(x), num_malicious=3, outlier_z=3.0).tolist())
        assert kept == set(range(15)) - bad, (seed, kept)
    np.testing.assert_allclose(
        cosine_filter(clean, num_malicious=3, outlier_z=3.0, clip_median=False), mean(clean), rtol=1e-10
    )


def test_outlier_z_drops_at_most_f_and_at_least_the_empty_ones() -> None:
    rng = np.random.default_rng(7)
    shared = rng.normal(size=500)
    x = rng.normal(size=(15, 500))
    x[:5] += 3.0 * shared  # 5 updates share a direction, f = 3: only 3 of them may go
    x[14] = 0.0  # an empty update scores EMPTY_SCORE: it is the first dropped, and counts in f
    kept = set(cosine_keep(list(x), num_malicious=3, outlier_z=3.0).tolist())
    assert 14 not in kept and len(kept) == 12
    assert len(set(range(5)) - kept) == 2


def test_outlier_z_two_sided_drops_a_strong_dissenter_but_not_a_mild_one() -> None:
    rng = np.random.default_rng(3)
    signal = rng.normal(size=4000)
    x = 0.2 * signal + rng.normal(size=(15, 4000))
    x[3] = -2.0 * signal + rng.normal(size=4000)  # points hard against the rest
    x[9] = 0.15 * signal + rng.normal(size=4000)  # agrees a little less: within the honest spread
    kept = set(cosine_two_sided_keep(list(x), num_malicious=3, outlier_z=3.0).tolist())
    assert kept == set(range(15)) - {3}
    assert len(cosine_two_sided_keep(list(x), num_malicious=3)) == 9  # ungated: 2f go


@pytest.mark.parametrize("z", [-1.0, float("nan"), True, "3"])
def test_outlier_z_must_be_a_finite_nonnegative_number(z: object) -> None:
    with pytest.raises(AggregationError, match="outlier_z must be a finite number >= 0"):
        cosine_filter(list(_honest(7, 10)), num_malicious=1, outlier_z=z)  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="outlier_z"):
        cosine_two_sided_keep(list(_honest(7, 10)), num_malicious=1, outlier_z=z)  # type: ignore[arg-type]


def test_outlier_z_reaches_the_rule_from_the_config_and_is_refused_elsewhere() -> None:
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.errors import ConfigError
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    cfg = run_config_from_dict({"robust": {"rule": "cosine_filter", "num_malicious": 3, "outlier_z": 3.0}})
    x = [v.astype(np.float32) for v in np.random.default_rng(1).normal(size=(15, 300))]
    dropped: list[int] = []
    out = aggregate_updates(
        x, cfg, ServerState(round=0, global_state={}, rng={}), [], np.random.default_rng(0), dropped=dropped
    )
    np.testing.assert_allclose(out, cosine_filter(x, num_malicious=3, outlier_z=3.0), rtol=1e-6)
    assert dropped == []
    with pytest.raises(ConfigError, match="robust.outlier_z only applies to rule 'cosine_filter'"):
        run_config_from_dict({"robust": {"rule": "dnc", "num_malicious": 3, "outlier_z": 3.0}})
    with pytest.raises(ConfigError, match="robust.outlier_z must be >= 0"):
        run_config_from_dict({"robust": {"rule": "cosine_filter", "num_malicious": 3, "outlier_z": -1.0}})


@pytest.mark.parametrize("z", [0.0, 2.0])
def test_one_malicious_drops_no_update_with_a_direction(z: float) -> None:
    # one attacker has no coalition; the most aligned pair ties at the cut and both are kept
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 50))
    x[9] = x[8] + 0.01 * rng.normal(size=50)  # a near-clone pair
    assert cosine_keep(list(x), num_malicious=1, outlier_z=z).tolist() == list(range(10))
    x[4] = 0.0  # an empty update still goes
    assert cosine_keep(list(x), num_malicious=1, outlier_z=z).tolist() == [i for i in range(10) if i != 4]
