"""The server's public warm start in its real round loop (``run_server``), without Ray.

An in-process Grid stands in for the network only: each node is a device directory of a tiny
synthetic cohort that trains with the production device round (:func:`client_round`), as the
ClientApp does. The warm start must be the first global model, trained once per run: a run that
dies in round 1 resumes from the round-0 checkpoint without its public data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.federation.checkpoint import load_checkpoint
from fedrlhf.federation.initial import initial_state
from fedrlhf.federation.payload import from_array_record, to_array_record
from fedrlhf.federation.server import run_server
from fedrlhf.feedback import write_jsonl
from fedrlhf.models import RewardModel
from fedrlhf.models.state import get_trainable_state
from fedrlhf.simulation.report import write_report
from fedrlhf.simulation.run import prepare_cohort
from fedrlhf.training.device import DeviceDir, RoundSpec, client_evaluate, client_round
from fedrlhf.training.warm_start import PRIVACY_NOTE, warm_start
from tests.federation.test_server_round import _server_identity  # noqa: F401  (autouse fixture)
from tests.helpers import synthetic_pairs


class _Cohort:
    """The network in-process: node 100 + i is device directory ``clients/user-0000i``."""

    def __init__(self, cfg: RunConfig, *, crash_in_round: int = 0) -> None:
        clients = Path(cfg.federation.clients_dir)
        self.cfg, self.crash_in_round = cfg, crash_in_round
        self.devices = {100 + i: DeviceDir(d) for i, d in enumerate(sorted(clients.iterdir()))}
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # round -> the global model sent for it

    def get_node_ids(self) -> list[int]:
        return list(self.devices)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self._answer(m, self.devices[m.metadata.dst_node_id]) for m in messages]

    def _answer(self, msg: Message, device: DeviceDir) -> Message:
        name = ConfigRecord({"device-id": device.root.name})
        if msg.metadata.message_type == MessageType.QUERY:
            return Message(RecordDict({"config": name}), reply_to=msg)
        config = msg.content.config_records["config"]
        global_state = from_array_record(msg.content.array_records["arrays"])
        if msg.metadata.message_type == MessageType.EVALUATE:
            metrics = client_evaluate(device, global_state, model_cfg=self.cfg.model)
            return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
        round_ = int(config["round"])
        if round_ == self.crash_in_round:
            raise RuntimeError(f"the server process dies in round {round_}")
        self.sent.setdefault(round_, global_state)
        spec = RoundSpec(round=round_, seed=int(config["client-seed"]), local_epochs=1.0)
        delta, metrics = client_round(
            device,
            global_state,
            spec,
            model_cfg=self.cfg.model,
            train_cfg=self.cfg.train,
            privacy=self.cfg.privacy,
        )
        content = {"arrays": to_array_record(delta), "metrics": MetricRecord(metrics), "config": name}
        return Message(RecordDict(content), reply_to=msg)


def _config(tiny_bert: str, public: Path, run_dir: Path, **model: object) -> RunConfig:
    cfg = run_config_from_dict(
        {
            "model": {"backbone": tiny_bert, "max_length": 32, "lora_r": 2, **model},
            "train": {"batch_size": 8, "lr": 0.01},
            "federation": {"rounds": 2, "clients_per_round": 3, "seed": 2, "save_every_round": False},
            "cohort": {"num_clients": 3, "pairs_per_user": 8, "test_pairs_per_user": 4},
            "warm_start": {"data": str(public), "epochs": 2.0, "batch_size": 8, "lr": 0.01, "holdout": 0.25},
        }
    )
    return prepare_cohort(cfg, run_dir)[0]


@pytest.fixture()
def public(tmp_path: Path) -> Path:
    path = tmp_path / "public" / "pairs.jsonl"
    write_jsonl(path, synthetic_pairs(40, seed=11))
    return path


def test_the_first_global_model_is_the_warm_start(tiny_bert: str, public: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_bert, public, tmp_path / "run")
    grid = _Cohort(cfg)
    state = run_server(grid, cfg, tmp_path / "run")  # type: ignore[arg-type]
    want = warm_start(cfg.warm_start, cfg.model)  # the central trainer, same settings and seed
    untrained = initial_state(run_config_from_dict({"model": cfg.to_dict()["model"]})).global_state
    assert set(grid.sent[1]) == set(want.state) == set(untrained)
    for name, value in want.state.items():
        np.testing.assert_array_equal(grid.sent[1][name], value, err_msg=name)
    assert any(not np.array_equal(want.state[n], untrained[n]) for n in untrained), "nothing trained"
    saved = get_trainable_state(RewardModel.from_pretrained(tmp_path / "run" / "warm_start"))
    for name, value in want.state.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    zero = state.history[0]
    assert zero["round"] == 0 and 0 <= zero["global_accuracy"] <= 1  # round 0: the warm start, evaluated
    record = zero["warm_start"]
    assert (record["pairs"], record["held_out_pairs"], record["privacy"]) == (30, 10, PRIVACY_NOTE)
    assert record["accuracy"] == want.record["accuracy"] and record["model"] == "warm_start"


def test_head_only_model_warm_starts_the_head(tiny_bert: str, public: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_bert, public, tmp_path / "run", trainable="head", pool_layers=2)
    grid = _Cohort(cfg)
    run_server(grid, cfg, tmp_path / "run")  # type: ignore[arg-type]
    want = warm_start(cfg.warm_start, cfg.model).state
    assert set(grid.sent[1]) == {"head.bias", "head.weight"}
    for name, value in want.items():
        np.testing.assert_array_equal(grid.sent[1][name], value, err_msg=name)


def test_a_resumed_run_never_trains_the_warm_start_again(
    tiny_bert: str, public: Path, tmp_path: Path
) -> None:
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = run_server(_Cohort(cfg := _config(tiny_bert, public, straight_dir)), cfg, straight_dir)  # type: ignore[arg-type]
    killed_cfg = _config(tiny_bert, public, killed_dir)
    with pytest.raises(RuntimeError, match="dies in round 1"):
        run_server(_Cohort(killed_cfg, crash_in_round=1), killed_cfg, killed_dir)  # type: ignore[arg-type]
    checkpoint = load_checkpoint(killed_dir, killed_cfg)
    assert checkpoint is not None and checkpoint.round == 0  # the warm start is in the checkpoint
    trained = checkpoint.history[0]["warm_start"]
    public.unlink()  # training it again would now fail
    grid = _Cohort(killed_cfg)
    resumed = run_server(grid, killed_cfg, killed_dir)  # type: ignore[arg-type]
    assert resumed.history[0]["warm_start"] == trained  # the same record, seconds included
    assert [r["round"] for r in resumed.history] == [0, 1, 2]
    for name, value in straight.global_state.items():  # bit-identical to the run that never died
        np.testing.assert_array_equal(resumed.global_state[name], value, err_msg=name)

    report = write_report(killed_dir, killed_cfg, resumed, {}, seconds=1.0)
    assert report["warm_start"] == trained and "warm_start" not in report["initial"]
    assert json.loads((killed_dir / "report.json").read_text())["warm_start"]["privacy"] == PRIVACY_NOTE
    md = (killed_dir / "report.md").read_text()
    assert "Before round 1 the server trained the global model on 30 public pairs (pairs.jsonl" in md
    assert "without differential privacy: public data, trained by the server" in md
    assert "| Public warm start (not private), held-out public pairs |" in md
    assert "| Global model after the public warm start, before round 1, server's held-out pairs |" in md


def test_a_run_without_warm_start_keeps_no_round_zero_checkpoint(tiny_bert: str, tmp_path: Path) -> None:
    cfg = run_config_from_dict({"model": {"backbone": tiny_bert, "max_length": 32, "lora_r": 2}})
    state = initial_state(cfg, tmp_path)
    assert state.history == [] and not (tmp_path / "warm_start").exists()
