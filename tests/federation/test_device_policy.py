"""The device's own privacy policy (client.json) binds every round the ClientApp is asked to train."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, MessageType, Metadata, RecordDict

from fedrlhf.config import ModelConfig, run_config_from_dict
from fedrlhf.federation.client_app import PRIVACY_REFUSED, SETTINGS_REFUSED, app
from fedrlhf.federation.payload import run_config_record, to_array_record
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel, get_trainable_state
from fedrlhf.privacy.ledger import PrivacyLedger
from tests.helpers import synthetic_pairs

pytestmark = pytest.mark.filterwarnings(
    "ignore:DP-SGD runs with secure_mode=False",
    "ignore:.*Secure RNG turned off.*",
    "ignore:Full backward hook is firing",
    "ignore:Optimal order is the (largest|smallest) alpha",
)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDRLHF_CLIENT_THREADS", str(torch.get_num_threads()))


def _device(root: Path, lifetime: Any) -> Path:
    write_jsonl(root / "train.jsonl", synthetic_pairs(16, seed=1))
    settings = {"max_length": 32, "key": "keyfile"}  # = the rounds' model.max_length (backbone: theirs)
    (root / "client.json").write_text(
        json.dumps({**settings, "lifetime_epsilon": lifetime, "delta": 1e-5, "accountant": "rdp"})
    )
    return root


def _train(backbone: str, device: Path, max_length: int = 32, **privacy: Any) -> Message:
    """Send one train message, as the server builds it, through the ClientApp."""
    cfg = run_config_from_dict(
        {
            "model.backbone": backbone,
            "model.max_length": max_length,
            "train.batch_size": 8,
            **{f"privacy.{k}": v for k, v in privacy.items()},
        }
    )
    state = get_trainable_state(RewardModel.build(ModelConfig(backbone=backbone, max_length=32), seed=0))
    config = run_config_record(cfg, **{"round": 1, "client-seed": 3, "evaluate": False})
    metadata = Metadata(  # as the SuperNode delivers it: a server message with an id
        run_id=1,
        message_id="m-1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=MessageType.TRAIN,
    )
    msg = Message(RecordDict({"arrays": to_array_record(state), "config": config}), metadata=metadata)
    context = Context(
        run_id=1, node_id=1, node_config={"device-dir": str(device)}, state=RecordDict(), run_config={}
    )
    return app(msg, context)


def test_a_device_with_a_budget_refuses_a_round_without_dp(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", 1.0)
    reply = _train(tiny_bert, device, enabled=False)
    assert reply.has_error() and reply.error.code == PRIVACY_REFUSED
    assert "requires differential privacy" in reply.error.reason and "client.json" in reply.error.reason
    assert not (device / "privacy_ledger.json").exists()


def test_the_devices_budget_binds_whatever_the_server_asks(tiny_bert: str, tmp_path: Path) -> None:
    """The server asks for target epsilon 20 with its own budget 50: the device's 1.0 decides."""
    device = _device(tmp_path / "dev", 1.0)
    reply = _train(tiny_bert, device, enabled=True, target_epsilon=20.0, lifetime_epsilon=50.0)
    assert reply.has_error() and reply.error.code == PRIVACY_REFUSED
    assert "lifetime budget 1" in reply.error.reason
    assert (
        not (device / "privacy_ledger.json").exists()
        or PrivacyLedger.open(device / "privacy_ledger.json", lifetime_epsilon=None).history() == []
    )


def test_a_round_at_another_max_length_is_a_settings_refusal(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", 8.0)
    reply = _train(tiny_bert, device, max_length=24, enabled=True, target_epsilon=1.0)
    assert reply.has_error() and reply.error.code == SETTINGS_REFUSED
    assert "max_length" in reply.error.reason and "32" in reply.error.reason and "24" in reply.error.reason
    assert not (device / "privacy_ledger.json").exists()  # refused before any work


def test_a_zero_budget_refuses_every_round(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", 0)
    reply = _train(tiny_bert, device, enabled=True, noise_multiplier=100.0)
    assert reply.has_error() and "allows no privacy spending" in reply.error.reason


def test_the_devices_delta_and_accountant_are_the_ledgers(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", 30.0)
    reply = _train(tiny_bert, device, enabled=True, noise_multiplier=1.0, delta=1e-6, accountant="prv")
    assert not reply.has_error()
    ledger = json.loads((device / "privacy_ledger.json").read_text())
    assert (ledger["accountant"], ledger["delta"], len(ledger["entries"])) == ("rdp", 1e-5, 1)
    spent = PrivacyLedger.open(device / "privacy_ledger.json", lifetime_epsilon=None).spent()
    assert reply.content.metric_records["metrics"]["epsilon"] == pytest.approx(spent)


def test_a_legacy_null_budget_is_refused_naming_the_file(tiny_bert: str, tmp_path: Path) -> None:
    device = _device(tmp_path / "dev", None)
    reply = _train(tiny_bert, device, enabled=True, noise_multiplier=1.0)
    assert reply.has_error() and reply.error.code == SETTINGS_REFUSED  # an answer, not a crashed ClientApp
    assert re.search(r"client.json: lifetime_epsilon .* got null \(older versions", reply.error.reason)
