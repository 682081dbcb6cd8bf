"""The server's round loop (``run_round`` / ``_collect``) over hand-built Flower replies.

A loopback Grid answers each train message in-process with the reply a device would
send (or a malformed one), so a round runs without Ray; the server code under test is
the production one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.federation.payload import to_array_record
from fedrlhf.federation.server import run_round

LAYOUT = {"a": (3, 4), "b": (5,)}
DEVICES = [f"user-{i:05d}" for i in range(4)]
NODES = {d: 100 + i for i, d in enumerate(DEVICES)}
Answer = Callable[[Message, str], Message]


class _LoopbackGrid:
    """The network, in-process: each message is answered at once by ``answer(message, device)``."""

    def __init__(self, answer: Answer, nodes: dict[str, int]) -> None:
        self.answer = answer
        self.device_of = {n: d for d, n in nodes.items()}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self.answer(m, self.device_of[m.metadata.dst_node_id]) for m in messages]


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when it creates messages."""
    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


def _cfg(**robust: Any) -> RunConfig:
    return run_config_from_dict(
        {"federation": {"clients_per_round": len(DEVICES), "rounds": 5}, "robust": robust}
    )


def _state() -> ServerState:
    zeros = {name: np.zeros(shape, dtype=np.float32) for name, shape in LAYOUT.items()}
    return ServerState(round=0, global_state=zeros, rng=dict(np.random.default_rng(0).bit_generator.state))


def _delta(device: str, round_: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([int(device[-5:]), round_])
    return {n: (0.1 * rng.normal(size=s)).astype(np.float32) for n, s in LAYOUT.items()}


def _round_of(msg: Message) -> int:
    return int(msg.content.config_records["config"]["round"])


def _content(device: str, arrays: ArrayRecord) -> dict[str, Any]:
    return {
        "arrays": arrays,
        "metrics": MetricRecord({"train_loss": 0.5}),
        "config": ConfigRecord({"device-id": device}),
    }


def honest(msg: Message, device: str) -> Message:
    """What the client app sends: its delta, metrics and device id."""
    return Message(
        RecordDict(_content(device, to_array_record(_delta(device, _round_of(msg))))), reply_to=msg
    )


def _flat(state: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([state[n].ravel() for n in LAYOUT])


def _honest_mean(devices: list[str], round_: int) -> np.ndarray:
    return np.mean([_flat(_delta(d, round_)) for d in devices], axis=0)


def _garbage_array() -> ArrayRecord:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # numpy refuses pickles
    return ArrayRecord(
        {"a": Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=buf.getvalue())}
    )


def _malformed(kind: str, msg: Message, device: str) -> Message:
    content = _content(device, to_array_record(_delta(device, _round_of(msg))))
    if kind.startswith("no_"):
        del content[kind[3:]]
    elif kind == "garbage_bytes":
        content["arrays"] = _garbage_array()
    elif kind == "wrong_stype":
        content["arrays"] = ArrayRecord(
            {"a": Array(dtype="float32", shape=(3, 4), stype="torch", data=b"\0")}
        )
    elif kind == "device_id_not_a_string":
        content["config"] = ConfigRecord({"device-id": 7})
    elif kind == "another_devices_name":
        content["config"] = ConfigRecord({"device-id": DEVICES[0]})
    return Message(RecordDict(content), reply_to=msg)


@pytest.mark.parametrize(
    "kind",
    [
        "no_arrays",
        "no_config",
        "no_metrics",
        "garbage_bytes",
        "wrong_stype",
        "device_id_not_a_string",
        "another_devices_name",
    ],
)
def test_a_malformed_reply_is_one_more_counted_failure(kind: str) -> None:
    bad = DEVICES[2]
    grid = _LoopbackGrid(lambda m, d: _malformed(kind, m, d) if d == bad else honest(m, d), NODES)
    state = _state()
    row = run_round(grid, _cfg(), state, NODES)  # type: ignore[arg-type]
    assert row["failures"] == {"error": 0, "malformed": 1}
    assert row["clients_ok"] == 3 and row["dropped"] == [bad] and row["refused"] is None
    others = [d for d in DEVICES if d != bad]
    np.testing.assert_allclose(_flat(state.global_state), _honest_mean(others, 1), rtol=1e-5, atol=1e-7)


def test_an_error_reply_beside_a_malformed_one_and_the_round_still_aggregates() -> None:
    def answer(msg: Message, device: str) -> Message:
        if device == DEVICES[0]:
            return Message(Error(code=0, reason="simulated dropout"), reply_to=msg)
        return _malformed("no_metrics", msg, device) if device == DEVICES[1] else honest(msg, device)

    state = _state()
    row = run_round(_LoopbackGrid(answer, NODES), _cfg(), state, NODES)  # type: ignore[arg-type]
    assert row["failures"] == {"error": 1, "malformed": 1} and row["clients_ok"] == 2
    np.testing.assert_allclose(_flat(state.global_state), _honest_mean(DEVICES[2:], 1), rtol=1e-5, atol=1e-7)


def test_a_rule_that_cannot_run_after_dropouts_keeps_the_model_and_says_why() -> None:
    """krum with f = 1 needs 5 updates; a dropout leaves 4. Plain mode used to raise out of run_round."""
    devices = [f"user-{i:05d}" for i in range(5)]
    nodes = {d: 100 + i for i, d in enumerate(devices)}

    def answer(msg: Message, device: str) -> Message:
        if device == devices[0]:
            return Message(Error(code=0, reason="simulated dropout"), reply_to=msg)
        return honest(msg, device)

    cfg = run_config_from_dict(
        {"federation": {"clients_per_round": 5}, "robust": {"rule": "krum", "num_malicious": 1}}
    )
    state = _state()
    row = run_round(_LoopbackGrid(answer, nodes), cfg, state, nodes)  # type: ignore[arg-type]
    assert row["refused"].startswith("aggregation failed: krum") and row["failures"]["aggregation"] == 4
    assert state.round == 1 and not np.any(_flat(state.global_state))


def _huge(msg: Message, device: str) -> Message:
    """An attacker: float32's largest value in every entry (finite, so it passes validation)."""
    top = np.finfo(np.float32).max
    arrays = to_array_record({n: np.full(s, top, dtype=np.float32) for n, s in LAYOUT.items()})
    return Message(RecordDict(_content(device, arrays)), reply_to=msg)


def test_default_norm_ratio_leaves_out_an_absurd_update_every_round() -> None:
    attacker = DEVICES[1]
    grid = _LoopbackGrid(lambda m, d: _huge(m, d) if d == attacker else honest(m, d), NODES)
    cfg, state = RunConfig(), _state()  # defaults only: 4 clients per round
    honest_devices = [d for d in DEVICES if d != attacker]
    expected = np.zeros(sum(int(np.prod(s)) for s in LAYOUT.values()))
    for round_ in (1, 2, 3):
        row = run_round(grid, cfg, state, NODES)  # type: ignore[arg-type]
        assert row["failures"].get("norm_ratio") == 1 and row["dropped"] == [attacker]
        assert row["rejected"] == [attacker]  # refused before the rule (robust.remember_after)
        expected += _honest_mean(honest_devices, round_)
        np.testing.assert_allclose(_flat(state.global_state), expected, rtol=1e-4, atol=1e-6)


def test_a_round_that_would_make_the_model_non_finite_is_refused_and_the_last_good_one_kept() -> None:
    """Two of four clients send float32's max: no norm check can tell (they are the median); the
    mean is finite for two rounds, the third would overflow the global model to inf."""
    attackers = set(DEVICES[:2])
    grid = _LoopbackGrid(lambda m, d: _huge(m, d) if d in attackers else honest(m, d), NODES)
    state = _state()
    rows, before = [], []
    for _ in range(4):
        before.append(_flat(state.global_state).copy())
        rows.append(run_round(grid, _cfg(), state, NODES))  # type: ignore[arg-type]
        assert np.all(np.isfinite(_flat(state.global_state)))
    assert [r["refused"] for r in rows[:2]] == [None, None]
    assert rows[2]["refused"] == rows[3]["refused"] == "non-finite global model"
    np.testing.assert_array_equal(_flat(state.global_state), before[2])
    assert state.round == 4


def test_user_dp_is_not_filtered_by_the_norm_ratio() -> None:
    """DP-FedAvg clips every update itself; dropping one by the others' median would break its
    per-user sensitivity, so the (default) ratio check does not run under user_dp."""
    attacker = DEVICES[1]
    grid = _LoopbackGrid(lambda m, d: _huge(m, d) if d == attacker else honest(m, d), NODES)
    cfg = run_config_from_dict(
        {"federation": {"clients_per_round": 4}, "user_dp": {"enabled": True, "noise_multiplier": 0.5}}
    )
    state = _state()
    row = run_round(grid, cfg, state, NODES)  # type: ignore[arg-type]
    assert "norm_ratio" not in row["failures"] and row["clients_ok"] == 4 and row["refused"] is None
    assert np.all(np.isfinite(_flat(state.global_state)))


def test_implausible_epsilons_in_replies_do_not_reach_the_report() -> None:
    """A reply's plaintext epsilon is reported as the round's record-level epsilon: NaN, inf or a
    negative value would make the report nonsense (and not valid JSON)."""
    reported = dict(zip(DEVICES, [float("nan"), float("inf"), -1.0, 2.0], strict=True))

    def answer(msg: Message, device: str) -> Message:
        reply = honest(msg, device)
        reply.content.metric_records["metrics"]["epsilon"] = reported[device]
        return reply

    row = run_round(_LoopbackGrid(answer, NODES), _cfg(), _state(), NODES)  # type: ignore[arg-type]
    assert row["record_epsilon_max"] == row["epsilon"] == 2.0
    json.dumps(row, allow_nan=False)


def test_federated_evaluation_skips_a_reply_without_metrics() -> None:
    from fedrlhf.federation.evaluation import federated_evaluate

    def answer(msg: Message, device: str) -> Message:
        metrics = {} if device == DEVICES[0] else {"metrics": MetricRecord({"global_accuracy": 0.75})}
        return Message(RecordDict(metrics), reply_to=msg)

    result = federated_evaluate(_LoopbackGrid(answer, NODES), _cfg(), _state(), NODES)  # type: ignore[arg-type]
    assert result == {"clients": 3, "global_accuracy": 0.75, "personal_accuracy": None}
