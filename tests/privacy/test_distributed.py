"""Distributed DP over secure groups: devices' noise shares, the server's check and accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrlhf.config import SecAggConfig, run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.privacy.distributed import add_noise_share, device_noise_std, noise_norm_bound
from fedrlhf.privacy.ledger import compose_epsilon

Z, C = 1.2, 0.5


@pytest.mark.parametrize(("group", "threshold", "survivors"), [(4, 3, 4), (4, 3, 3), (7, 4, 4), (7, 4, 6)])
def test_any_released_group_sum_carries_at_least_the_calibrated_noise(
    group: int, threshold: int, survivors: int
) -> None:
    """Each share is N(0, (zC)^2 / t); a released sum holds >= t of them (dropouts up to n - t)."""
    assert SecAggConfig(min_group_size=group).threshold_for(group) == threshold
    std = device_noise_std(noise_multiplier=Z, clip_norm=C, survivors=threshold)
    rng = np.random.default_rng(0)
    sums = sum(add_noise_share(np.zeros(20_000), std, rng) for _ in range(survivors))
    want = Z * C * math.sqrt(survivors / threshold)
    assert np.std(sums) == pytest.approx(want, rel=0.03)
    assert np.std(sums) >= Z * C * 0.97  # the guarantee: never below z * C


def test_shares_come_from_the_os_not_from_a_seed_the_server_chose() -> None:
    a, b = add_noise_share(np.zeros(8), 1.0), add_noise_share(np.zeros(8), 1.0)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(add_noise_share(np.ones(3), 0.0), np.ones(3, np.float32))


def test_the_device_payload_is_clipped_then_noised() -> None:
    from fedrlhf.federation.secure import secure_payload

    s = SecAggConfig(enabled=True, clip_norm=C, dp_noise_multiplier=Z)
    delta = {"w": np.full(50_000, 1.0, np.float32)}  # norm 223.6: clipped to C first
    std = device_noise_std(noise_multiplier=Z, clip_norm=C, survivors=3)
    update, _ = secure_payload(delta, ["w"], {}, s, std)
    clipped = np.full(50_000, C / math.sqrt(50_000), np.float32)
    assert np.std(update - clipped) == pytest.approx(std, rel=0.03)
    assert abs(float(np.mean(update - clipped))) < 5 * std / math.sqrt(50_000)
    plain, _ = secure_payload(delta, ["w"], {}, SecAggConfig(enabled=True, clip_norm=C))
    np.testing.assert_allclose(plain, clipped, rtol=1e-5)
    assert s.range == pytest.approx(C * (1 + 6 * Z))  # quantization leaves room for the noise


def test_the_server_accepts_noised_group_means_and_still_rejects_oversized_ones() -> None:
    from fedrlhf.federation.secure_server import _METRIC_CAPS, _checked_mean

    s = SecAggConfig(enabled=True, clip_norm=C, dp_noise_multiplier=Z, min_group_size=4)
    size, members = 4096, 4
    std = device_noise_std(noise_multiplier=Z, clip_norm=C, survivors=s.threshold_for(members))
    rng = np.random.default_rng(1)
    honest = [add_noise_share(np.full(size, C / math.sqrt(size)), std, rng) for _ in range(members)]
    metrics = np.zeros(2 * len(_METRIC_CAPS), np.float32)
    mean = np.mean(honest, axis=0)
    assert np.linalg.norm(mean) > C  # the noise alone is larger than any clipped update
    assert _checked_mean([mean, metrics], s, size, members, members, (Z, C)) is not None
    assert _checked_mean([mean, metrics], s, size, members, members) is None  # no noise allowed for
    bound = noise_norm_bound(noise_multiplier=Z, clip_norm=C, survivors=3, size=size, members=members)
    huge = mean * (bound + C) * 2 / np.linalg.norm(mean)
    assert _checked_mean([huge, metrics], s, size, members, members, (Z, C)) is None
    plain = SecAggConfig(enabled=True, clip_norm=C, min_group_size=4)
    assert _checked_mean([mean, metrics], plain, size, members, members) is None


def test_each_round_is_accounted_as_one_sampled_gaussian_step() -> None:
    from fedrlhf.federation.aggregate import account_distributed_dp
    from fedrlhf.federation.checkpoint import ServerState
    from fedrlhf.privacy.user_level import UserLevelAccountant

    cfg = run_config_from_dict(
        {
            "secagg": {"enabled": True, "dp_noise_multiplier": Z, "min_group_size": 4},
            "robust": {"rule": "mean"},
            "federation": {"clients_per_round": 8},
            "cohort": {"num_clients": 100},
        }
    )
    state = ServerState(round=0, global_state={}, rng={})
    for _ in range(5):
        account_distributed_dp(cfg, state, population=100)
    assert state.user_dp is not None
    eps = UserLevelAccountant.from_dict(state.user_dp).epsilon(1e-5)
    assert eps == pytest.approx(compose_epsilon([(Z, 0.08, 5)], accountant="rdp", delta=1e-5))
    assert 0 < eps < math.inf


def test_the_sampling_rate_counts_only_devices_that_exist() -> None:
    """100 users configured but 20 online: each is sampled at 8 / 20, and epsilon says so."""
    from fedrlhf.federation.aggregate import user_sampling_rate

    cfg = run_config_from_dict({"federation": {"clients_per_round": 8}, "cohort": {"num_clients": 100}})
    assert user_sampling_rate(cfg, 20) == pytest.approx(0.4)
    assert user_sampling_rate(cfg, 500) == pytest.approx(0.08)  # never more than the cohort
    assert user_sampling_rate(cfg) == pytest.approx(0.08)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"secagg": {"dp_noise_multiplier": 1.0}}, "set secagg.enabled = true"),
        (
            {
                "secagg": {"enabled": True, "dp_noise_multiplier": 1.0},
                "robust": {"rule": "mean"},
                "user_dp": {"enabled": True, "noise_multiplier": 1.0},
                "federation": {"clients_per_round": 8},
            },
            "turn user_dp or secagg off",
        ),
        ({"secagg": {"dp_noise_multiplier": -1.0}}, "dp_noise_multiplier"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_config_from_dict(settings)


RECORD = {"enabled": True, "record_dp": True, "min_group_size": 4, "clip_norm": 1.0, "clipping_range": 40.0}
PRIVATE = {"enabled": True, "target_epsilon": 8.0}


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"secagg": {"record_dp": True}, "privacy": PRIVATE}, "needs secagg.enabled = true"),
        ({"secagg": RECORD}, "needs privacy.enabled = true"),
        (
            {"secagg": {**RECORD, "dp_noise_multiplier": 1.0}, "privacy": PRIVATE},
            "secagg.dp_noise_multiplier = 0",
        ),
        ({"secagg": {**RECORD}, "privacy": PRIVATE, "federation": {"personal": True}}, "federation.personal"),
        ({"secagg": {**RECORD, "record_dp": 1}, "privacy": PRIVATE}, "record_dp must be true or false"),
        # room for clip_norm + 6 noise stds of a share: sigma(8, 10 rounds) * 1.0 / sqrt(3) ~ 1.2 each
        (
            {"secagg": {**RECORD, "clipping_range": 2.0}, "privacy": PRIVATE},
            r"set secagg.clipping_range >= \d",
        ),
    ],
)
def test_record_dp_refusals_name_the_setting(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_config_from_dict({"federation": {"rounds": 10, "clients_per_round": 8}, **settings})


def test_record_dp_sigma_is_opacus_search_for_the_rounds_or_the_given_one() -> None:
    from opacus.accountants.utils import get_noise_multiplier

    from fedrlhf.config import PrivacyConfig
    from fedrlhf.federation.secure import noise_parameters
    from fedrlhf.privacy.distributed import record_noise_multiplier

    want = get_noise_multiplier(
        target_epsilon=8.0, target_delta=1e-5, sample_rate=1.0, steps=10, accountant="rdp"
    )
    assert record_noise_multiplier(PrivacyConfig(enabled=True, target_epsilon=8.0), 10) == want
    assert record_noise_multiplier(PrivacyConfig(enabled=True, noise_multiplier=1.5), 10) == 1.5
    cfg = run_config_from_dict(
        {
            "federation": {"rounds": 10, "clients_per_round": 8},
            "secagg": RECORD,
            "privacy": {**PRIVATE, "max_grad_norm": 0.5},
        }
    )
    assert noise_parameters(cfg) == (want, 0.5)  # sigma scales the per-record clip, not secagg.clip_norm
    user = run_config_from_dict({"secagg": {"enabled": True, "dp_noise_multiplier": 1.0, "clip_norm": 2.0}})
    assert noise_parameters(user) == (1.0, 2.0) and noise_parameters(run_config_from_dict({})) == (0.0, 0.0)
