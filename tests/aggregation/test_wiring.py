"""Robust rules as the server wires them (issue 24, item 1): parameters from f, honest majorities,
centered clipping as published, the geometric median at any scale, empty updates in the cosine filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrlhf.aggregation import (
    AggregationError,
    aggregate,
    centered_clipping,
    cosine_filter,
    cosine_keep,
    cosine_two_sided,
    dropped_by,
    geometric_median,
    mean,
    norm_bound,
    rule_kwargs,
    trimmed_mean,
)
from fedrlhf.aggregation.validate import aggregate_problem
from fedrlhf.config import RobustConfig, load_run_config, run_config_from_dict
from fedrlhf.errors import ConfigError


def _server(name: str, x: list[np.ndarray], f: int, center: np.ndarray | None = None, **robust: float):
    """Rule ``name`` over ``x`` with the parameters the server hands it from ``[robust]``."""
    settings = RobustConfig(rule=name, num_malicious=f, **robust)  # type: ignore[arg-type]
    params = rule_kwargs(name, settings, len(x), np.random.default_rng(0), center=center)
    return aggregate(name, x, **params)


def _honest(n: int, d: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return offset + rng.normal(size=(n, d))


# ------------------------------------------------------------------------- trimmed mean: k >= f


def test_trimmed_mean_as_the_server_calls_it_trims_at_least_f_per_side() -> None:
    """f = 2 of 9 with trim_fraction 0.1: int(0.9) = 0 trimmed nothing (a plain mean, ~2e5 off)."""
    honest = np.random.default_rng(0).uniform(0.0, 1.0, size=(7, 4))
    x = list(np.concatenate([honest, np.full((2, 4), 1e6)]))
    out = _server("trimmed_mean", x, 2, trim_fraction=0.1)
    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))
    np.testing.assert_allclose(out, trimmed_mean(x, num_trim=2))


def test_trimmed_mean_trims_the_larger_of_beta_and_f() -> None:
    x = list(_honest(9, 3, seed=1))
    same = trimmed_mean(x, num_trim=2)
    np.testing.assert_allclose(trimmed_mean(x, beta=0.1, num_malicious=2), same)  # int(0.9) = 0 < f
    np.testing.assert_allclose(trimmed_mean(x, beta=0.3, num_malicious=2), same)  # int(2.7) = 2 = f
    np.testing.assert_allclose(trimmed_mean(x, beta=0.4, num_malicious=2), trimmed_mean(x, num_trim=3))
    np.testing.assert_allclose(trimmed_mean(x, beta=0.1), mean(x))  # f = 0: Flower's rounding down


# ------------------------------------------------------------- every rule needs n > 2f inputs

MAJORITY_RULES = [
    "coordinate_median",
    "trimmed_mean",
    "geometric_median",
    "centered_clipping",
    "dnc",
    "cosine_filter",
]


@pytest.mark.parametrize("name", MAJORITY_RULES)
def test_rules_refuse_inputs_that_cannot_outvote_f(name: str) -> None:
    """n = 5, f = 3: three identical attackers are the majority. DnC kept exactly their vector,
    the median returned it; each rule now refuses and says what to change."""
    honest = _honest(2, 6, seed=2)
    attacker = np.full(6, 50.0)
    x = list(np.concatenate([honest, np.tile(attacker, (3, 1))]))
    with pytest.raises(AggregationError, match=r"sample at least 7 clients or lower num_malicious to 2"):
        _server(name, x, 3)
    out = _server(name, x[:4] + [honest[0] + 0.1], 2)  # 5 > 2f: runs
    assert np.all(np.isfinite(out))


# -------------------------------------------------- secure mode: enough group means to outvote f


def _secure(rule: str, f: int, clients: int, group: int) -> dict[str, dict[str, object]]:
    return {
        "robust": {"rule": rule, "num_malicious": f},
        "federation": {"clients_per_round": clients},
        "secagg": {"enabled": True, "min_group_size": group},
    }


@pytest.mark.parametrize("rule", MAJORITY_RULES)
def test_secure_mode_refuses_too_few_group_means_to_outvote_f(rule: str) -> None:
    """8 clients in groups of 4 give 2 group means: a median of two is their mean, and one attacker
    in one group moves it without bound. With f = 1 every majority rule needs 3."""
    with pytest.raises(
        ConfigError, match=r"needs at least 3 of them .*give 2; .*set secagg.min_group_size <= 2"
    ):
        run_config_from_dict(_secure(rule, 1, 8, 4))
    with pytest.raises(ConfigError, match=r"sample at least 12 clients per round \(3 groups of 4\)"):
        run_config_from_dict(_secure(rule, 1, 8, 4))
    cfg = run_config_from_dict(_secure(rule, 1, 8, 2))  # 4 group means
    assert cfg.secagg.groups_for(8) == 4
    run_config_from_dict(_secure(rule, 0, 8, 4))  # f = 0: nothing to outvote


def test_secure_refusal_through_a_toml_file_and_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[federation]\nclients_per_round = 15\n[robust]\nrule = "coordinate_median"\nnum_malicious = 3\n'
        "[secagg]\nenabled = true\nmin_group_size = 2\nnum_groups = 7\n"
    )
    assert load_run_config(path).secagg.groups_for(15) == 7  # 7 = 2f + 1
    with pytest.raises(ConfigError, match=r"needs at least 9 of them .* or lower robust.num_malicious to 3"):
        load_run_config(path, ["robust.num_malicious=4"])
    with pytest.raises(ConfigError, match=r"set secagg.num_groups = 0 or 7"):
        load_run_config(path, ["secagg.num_groups=5"])
    with pytest.raises(ConfigError, match=r"needs at least 9 of them .*lower robust.num_malicious to 2"):
        load_run_config(path, ["robust.rule=krum"])  # Krum: 2f + 3


# ------------------------------------------------------------------------- centered clipping


def _cc_round(seed: int, scale: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
    """12 honest updates around a mean of norm ~35, 3 attackers far off; returns (updates, honest mean)."""
    rng = np.random.default_rng(seed)
    honest = 5.0 + rng.normal(size=(12, 50))
    bad = 1e4 * rng.normal(size=(3, 50))
    x = np.concatenate([honest[:4], bad[:1], honest[4:], bad[1:]]) * scale
    return list(x), honest.mean(axis=0) * scale


def test_centered_clipping_as_the_server_calls_it_is_not_a_norm_bound() -> None:
    """Before: tau = robust.clip_norm around zero, one iteration: exactly norm_bound (norm <= 1)."""
    x, honest_mean = _cc_round(0)
    out = _server("centered_clipping", x, 3, clip_norm=1.0)
    assert not np.allclose(out, norm_bound(x, max_norm=1.0))
    spread = float(np.median(np.linalg.norm(np.asarray(x) - honest_mean, axis=1)))
    assert np.linalg.norm(out - honest_mean) < 0.25 * spread  # the attackers moved it little


def test_centered_clipping_radius_follows_the_update_scale() -> None:
    x, _ = _cc_round(1)
    for scale in (1e-3, 1e3):
        scaled = [v * scale for v in x]
        np.testing.assert_allclose(
            _server("centered_clipping", scaled, 3), _server("centered_clipping", x, 3) * scale
        )


def test_the_server_can_hand_centered_clipping_the_last_aggregate() -> None:
    settings = RobustConfig(rule="centered_clipping", num_malicious=1)
    last = np.ones(4)
    rng = np.random.default_rng(0)
    assert rule_kwargs("centered_clipping", settings, 5, rng, center=last)["center"] is last
    assert "center" not in rule_kwargs("centered_clipping", settings, 5, rng)
    for name in ("coordinate_median", "krum", "cosine_filter"):  # the others ignore it
        assert "center" not in rule_kwargs(name, settings, 5, rng, center=last)
    x, honest_mean = _cc_round(2)
    near = _server("centered_clipping", x, 3, center=honest_mean)
    assert np.linalg.norm(near - honest_mean) <= np.linalg.norm(
        _server("centered_clipping", x, 3) - honest_mean
    )


def test_a_stale_centre_does_not_pin_centered_clipping() -> None:
    """Last round's aggregate far larger than this round's updates: scaled to their median norm,
    so the output stays within what the server's bound check allows."""
    x = list(_honest(9, 8, seed=3, offset=0.5))
    stale = np.full(8, 1e6)
    out = centered_clipping(x, tau_scale=1.0, iterations=3, center=stale)
    assert aggregate_problem(out, x) is None
    median_norm = float(np.median(np.linalg.norm(np.asarray(x), axis=1)))
    assert np.linalg.norm(out) <= max(median_norm, max(np.linalg.norm(x, axis=1))) * (1 + 1e-9)


def test_centered_clipping_parameters_are_checked() -> None:
    x = list(_honest(5, 3, seed=4))
    with pytest.raises(AggregationError, match="exactly one of tau"):
        centered_clipping(x)
    with pytest.raises(AggregationError, match="exactly one of tau"):
        centered_clipping(x, tau=1.0, tau_scale=1.0)
    with pytest.raises(AggregationError, match="tau_scale must be positive"):
        centered_clipping(x, tau_scale=0.0)


# ---------------------------------------------------------------- geometric median at any scale


def test_geometric_median_is_finite_and_exact_at_any_scale() -> None:
    """Float64 inputs above ~1e153 overflowed the distances and returned NaN."""
    x = _honest(7, 5, seed=5)
    base = geometric_median(list(x))
    for k in (100, 510, 1000):  # 2**510 ~ 3e153, 2**1000 ~ 1e301
        out = geometric_median(list(x * 2.0**k))
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out / 2.0**k, base, rtol=1e-9)


def test_geometric_median_stays_with_the_honest_updates_next_to_a_huge_attacker() -> None:
    honest = _honest(6, 4, seed=6)
    x = list(np.concatenate([honest, np.full((2, 4), 1e300)]))
    out = geometric_median(x, num_malicious=2)
    assert np.all(np.isfinite(out))
    assert (
        np.linalg.norm(out - honest.mean(axis=0))
        < 5 * np.linalg.norm(honest - honest.mean(axis=0), axis=1).max()
    )


# ------------------------------------------------------------- empty updates in the cosine filter


def test_an_all_zero_update_is_dropped_by_the_cosine_filter_not_kept_as_neutral() -> None:
    """Its cosine counted as 0, below the honest updates' small positive ones: it passed, an honest
    update was dropped in its place, and the mean was pulled towards zero."""
    honest = _honest(8, 400, seed=7, offset=0.05)
    x = list(np.concatenate([honest[:3], np.zeros((1, 400)), honest[3:]]))
    assert dropped_by("cosine_filter", x, num_malicious=1) == [3]
    np.testing.assert_allclose(cosine_filter(x, num_malicious=1, clip_median=False), honest.mean(axis=0))
    tiny = x[:3] + [honest[0] * 1e-9] + x[4:]  # about zero counts as empty too
    assert 3 not in cosine_keep(tiny, num_malicious=1)


def test_empty_updates_beyond_f_are_dropped_too() -> None:
    honest = _honest(6, 200, seed=8)
    x = list(np.concatenate([np.zeros((3, 200)), honest]))
    assert cosine_keep(x, num_malicious=1).tolist() == [3, 4, 5, 6, 7, 8]  # f = 1, 3 empty
    # every update empty means every one is 0: the aggregate is 0, not an error
    assert cosine_filter([np.zeros(3)] * 3, num_malicious=1).tolist() == [0.0, 0.0, 0.0]
    # most updates empty: the median norm is 0, so is the clipped output, however few are left
    mostly_empty = [np.ones(3)] + [np.zeros(3)] * 4
    assert cosine_two_sided(mostly_empty, num_malicious=1).tolist() == [0.0, 0.0, 0.0]
