"""User-level DP at the server (DP-FedAvg), fixed and adaptive clipping, on the real server code path."""

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.federation.aggregate import aggregate_updates
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.privacy.user_level import UserLevelAccountant


def _cfg(**user_dp):
    return run_config_from_dict(
        {
            "federation": {"clients_per_round": 4},
            "cohort": {"num_clients": 40},
            "user_dp": {"enabled": True, **user_dp},
        }
    )


def _state() -> ServerState:
    return ServerState(round=0, global_state={}, rng={})


def test_noise_free_dp_fedavg_is_the_mean_of_clipped_updates() -> None:
    cfg, state = _cfg(clip_norm=1.0, noise_multiplier=0.0), _state()
    updates = [
        np.full(8, 10.0, np.float32),
        np.zeros(8, np.float32),
        np.full(8, 0.01, np.float32),
        np.full(8, -10.0, np.float32),
    ]
    out = aggregate_updates(updates, cfg, state, [], np.random.default_rng(0))
    clipped = [u * min(1.0, 1.0 / max(np.linalg.norm(u), 1e-12)) for u in updates]
    np.testing.assert_allclose(out, np.mean(clipped, axis=0), rtol=1e-5, atol=1e-7)


def test_noise_has_the_calibrated_std_and_epsilon_is_accounted() -> None:
    cfg, state = _cfg(clip_norm=0.5, noise_multiplier=1.2), _state()
    updates = [np.zeros(50_000, np.float32)] * 4
    for _ in range(3):
        out = aggregate_updates(updates, cfg, state, [], np.random.default_rng(1))
    assert abs(out.std() / (1.2 * 0.5 / 4) - 1) < 0.03
    ref = RDPAccountant()
    for _ in range(3):
        ref.step(noise_multiplier=1.2, sample_rate=0.1)
    assert UserLevelAccountant.from_dict(state.user_dp).epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5))


def test_adaptive_clipping_moves_the_bound_towards_the_quantile() -> None:
    big, small = [np.full(16, 5.0, np.float32)] * 4, [np.full(16, 1e-3, np.float32)] * 4
    for updates, direction in ((big, 1), (small, -1)):
        cfg, state = _cfg(clip_norm=1.0, noise_multiplier=1.0, adaptive=True, count_noise=1.0), _state()
        aggregate_updates(updates, cfg, state, [], np.random.default_rng(2))
        assert np.sign(state.user_dp["clip_norm"] - 1.0) == direction


def test_adaptive_clipping_needs_enough_count_noise() -> None:
    with pytest.raises(ConfigError, match="count_noise"):
        _cfg(noise_multiplier=1.0, adaptive=True)  # default count noise 4/20 = 0.2 < z/2
