"""The simulation's ClientApp mods: seeded dropouts and stragglers, coalition forgery before masking.

No Flower run and no training here: the mods are called as Flower calls them, with a
``call_next`` that records the call; the coalition's honest updates are in its cache.
The end-to-end runs are in tests/federation/test_secure.py and tests/simulation/test_simulate.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.federation.payload import run_config_record
from fedrlhf.federation.secure import PARAM_NAMES_KEY, decode_metrics
from fedrlhf.simulation.client_app import coalition_forgery, drops, simulated_failures

DEVICES = [f"user-{i:05d}" for i in range(40)]
LAYOUT = {"a": (2, 3), "b": (4,)}


def _cfg(**flat: Any) -> RunConfig:
    return run_config_from_dict({"cohort.num_clients": 40, "federation.clients_per_round": 8, **flat})


def _received(content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    """A message as the SuperNode delivers it: from the server, with an id."""
    metadata = Metadata(
        run_id=1,
        message_id="m-1",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    return Message(content, metadata=metadata)  # type: ignore[call-overload]  # Flower's own form


def _extras(tmp_path: Path, round_: int) -> dict[str, Any]:
    return {"round": round_, "client-seed": 1, "clients-dir": str(tmp_path), "evaluate": False}


def _plain(cfg: RunConfig, tmp_path: Path, round_: int) -> Message:
    config = run_config_record(cfg, **_extras(tmp_path, round_))
    return _received(RecordDict({"config": config}))


def _collect_stage(cfg: RunConfig, tmp_path: Path, round_: int, arrays: list[np.ndarray]) -> Message:
    """SecAgg+'s collect-masked-vectors stage message: the FitIns plus the stage's configs."""
    config = {**cfg.to_flat(), **_extras(tmp_path, round_), PARAM_NAMES_KEY: ",".join(LAYOUT)}
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), config), True)
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS})
    return _received(content)


def _context(device: str) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": int(device[-5:])},
        state=RecordDict(),
        run_config={},
    )


class _Next:
    """A ``call_next`` that records that it ran and replies with an empty message."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, msg: Message, context: Context) -> Message:
        self.calls += 1
        return Message(RecordDict(), reply_to=msg)


def test_drops_are_seeded_per_round_device_and_kind() -> None:
    draw = [drops(7, 1, d, 0.3) for d in DEVICES * 25]  # the same 40 devices, 25 times
    assert draw == [drops(7, 1, d, 0.3) for d in DEVICES] * 25  # a rerun drops the same devices
    share = np.mean([drops(7, r, d, 0.3) for r in range(1, 51) for d in DEVICES])
    assert abs(share - 0.3) < 0.03  # 2,000 draws: the configured share, within 4 standard errors
    assert [drops(7, 2, d, 0.3) for d in DEVICES] != [drops(7, 1, d, 0.3) for d in DEVICES]
    assert [drops(7, 1, d, 0.3, "straggler") for d in DEVICES] != draw[:40]
    assert not any(drops(7, r, d, 0.0) for r in range(1, 5) for d in DEVICES)


@pytest.mark.parametrize("secure", [False, True])
def test_dropped_devices_fail_their_training_round(tmp_path: Path, secure: bool) -> None:
    cfg = _cfg(**{"federation.dropout": 0.5, "federation.seed": 3})
    outcomes = {}
    for device in DEVICES[:12]:
        msg = (
            _collect_stage(cfg, tmp_path, 2, [np.zeros(s, np.float32) for s in LAYOUT.values()])
            if secure
            else _plain(cfg, tmp_path, 2)
        )
        call_next = _Next()
        try:
            simulated_failures(msg, _context(device), call_next)
            dropped = False
        except RuntimeError as exc:
            assert str(exc) == f"simulated dropout of {device} in round 2"
            dropped = True
        assert call_next.calls == (0 if dropped else 1)  # a dropped device never trains
        outcomes[device] = dropped
    assert outcomes == {d: drops(3, 2, d, 0.5) for d in DEVICES[:12]}
    assert 0 < sum(outcomes.values()) < 12


def test_messages_that_do_not_train_pass_through(tmp_path: Path) -> None:
    """SecAgg+'s other stages and queries never fail, whatever the dropout share."""
    cfg = _cfg(**{"federation.dropout": 0.99})
    setup = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.SETUP})})
    query = RecordDict({"config": run_config_record(cfg, **_extras(tmp_path, 1))})
    for content, kind in ((setup, MessageType.TRAIN), (query, MessageType.QUERY)):
        for device in DEVICES[:5]:
            call_next = _Next()
            simulated_failures(_received(content, kind), _context(device), call_next)
            assert call_next.calls == 1


def test_stragglers_wait_before_training(tmp_path: Path) -> None:
    cfg = _cfg(**{"federation.stragglers": 0.5, "federation.straggler_delay": 0.3})
    slow = [d for d in DEVICES[:8] if drops(cfg.federation.seed, 1, d, 0.5, "straggler")]
    assert 0 < len(slow) < 8
    for device in DEVICES[:8]:
        start, call_next = time.perf_counter(), _Next()
        simulated_failures(_plain(cfg, tmp_path, 1), _context(device), call_next)
        assert call_next.calls == 1
        assert (time.perf_counter() - start >= 0.3) == (device in slow)


def _coalition(tmp_path: Path, members: list[str]) -> dict[str, np.ndarray]:
    """Mark ``members`` as a coalition (as poison_cohort does) and cache each one's honest update."""
    size = sum(int(np.prod(s)) for s in LAYOUT.values())
    cache = tmp_path / ".coalition" / "round-00001"
    cache.mkdir(parents=True)
    honest = {}
    for i, member in enumerate(members):
        (tmp_path / member).mkdir()
        (tmp_path / member / "meta.json").write_text(json.dumps({"coalition": members}))
        honest[member] = np.random.default_rng(i).normal(size=size).astype(np.float32)
        np.savez(cache / f"{member}.npz", update=honest[member], train_loss=np.float64(0.5 + i))
    return honest


def test_a_coalition_member_masks_its_forged_update_instead_of_training(tmp_path: Path) -> None:
    cfg = _cfg(
        **{
            "secagg.enabled": True,
            "secagg.min_group_size": 4,
            "robust.rule": "coordinate_median",
            "attack.name": "sign_flip",
            "attack.params": "scale=3.0",
            "attack.fraction": 0.1,
        }
    )
    members = DEVICES[:2]
    honest = _coalition(tmp_path, members)
    arrays = [np.zeros(s, np.float32) for s in LAYOUT.values()]
    for i, member in enumerate(members):
        call_next = _Next()
        reply = coalition_forgery(_collect_stage(cfg, tmp_path, 1, arrays), _context(member), call_next)
        assert call_next.calls == 0  # no honest training: the forged update is the FitRes
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        forged, metrics = parameters_to_ndarrays(res.parameters)
        np.testing.assert_allclose(forged, -3.0 * honest[member])  # unclipped: the server's bound decides
        assert res.num_examples == 1 and res.metrics == {}
        assert decode_metrics(metrics, cfg.secagg.range, 1) == pytest.approx({"train_loss": 0.5 + i})
    honest_device = DEVICES[5]
    call_next = _Next()
    coalition_forgery(_collect_stage(cfg, tmp_path, 1, arrays), _context(honest_device), call_next)
    assert call_next.calls == 1  # not in the coalition: trains as the production client does
