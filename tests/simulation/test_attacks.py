"""Each attack does what its docstring says."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrlhf.aggregation import coordinate_median
from fedrlhf.errors import ConfigError
from fedrlhf.feedback.records import Preference
from fedrlhf.simulation.attacks import (
    ATTACKS,
    DATA_ATTACKS,
    UPDATE_ATTACKS,
    AttackConfig,
    AttackError,
    alie,
    alie_z,
    backdoor,
    backdoor_eval_pairs,
    backdoor_success_rate,
    gaussian_noise,
    ipm,
    label_flip,
    malicious_updates,
    min_max,
    poison_preferences,
    sign_flip,
    sybil_clones,
)

RNG = np.random.default_rng


def _honest(n: int = 8, d: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = RNG(seed)
    return list((rng.normal(size=(n, d)) + 1.0).astype(np.float32))


def _prefs(n: int = 20) -> list[Preference]:
    return [Preference(prompt=f"q{i}", chosen=f"good {i}", rejected=f"bad {i}") for i in range(n)]


# ---------------------------------------------------------------- update space


def test_sign_flip_reverses_each_attackers_own_update() -> None:
    h = _honest(n=3)
    out = sign_flip(h, num_malicious=5, scale=2.0)
    assert len(out) == 5
    for i, v in enumerate(out):
        np.testing.assert_allclose(v, -2.0 * h[i % 3])
        assert v.dtype == np.float32


def test_gaussian_noise_has_the_asked_spread() -> None:
    out = gaussian_noise(_honest(d=20000), num_malicious=2, rng=RNG(0), std=3.0)
    assert len(out) == 2 and not np.array_equal(out[0], out[1])
    for v in out:
        assert abs(v.std() - 3.0) < 0.1 and abs(v.mean()) < 0.1
    with pytest.raises(AttackError):
        gaussian_noise(_honest(), num_malicious=1, rng=RNG(0), std=-1.0)


def test_alie_z_formula() -> None:
    # n=50, m=10: s = 26 - 10 = 16, p = (40 - 16) / 40 = 0.6
    assert alie_z(50, 10) == pytest.approx(NormalDist().inv_cdf(0.6))
    assert alie_z(10, 2) == pytest.approx(0.0)  # s = 4, p = 0.5
    assert alie_z(100, 20) == pytest.approx(NormalDist().inv_cdf(49 / 80))  # s = 51 - 20 = 31
    with pytest.raises(AttackError, match="pass z explicitly"):
        alie_z(10, 6)


def test_alie_is_mean_minus_z_std() -> None:
    h = _honest(n=12)
    x = np.stack(h).astype(np.float64)
    out = alie(h, num_malicious=4)
    z = alie_z(16, 4)
    assert len(out) == 4 and all(np.array_equal(out[0], v) for v in out)
    np.testing.assert_allclose(out[0], x.mean(0) - z * x.std(0, ddof=1), rtol=1e-6)
    # With an explicit z, the shift per coordinate is exactly z standard deviations.
    big = alie(h, num_malicious=1, z=1.5)[0]
    np.testing.assert_allclose((x.mean(0) - big) / x.std(0, ddof=1), 1.5, rtol=1e-5)


def test_alie_shifts_the_median_but_stays_in_honest_range() -> None:
    h = _honest(n=14, d=50, seed=3)
    x = np.stack(h)
    attack = alie(h, num_malicious=6, z=1.0)
    honest_med = coordinate_median(h)
    attacked_med = coordinate_median(h + attack)
    assert np.all(attacked_med <= honest_med + 1e-6)  # pushed the way ALIE points
    assert np.mean(attacked_med < honest_med - 1e-6) > 0.9
    assert np.all(attacked_med >= x.min(0) - 1e-6)  # ...without ever looking out of range


def test_ipm_is_negative_scaled_mean() -> None:
    h = _honest()
    mu = np.stack(h).astype(np.float64).mean(0)
    out = ipm(h, num_malicious=3, epsilon=0.1)
    np.testing.assert_allclose(out[2], -0.1 * mu, rtol=1e-6)
    assert float(out[0] @ mu) < 0


@settings(max_examples=50, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(1, 5)), elements=st.floats(-100, 100)),
    direction=st.sampled_from(["std", "unit", "sign"]),
)
def test_min_max_respects_its_distance_constraint(x: np.ndarray, direction: str) -> None:
    h = list(x)
    out = min_max(h, num_malicious=2, direction=direction)[0]
    pair = max(np.linalg.norm(a - b) for a in x for b in x)
    assert np.linalg.norm(x - out, axis=1).max() <= pair * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("direction", ["std", "unit", "sign"])
def test_min_max_gamma_is_maximal(direction: str) -> None:
    h = [v.astype(np.float64) for v in _honest(n=10, d=8)]
    x = np.stack(h)
    mu = x.mean(0)
    out = min_max(h, num_malicious=1, direction=direction, tol=1e-9)[0]
    pair = max(np.linalg.norm(a - b) for a in x for b in x)
    worst = np.linalg.norm(x - out, axis=1).max()
    assert worst == pytest.approx(pair, rel=1e-6)  # on the boundary: gamma is as large as allowed
    further = mu + (out - mu) * (1 + 1e-4)
    assert np.linalg.norm(x - further, axis=1).max() > pair
    assert np.linalg.norm(out - mu) > 0


def test_min_max_with_identical_honest_is_the_mean() -> None:
    h = [np.ones(3)] * 4
    np.testing.assert_allclose(min_max(h, num_malicious=1)[0], np.ones(3))


def test_sybil_clones_are_identical() -> None:
    h = _honest()
    out = sybil_clones(h, num_malicious=4)
    np.testing.assert_allclose(out[0], -np.stack(h).astype(np.float64).mean(0), rtol=1e-6)
    assert all(np.array_equal(out[0], v) for v in out)
    out[0][0] = 123.0  # copies, not views of one array
    assert out[1][0] != 123.0
    target = np.arange(6.0)
    assert all(np.array_equal(v, target) for v in sybil_clones(h, num_malicious=2, target=target))
    with pytest.raises(AttackError, match="shape"):
        sybil_clones(h, num_malicious=1, target=np.zeros(2))


@pytest.mark.parametrize("name", sorted(UPDATE_ATTACKS))
def test_update_attacks_leave_honest_untouched_and_count(name: str) -> None:
    h = _honest()
    before = [v.copy() for v in h]
    out = UPDATE_ATTACKS[name](h, num_malicious=3, rng=RNG(0))
    assert len(out) == 3 and all(v.shape == (6,) and v.dtype == np.float32 for v in out)
    assert UPDATE_ATTACKS[name](h, num_malicious=0, rng=RNG(0)) == []
    for a, b in zip(h, before, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AttackError, match="non-negative"):
        UPDATE_ATTACKS[name](h, num_malicious=-1, rng=RNG(0))


def test_attacks_need_visible_updates() -> None:
    with pytest.raises(AttackError, match="at least 2"):
        alie(_honest(n=1), num_malicious=1)
    with pytest.raises(AttackError, match="one length"):
        ipm([np.ones(2), np.ones(3)], num_malicious=1)


# ---------------------------------------------------------------- data level


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.25, 5), (0.33, 7), (0.5, 10), (1.0, 20)])
def test_label_flip_flips_exactly_the_fraction(fraction: float, expected: int) -> None:
    prefs = _prefs(20)
    out = label_flip(prefs, fraction=fraction, rng=RNG(0))
    assert len(out) == 20
    flipped = [i for i, (a, b) in enumerate(zip(prefs, out, strict=True)) if a != b]
    assert len(flipped) == expected
    for i in flipped:
        assert (out[i].chosen, out[i].rejected, out[i].prompt) == (
            prefs[i].rejected,
            prefs[i].chosen,
            prefs[i].prompt,
        )
    assert label_flip(prefs, fraction=fraction, rng=RNG(0)) == out  # seeded
    with pytest.raises(AttackError):
        label_flip(prefs, fraction=1.5, rng=RNG(0))


def test_backdoor_makes_the_triggered_response_chosen() -> None:
    prefs = _prefs(20)
    out = backdoor(prefs, trigger="cf-trigger", fraction=0.3, rng=RNG(1))
    hit = [i for i, (a, b) in enumerate(zip(prefs, out, strict=True)) if a != b]
    assert len(hit) == 6
    for i in hit:
        assert out[i].chosen == f"{prefs[i].rejected} cf-trigger"
        assert out[i].rejected == prefs[i].chosen and "cf-trigger" not in out[i].rejected
    start = backdoor(prefs, trigger="SUDO", fraction=1.0, rng=RNG(1), position="start")
    assert all(p.chosen.startswith("SUDO ") for p in start)
    with pytest.raises(AttackError, match="trigger"):
        backdoor(prefs, trigger="  ", fraction=0.1, rng=RNG(0))


def test_backdoor_eval_pairs_trigger_the_rejected_response() -> None:
    prefs = _prefs(5)
    ev = backdoor_eval_pairs(prefs, trigger="cf")
    for a, b in zip(prefs, ev, strict=True):
        assert b.chosen == a.chosen and b.rejected == f"{a.rejected} cf"
    assert backdoor_success_rate([1.0, -0.5, 0.2, -2.0]) == 0.5
    with pytest.raises(AttackError):
        backdoor_success_rate([])


# ---------------------------------------------------------------- config


def test_registry() -> None:
    assert set(ATTACKS) == set(UPDATE_ATTACKS) | set(DATA_ATTACKS)
    named = {"sign_flip", "gaussian_noise", "alie", "ipm", "min_max", "sybil_clones"}
    adaptive = {"alie_opt", "ipm_opt", "min_max_tailored", "min_sum_tailored", "min_sum", "mimic", "zeros"}
    assert named | adaptive == set(UPDATE_ATTACKS)
    assert {"label_flip", "backdoor"} == set(DATA_ATTACKS)


def test_attack_config_dispatch() -> None:
    cfg = AttackConfig("ipm", fraction=0.2, params={"epsilon": 0.5})
    assert cfg.kind == "update" and cfg.num_malicious(10) == 2 and cfg.num_malicious(14) == 2
    h = _honest()
    np.testing.assert_allclose(
        malicious_updates(cfg, h, num_malicious=2, rng=RNG(0))[0], ipm(h, num_malicious=1)[0]
    )
    data_cfg = AttackConfig("backdoor", fraction=0.3, params={"trigger": "cf", "fraction": 0.5})
    assert data_cfg.kind == "data"
    assert sum(p.chosen.endswith(" cf") for p in poison_preferences(data_cfg, _prefs(10), rng=RNG(0))) == 5
    with pytest.raises(AttackError, match="poison_preferences"):
        malicious_updates(data_cfg, h, num_malicious=1, rng=RNG(0))
    with pytest.raises(AttackError, match="malicious_updates"):
        poison_preferences(cfg, _prefs(), rng=RNG(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "nope"}, "Unknown attack"),
        ({"name": "ipm", "fraction": 1.0}, r"\[0, 1\)"),
        ({"name": "ipm", "fraction": -0.1}, r"\[0, 1\)"),
        ({"name": "ipm", "params": {"eps": 1.0}}, "takes no parameter"),
        ({"name": "ipm", "params": {"rng": 1}}, "takes no parameter"),
        ({"name": "backdoor", "params": {"fraction": 0.5}}, "needs parameter"),
    ],
)
def test_attack_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(AttackError, match=match) as err:
        AttackConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(err.value, ConfigError)
