"""Every ready-made run config in simulations/ loads and is described in simulations/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrlhf.config import load_run_config
from fedrlhf.privacy.user_level import UserLevelAccountant

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"
CONFIGS = sorted(SIMULATIONS.glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_is_documented(path: Path) -> None:
    load_run_config(path)
    assert path.name in (SIMULATIONS / "README.md").read_text(), (
        f"simulations/README.md says nothing of {path.name}"
    )


def test_scale_10k_spends_at_most_epsilon_3_per_user() -> None:
    cfg = load_run_config(SIMULATIONS / "scale-10k.toml")
    assert (
        cfg.user_dp.enabled and cfg.cohort.num_clients == 10_000 and cfg.federation.clients_per_round == 100
    )
    acct = UserLevelAccountant()
    for _ in range(cfg.federation.rounds):
        acct.step(noise_multiplier=cfg.user_dp.noise_multiplier, sample_rate=100 / 10_000)
    assert acct.epsilon(cfg.user_dp.delta) <= 3.0
