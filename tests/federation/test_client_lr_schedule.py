"""The devices' learning rate over the rounds (``federation.client_lr_schedule``)."""

from __future__ import annotations

from typing import Any

import pytest

from fedrlhf.config import FederationConfig, client_lr_scale, run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.federation.node import train_device
from fedrlhf.training.device import RoundSpec


def test_constant_keeps_the_lr_every_round() -> None:
    fed = FederationConfig(rounds=10)
    assert [client_lr_scale(fed, r) for r in range(1, 11)] == [1.0] * 10


def test_cosine_goes_from_the_lr_to_its_final_fraction() -> None:
    fed = FederationConfig(rounds=10, client_lr_schedule="cosine", client_lr_final=0.1)
    scales = [client_lr_scale(fed, r) for r in range(1, 11)]
    assert scales[0] == pytest.approx(1.0)
    assert scales[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(scales, scales[1:], strict=False))
    middle = FederationConfig(rounds=3, client_lr_schedule="cosine", client_lr_final=0.2)
    assert client_lr_scale(middle, 2) == pytest.approx(0.6)  # halfway: the mean of 1 and 0.2


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"client_lr_schedule": "linear"}, "federation.client_lr_schedule"),
        ({"client_lr_final": 0.0}, "federation.client_lr_final"),
        ({"client_lr_final": 1.5}, "federation.client_lr_final"),
    ],
)
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        run_config_from_dict({"federation": settings})


@pytest.mark.parametrize(
    ("schedule", "round_", "lr"), [("constant", 4, 0.01), ("cosine", 1, 0.01), ("cosine", 4, 0.001)]
)
def test_the_device_trains_with_the_rounds_lr(
    monkeypatch: pytest.MonkeyPatch, schedule: str, round_: int, lr: float
) -> None:
    seen: dict[str, float] = {}

    def fake_round(device: object, state: object, spec: object, **kwargs: Any) -> tuple[dict, dict]:
        seen["lr"] = kwargs["train_cfg"].lr
        return {}, {}

    monkeypatch.setattr("fedrlhf.training.device.client_round", fake_round)
    cfg = run_config_from_dict(
        {
            "train": {"lr": 0.01},
            "federation": {"rounds": 4, "client_lr_schedule": schedule, "client_lr_final": 0.1},
        }
    )
    train_device(cfg, None, {}, RoundSpec(round=round_, seed=0, local_epochs=1.0))  # type: ignore[arg-type]
    assert seen["lr"] == pytest.approx(lr)
