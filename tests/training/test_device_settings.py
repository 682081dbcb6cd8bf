"""A device set up for one backbone and max_length refuses rounds at others, naming both (issue 28).

``fedrlhf-client init --max-length`` must match the federation's ``model.max_length``; a round
that asks for another one fails on the device, before any work, with an error the operator's
report shows, rather than the device silently training at the server's length.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel, get_trainable_state
from fedrlhf.training.device import DeviceDir, RoundSpec, check_device_settings, client_evaluate, client_round
from tests.helpers import synthetic_pairs


def _device(root: Path, **settings: object) -> DeviceDir:
    write_jsonl(root / "train.jsonl", synthetic_pairs(16, seed=1))
    write_jsonl(root / "test.jsonl", synthetic_pairs(8, seed=2))
    (root / "client.json").write_text(
        json.dumps({"backbone": "minilm", "lifetime_epsilon": "none", **settings})
    )
    return DeviceDir(root)


def test_a_round_at_another_max_length_is_refused_before_any_work(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", backbone=tiny_bert, max_length=128)
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    state = get_trainable_state(RewardModel.build(cfg, seed=0))
    spec = RoundSpec(round=1, seed=0, local_epochs=1)
    message = r"max_length 128, the federation's model.max_length is 32; .* set max_length in .*client.json"
    with pytest.raises(ConfigError, match=message):
        client_round(device, state, spec, model_cfg=cfg, train_cfg=TrainConfig(), privacy=PrivacyConfig())
    with pytest.raises(ConfigError, match=message):
        client_evaluate(device, state, model_cfg=cfg)
    assert not (device.root / "cache").exists() and not device.ledger.exists()  # nothing was done


def test_the_same_max_length_trains(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", backbone=tiny_bert, max_length=32)
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    state = get_trainable_state(RewardModel.build(cfg, seed=0))
    spec = RoundSpec(round=1, seed=0, local_epochs=1, evaluate=False)
    _, metrics = client_round(
        device, state, spec, model_cfg=cfg, train_cfg=TrainConfig(), privacy=PrivacyConfig()
    )
    assert metrics["num-examples"] == 16


def test_devices_without_a_stated_length_take_the_federations(tmp_path: Path) -> None:
    cfg = ModelConfig(max_length=48)
    check_device_settings(DeviceDir(tmp_path), cfg)  # a simulated device: no client.json
    (tmp_path / "client.json").write_text(json.dumps({"lifetime_epsilon": 8}))  # policy only
    check_device_settings(DeviceDir(tmp_path), cfg)
    (tmp_path / "client.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"client.json is not readable client settings"):
        check_device_settings(DeviceDir(tmp_path), cfg)


def test_the_clientapp_refuses_the_round_naming_both_values(tiny_bert: str, tmp_path: Path) -> None:
    """What the operator's report shows for the device: the ClientApp's settings refusal (code
    1002) in :func:`error_reason`'s words (cut to 300 characters)."""
    from fedrlhf.federation.client_app import SETTINGS_REFUSED
    from fedrlhf.federation.devices import error_reason
    from tests.federation.test_device_policy import _train

    device = _device(tmp_path / "dev", backbone=tiny_bert, max_length=128)
    reply = _train(tiny_bert, device.root, enabled=False)  # the round's model.max_length is 32
    assert reply.has_error() and reply.error.code == SETTINGS_REFUSED
    shown = error_reason(reply.error.code, reply.error.reason)
    assert shown.startswith("refused: the round's settings do not match the device's: "), shown
    assert "max_length 128" in shown and "model.max_length is 32" in shown, shown


def test_a_round_on_another_backbone_is_refused_before_any_work(tiny_bert: str, tmp_path: Path) -> None:
    """A server may not swap the encoder a device runs (and its personal adapter was trained on)."""
    device = _device(tmp_path / "dev", backbone="minilm", max_length=32)
    cfg = ModelConfig(backbone=tiny_bert, max_length=32)
    state = get_trainable_state(RewardModel.build(cfg, seed=0))
    spec = RoundSpec(round=1, seed=0, local_epochs=1)
    message = r"backbone 'minilm', the federation's model.backbone is '.*bert'; .* set backbone in .*json"
    with pytest.raises(ConfigError, match=message):
        client_round(device, state, spec, model_cfg=cfg, train_cfg=TrainConfig(), privacy=PrivacyConfig())
    with pytest.raises(ConfigError, match=message):
        client_evaluate(device, state, model_cfg=cfg)
    assert not (device.root / "cache").exists() and not device.ledger.exists()  # nothing was done


def test_backbones_compare_after_aliases_and_paths_resolve(tmp_path: Path) -> None:
    from fedrlhf.models.backbone import resolve_backbone

    device = _device(tmp_path / "dev", backbone="minilm", max_length=64)
    check_device_settings(device, ModelConfig(backbone="minilm", max_length=64))
    installed = resolve_backbone("minilm")
    check_device_settings(device, ModelConfig(backbone=installed, max_length=64))  # alias == its directory
    check_device_settings(device, ModelConfig(backbone=installed + "/", max_length=64))  # same real path
    (tmp_path / "link").symlink_to(installed)
    check_device_settings(device, ModelConfig(backbone=str(tmp_path / "link"), max_length=64))
    with pytest.raises(ConfigError, match="backbone mismatch"):
        check_device_settings(device, ModelConfig(backbone="bert-base-uncased", max_length=64))
