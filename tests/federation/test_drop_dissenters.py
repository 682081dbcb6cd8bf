"""robust.drop_dissenters: the devices that agree least with the others, over the rounds, are left out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedrlhf.aggregation import agreement_scores, cosine_filter
from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.federation.aggregate import mean_agreement, remembered_suspects, step
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.simulation.threats import server_view

N, D = 15, 400


def _cfg(**robust: Any):
    base = {"rule": "cosine_filter", "num_malicious": 3, "outlier_z": 2.0, "drop_dissenters": True}
    return run_config_from_dict({"robust": {**base, **robust}, "federation": {"server_lr": 1.0}})


def _flippers(seed: int = 1) -> np.ndarray:
    """12 honest updates sharing a weak common direction, 3 that each push against it (own noise)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=D)
    x = rng.normal(size=(N, D)) + 0.5 * common
    x[12:] = rng.normal(size=(3, D)) - 0.5 * common
    return x.astype(np.float32)


def _step(
    x: np.ndarray, cfg, history: list[dict[str, Any]] | None = None
) -> tuple[list[int], dict, np.ndarray]:
    state = ServerState(
        round=1, global_state={"w": np.zeros(D, dtype=np.float32)}, rng={}, history=history or []
    )
    left_out: list[int] = []
    record: dict[str, Any] = {}
    devices = [f"d{i}" for i in range(len(x))]
    refused = step(list(x), cfg, state, devices, np.random.default_rng(0), left_out, {}, {"w": (D,)}, record)
    assert refused is None
    return left_out, record, state.global_state["w"]


def test_flippers_no_filter_sees_are_left_out_and_the_rest_averaged() -> None:
    x = _flippers()
    assert cosine_filter(list(x), num_malicious=3, outlier_z=2.0).shape == (D,)  # the filter alone:
    left_alone, _, _ = _step(x, _cfg(drop_dissenters=False))
    assert left_alone == []  # no coalition, nothing stands out
    left_out, record, w = _step(x, _cfg())
    assert left_out == [12, 13, 14]
    assert record["dissenters"] == ["d12", "d13", "d14"]
    assert record["agreement"] == pytest.approx(
        {f"d{i}": float(a) for i, a in enumerate(agreement_scores(list(x)))}, rel=1e-9
    )
    # the rule then runs over the rest with the 3 counted against f: the clipped mean of the 12
    np.testing.assert_allclose(w, cosine_filter(list(x[:12]), num_malicious=0), rtol=1e-5, atol=1e-6)


def test_the_average_over_rounds_decides_not_one_round() -> None:
    x = _flippers()
    now = agreement_scores(list(x))
    # d0 agreed far less in two earlier rounds, d12 far more: the history outweighs this round
    history = [{"round": r, "agreement": {"d0": -1.0, "d12": 1.0, "gone": -5.0}} for r in (1, 2)]
    avg = mean_agreement(history, [f"d{i}" for i in range(N)], now)
    assert avg[0] == pytest.approx((now[0] - 2.0) / 3) and avg[12] == pytest.approx((now[12] + 2.0) / 3)
    assert avg[5] == pytest.approx(now[5])  # no history: this round alone
    left_out, record, _ = _step(x, _cfg(), history)
    assert left_out == [0, 13, 14]
    # a dissenter is not remembered as a dropped device: its average is re-ranked every round
    assert remembered_suspects(
        [{"round": 1, "dropped": ["d0", "d9"], "dissenters": ["d0"]}], ["d0", "d9"], 3
    ) == [1]


def test_a_coalition_the_rule_drops_keeps_its_place_in_f() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, D))
    x[12:] = rng.normal(size=D) + 0.6 * x[12:]  # 3 attackers pursuing one goal
    x = x.astype(np.float32)
    left_out, record, _ = _step(x, _cfg())
    assert left_out == [12, 13, 14] and record["dissenters"] == []
    # with f = 4 one slot is left: the lowest agreement among the rest fills it
    left_out, record, _ = _step(x, _cfg(num_malicious=4))
    honest_low = int(np.argmin(agreement_scores(list(x))[:12]))
    assert left_out == sorted([12, 13, 14, honest_low]) and record["dissenters"] == [f"d{honest_low}"]


def test_the_white_box_server_view_drops_them_too() -> None:
    x = _flippers()
    _, _, w = _step(x, _cfg())
    got = server_view(_cfg(), np.random.default_rng(0))(list(x))
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)  # the attackers tune against the server
    plain = server_view(_cfg(drop_dissenters=False), np.random.default_rng(0))(list(x))
    assert np.linalg.norm(plain - got) > 0.05 * np.linalg.norm(got)


def test_refused_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="robust.drop_dissenters"):
        run_config_from_dict(
            {"robust": {"drop_dissenters": True, "num_malicious": 1}, "user_dp": {"enabled": True}}
        )
    with pytest.raises(ConfigError, match="robust.drop_dissenters must be true or false"):
        run_config_from_dict({"robust": {"drop_dissenters": "yes"}})
    with pytest.raises(ConfigError, match="num_malicious"):
        run_config_from_dict({"robust": {"drop_dissenters": True}})


def test_secure_mode_scores_each_member_with_its_group_mean() -> None:
    x = _flippers()
    # 7 secure groups: the server sees their means and who was in each
    groups = [[0, 1], [2, 3], [4, 12], [5, 6], [7, 13], [8, 9], [10, 11, 14]]
    means = np.stack([x[g].mean(axis=0) for g in groups]).astype(np.float32)
    members = [[f"d{i}" for i in g] for g in groups]
    labels = [f"group-{k}" for k in range(7)]
    now = agreement_scores(list(means))
    # d5 agreed far less before: its group ranks by its lowest member's average
    history = [{"round": 1, "agreement": {"d5": -1.0}}]
    avg = mean_agreement(history, labels, now, members)
    assert avg[3] == pytest.approx((now[3] - 1.0) / 2) and avg[2] == pytest.approx(now[2])
    cfg = run_config_from_dict(
        {
            "robust": {
                "rule": "cosine_filter",
                "num_malicious": 2,
                "outlier_z": 2.0,
                "drop_dissenters": True,
            },
            "secagg": {"enabled": True, "num_groups": 7, "min_group_size": 2},
            "federation": {"clients_per_round": 15, "server_lr": 1.0},
            "cohort": {"num_clients": 15},
        }
    )
    state = ServerState(round=1, global_state={"w": np.zeros(D, dtype=np.float32)}, rng={}, history=history)
    left_out: list[int] = []
    record: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    assert step(list(means), cfg, state, labels, rng, left_out, {}, {"w": (D,)}, record, members) is None
    assert record["agreement"] == pytest.approx({m: float(now[k]) for k, g in enumerate(members) for m in g})
    want = sorted(range(7), key=lambda k: (avg[k], k))[:2]
    assert left_out == sorted(want) and 3 in want
    assert record["dissenters"] == [m for k in sorted(want) for m in members[k]]


@pytest.mark.parametrize("seed", [2, 26, 117])
def test_every_slot_of_f_is_used(seed: int) -> None:
    # draws where the gated filter flags 1 or 2 updates scoring the whole round, and none when it
    # runs again at that f without the dissenters: what it flags is left out with them, so no
    # slot of f goes unused
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)) + rng.uniform(0, 0.5) * rng.normal(size=D)
    m = rng.integers(2, 5)
    x[N - m :] += rng.uniform(0.2, 1.0) * rng.normal(size=D)
    left_out, record, _ = _step(x.astype(np.float32), _cfg())
    assert len(left_out) == 3 and 0 < len(record["dissenters"]) < 3
    assert set(record["dissenters"]) < {f"d{i}" for i in left_out}


def test_a_small_round_keeps_a_majority() -> None:
    # 4 updates at f = 3: one dissenter at most, never half the round
    x = _flippers()[[0, 1, 12, 13]]
    left_out, record, _ = _step(x, _cfg(outlier_z=0.0, rule="mean"))
    assert len(left_out) == 1 and record["dissenters"] == [f"d{left_out[0]}"]
