"""The server optimiser in the real round loop: its step, its state in the checkpoint, a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrlhf.aggregation.server_opt import ServerOptimizer
from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.federation.aggregate import server_optimizer
from fedrlhf.federation.checkpoint import load_checkpoint, save_checkpoint
from fedrlhf.federation.server import run_round
from tests.federation.test_server_round import (
    DEVICES,
    NODES,
    _flat,
    _honest_mean,
    _LoopbackGrid,
    _server_identity,  # noqa: F401  (autouse fixture)
    _state,
    honest,
)


def _cfg(**federation: Any) -> RunConfig:
    return run_config_from_dict(
        {
            "federation": {"clients_per_round": len(DEVICES), "rounds": 5, **federation},
            "robust": {"max_norm_ratio": 0.0},
        }
    )


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi"])
def test_each_round_takes_the_optimiser_step_on_the_mean(kind: str) -> None:
    cfg = _cfg(server_optimizer=kind, server_lr=0.05)
    state, grid = _state(), _LoopbackGrid(honest, NODES)
    expected, opt_state = _flat(state.global_state), {}
    opt = ServerOptimizer(kind=kind, lr=0.05)
    for round_ in (1, 2, 3):
        run_round(grid, cfg, state, NODES)  # type: ignore[arg-type]
        mean = _honest_mean(DEVICES, round_).astype(np.float32)
        expected, opt_state = opt.step(expected, mean, opt_state, round_)
        np.testing.assert_allclose(_flat(state.global_state), expected, rtol=1e-6, atol=1e-7)
    assert set(state.server_opt) == ({"v"} if kind == "fedavgm" else {"m", "v"})


def test_default_learning_rates_follow_the_optimiser() -> None:
    assert server_optimizer(_cfg()).lr == 1.0
    assert server_optimizer(_cfg(server_optimizer="fedadam")).lr == 0.01
    assert server_optimizer(_cfg(server_optimizer="fedadam", server_lr=0.3)).lr == 0.3


def test_resume_from_the_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    cfg = _cfg(server_optimizer="fedadam", server_lr=0.05)
    grid = _LoopbackGrid(honest, NODES)
    straight = _state()
    for _ in range(3):
        run_round(grid, cfg, straight, NODES)  # type: ignore[arg-type]
    resumed = _state()
    run_round(grid, cfg, resumed, NODES)  # type: ignore[arg-type]
    save_checkpoint(tmp_path, resumed, cfg)
    loaded = load_checkpoint(tmp_path, cfg)
    assert loaded is not None and set(loaded.server_opt) == {"m", "v"}
    for _ in range(2):
        run_round(grid, cfg, loaded, NODES)  # type: ignore[arg-type]
    np.testing.assert_array_equal(_flat(loaded.global_state), _flat(straight.global_state))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("server_optimizer", "sgd", "server_optimizer must be one of"),
        ("server_momentum", 1.0, "server_momentum must be in"),
        ("server_lr", -1.0, "server_lr"),
        ("server_tau", 0.0, "server_tau"),
    ],
)
def test_bad_settings_are_config_errors(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**{key: value})


def test_warm_start_begins_from_a_saved_model_and_refuses_another_layout(
    tiny_bert: str, tmp_path: Path
) -> None:
    import torch

    from fedrlhf.config import ModelConfig
    from fedrlhf.federation.initial import initial_state
    from fedrlhf.models import RewardModel
    from fedrlhf.models.state import get_trainable_state

    model_cfg = ModelConfig(backbone=tiny_bert, max_length=32, lora_r=2)
    saved = RewardModel.build(model_cfg, seed=3)
    with torch.no_grad():
        saved.head.weight.fill_(0.25)  # a state no fresh model has
    saved.save_pretrained(tmp_path / "warm")
    model = {"backbone": tiny_bert, "max_length": 48, "lora_r": 2}  # max_length holds no weights
    cfg = run_config_from_dict({"model": model, "federation": {"initial_model": str(tmp_path / "warm")}})
    state = initial_state(cfg).global_state
    want = get_trainable_state(saved)
    assert set(state) == set(want)
    for name in want:
        np.testing.assert_array_equal(state[name], want[name])
    other = run_config_from_dict(
        {"model": {**model, "lora_r": 4}, "federation": {"initial_model": str(tmp_path / "warm")}}
    )
    with pytest.raises(ConfigError, match="lora_r"):
        initial_state(other)


def test_centered_clipping_centre_is_the_last_aggregate_and_survives_a_resume(tmp_path: Path) -> None:
    cfg = run_config_from_dict(
        {
            "federation": {"clients_per_round": len(DEVICES), "rounds": 5},
            "robust": {"rule": "centered_clipping", "num_malicious": 1, "max_norm_ratio": 0.0},
        }
    )
    grid = _LoopbackGrid(honest, NODES)
    state = _state()
    assert state.robust_center is None
    before = _flat(state.global_state)
    run_round(grid, cfg, state, NODES)  # type: ignore[arg-type]
    assert state.robust_center is not None
    np.testing.assert_allclose(state.robust_center, _flat(state.global_state) - before, atol=1e-7)
    save_checkpoint(tmp_path, state, cfg)
    loaded = load_checkpoint(tmp_path, cfg)
    assert loaded is not None and loaded.robust_center is not None
    np.testing.assert_array_equal(loaded.robust_center, state.robust_center)
