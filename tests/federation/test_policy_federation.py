"""Federated DPO / KTO in the server's real round loop (``run_server``), without Ray.

An in-process Grid stands in for the network only: every message goes through the production
ClientApp (:data:`fedrlhf.federation.client_app.app`) of a node whose ``device-dir`` is one
client directory of a tiny synthetic cohort, so the task dispatch, the device's DPO round and
the server's aggregation, evaluation, checkpoint and report are the code a run uses.  The
policy is a tiny causal LM built from a config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from safetensors.numpy import load_file

from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.federation.client_app import app
from fedrlhf.federation.server import run_server
from fedrlhf.models.policy import PolicyModel
from fedrlhf.simulation.report import write_report
from fedrlhf.simulation.run import prepare_cohort
from fedrlhf.training.dpo import policy_state
from tests.federation.test_server_round import _server_identity  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.filterwarnings(
    "ignore:DP-SGD runs with secure_mode=False",
    "ignore:.*Secure RNG turned off.*",
    "ignore:Full backward hook is firing",
    "ignore:Optimal order is the (largest|smallest) alpha",
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama"))


class _Nodes:
    """The network in-process: node 100 + i runs the ClientApp on ``clients/user-0000i``."""

    def __init__(self, cfg: RunConfig, *, crash_in_round: int = 0) -> None:
        clients = sorted(Path(cfg.federation.clients_dir).iterdir())
        self.dirs = {100 + i: d for i, d in enumerate(clients)}
        self.crash_in_round = crash_in_round

    def get_node_ids(self) -> list[int]:
        return list(self.dirs)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self._deliver(m) for m in messages]

    def _deliver(self, msg: Message) -> Message:
        config = msg.content.config_records["config"]
        if self.crash_in_round and int(config.get("round", 0)) == self.crash_in_round:
            raise RuntimeError(f"the server process dies in round {self.crash_in_round}")
        node = msg.metadata.dst_node_id
        metadata = Metadata(  # as a SuperNode delivers it: a server message with an id
            run_id=1,
            message_id=f"m-{node}",
            src_node_id=0,
            dst_node_id=node,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=600.0,
            message_type=msg.metadata.message_type,
        )
        context = Context(
            run_id=1,
            node_id=node,
            node_config={"device-dir": str(self.dirs[node])},
            state=RecordDict(),
            run_config={},
        )
        return app(Message(msg.content, metadata=metadata), context)  # type: ignore[call-overload]


def _config(tiny_lm: str, run_dir: Path, task: str = "dpo", **sections: dict[str, Any]) -> RunConfig:
    settings: dict[str, dict[str, Any]] = {
        "policy": {"model": tiny_lm, "lora_r": 2, "max_length": 48, "beta": 0.5},
        "train": {"batch_size": 4, "lr": 0.02},
        "privacy": {"enabled": True, "noise_multiplier": 1.0},  # a target epsilon costs a noise search
        "federation": {
            "task": task,
            "rounds": 2,
            "clients_per_round": 3,
            "seed": 1,
            "save_every_round": False,
        },
        "cohort": {"num_clients": 3, "pairs_per_user": 6, "test_pairs_per_user": 3},
    }
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return prepare_cohort(run_config_from_dict(settings), run_dir)[0]


def test_federated_dpo_with_dp_end_to_end(tiny_lm: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _config(tiny_lm, run)
    state = run_server(_Nodes(cfg), cfg, run)  # type: ignore[arg-type]
    report = write_report(run, cfg, state, {}, seconds=1.0)
    assert report["task"] == "dpo"
    assert report["initial"]["global_accuracy"] == 0.5  # round 0: the policy is its reference
    for row in report["rounds"]:
        assert row["clients_ok"] == 3 and row["failed"] == {}, row
        assert 0 <= row["global_accuracy"] <= 1 and 0 < row["epsilon"] < 100
        assert row["client_global_accuracy"] is not None  # the devices' own held-out pairs
    assert report["rounds"][0]["client_global_accuracy"] == 0.5  # they received the base policy
    assert report["federated_evaluation"]["clients"] == 3
    saved = load_file(str(run / "checkpoint" / "global.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    assert any(np.abs(saved[n]).max() > 0 for n in saved if "lora_B" in n), "the LoRA never moved"
    for device in (run / "clients").iterdir():  # each device's own ledger: one entry per round
        labels = [e["label"] for e in json.loads((device / "privacy_ledger.json").read_text())["entries"]]
        assert labels == ["round-1", "round-2"]
    policy = PolicyModel.from_pretrained(run / "model")
    loaded = policy_state(policy)
    assert all(np.array_equal(loaded[name], saved[name]) for name in saved)
    text = (run / "report.md").read_text()
    assert "with DPO on their preference pairs" in text and "implicit-reward accuracy" in text


def test_a_run_that_dies_resumes_to_the_same_policy(tiny_lm: str, tmp_path: Path) -> None:
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    cfg = _config(tiny_lm, straight_dir)
    run_server(_Nodes(cfg), cfg, straight_dir)  # type: ignore[arg-type]
    killed = _config(tiny_lm, killed_dir)
    with pytest.raises(RuntimeError, match="dies in round 2"):
        run_server(_Nodes(killed, crash_in_round=2), killed, killed_dir)  # type: ignore[arg-type]
    assert json.loads((killed_dir / "checkpoint" / "state.json").read_text())["round"] == 1
    resumed = run_server(_Nodes(killed), killed, killed_dir)  # type: ignore[arg-type]
    assert [r["round"] for r in resumed.history] == [0, 1, 2]
    a = load_file(str(straight_dir / "checkpoint" / "global.safetensors"))
    b = load_file(str(killed_dir / "checkpoint" / "global.safetensors"))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_federated_kto_trains_the_policy(tiny_lm: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    robust = {"rule": "coordinate_median"}  # the robust rules run on LoRA updates as on any other
    cfg = _config(
        tiny_lm, run, task="kto", privacy={"enabled": False}, federation={"rounds": 1}, robust=robust
    )
    state = run_server(_Nodes(cfg), cfg, run)  # type: ignore[arg-type]
    row = state.history[1]
    assert row["clients_ok"] == 3 and np.isfinite(row["train_loss"]) and row["epsilon"] is None
    assert any(np.abs(v).max() > 0 for n, v in state.global_state.items() if "lora_B" in n)
    assert not list((run / "clients").glob("*/privacy_ledger.json"))  # no DP, no device policy
    report = write_report(run, cfg, state, {}, seconds=1.0)
    assert (
        report["task"] == "kto" and "with KTO on thumbs up / down ratings" in (run / "report.md").read_text()
    )
