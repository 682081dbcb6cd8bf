"""robust.remember_drops: devices an earlier round left out are left out again, counting against f."""

from __future__ import annotations

import numpy as np
import pytest

from fedrlhf.aggregation import cosine_filter, cosine_keep
from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.federation.aggregate import remembered_suspects, step
from fedrlhf.federation.checkpoint import ServerState


def test_suspects_are_the_most_often_then_most_recently_dropped() -> None:
    history = [
        {"round": 0},
        {"round": 1, "dropped": ["a", "b"]},
        {"round": 2, "dropped": ["b", "c"]},
        {"round": 3, "dropped": ["d"]},
    ]
    devices = ["x", "d", "c", "b", "a"]
    assert remembered_suspects(history, devices, 1) == [3]  # b: dropped twice
    assert remembered_suspects(history, devices, 2) == [3, 1]  # then d: round 3
    assert remembered_suspects(history, devices, 9) == [3, 1, 2, 4]  # then c (round 2), a
    assert remembered_suspects(history, devices, 0) == []
    assert remembered_suspects([{"round": 1, "dropped": []}], devices, 3) == []


def test_remember_after_needs_that_many_rounds_unless_a_proof() -> None:
    # robust.remember_after = 2: "a" (left out once by the rule) is not remembered, "b" (twice)
    # is, and "c", whose update was rejected on proof once, is at once
    history = [
        {"round": 1, "dropped": ["a", "b", "c"], "rejected": ["c"]},
        {"round": 2, "dropped": ["b"]},
    ]
    devices = ["a", "b", "c", "x"]
    assert remembered_suspects(history, devices, 9, after=2) == [1, 2]
    assert remembered_suspects(history, devices, 9, after=1) == [1, 0, 2]  # b twice; a, c once
    assert remembered_suspects(history, devices, 9, after=3) == [2]  # a proof counts in full
    # dissenters are never counted, whatever remember_after
    assert remembered_suspects([{"round": 1, "dropped": ["b"], "dissenters": ["b"]}] * 3, devices, 9) == []


def test_remember_after_two_keeps_a_once_flagged_device_in_the_step() -> None:
    cfg = run_config_from_dict(
        {
            "robust": {"rule": "cosine_filter", "num_malicious": 2, "outlier_z": 50.0, "remember_drops": True,
                       "remember_after": 2},
            "federation": {"server_lr": 1.0},
        }
    )  # fmt: skip
    rng = np.random.default_rng(0)
    updates = [v.astype(np.float32) for v in rng.normal(size=(9, 40))]
    devices = [f"d{i}" for i in range(9)]
    for history, want in (
        ([{"round": 1, "dropped": ["d3"]}], []),  # once: not remembered; the gate flags nothing
        ([{"round": 1, "dropped": ["d3"]}, {"round": 2, "dropped": ["d3"]}], [3]),
    ):
        w = {"w": np.zeros(40, dtype=np.float32)}
        state = ServerState(round=2, global_state=w, rng={}, history=history)
        left_out: list[int] = []
        assert step(updates, cfg, state, devices, rng, left_out, {}, {"w": (40,)}) is None
        assert left_out == want


def _round(cfg_extra: dict) -> tuple[list[int], np.ndarray, np.ndarray]:
    """One server step over 9 updates; device 'd3' was dropped in round 1 (in the history)."""
    robust = {"rule": "cosine_filter", "num_malicious": 2, **cfg_extra}
    cfg = run_config_from_dict({"robust": robust, "federation": {"server_lr": 1.0}})
    rng = np.random.default_rng(0)
    updates = [v.astype(np.float32) for v in rng.normal(size=(9, 40))]
    devices = [f"d{i}" for i in range(9)]
    state = ServerState(
        round=1,
        global_state={"w": np.zeros(40, dtype=np.float32)},
        rng={},
        history=[{"round": 0}, {"round": 1, "dropped": ["d3", "gone"]}],
    )
    left_out: list[int] = []
    refused = step(updates, cfg, state, devices, rng, left_out, {}, {"w": (40,)})
    assert refused is None
    return left_out, state.global_state["w"], np.stack(updates)


@pytest.mark.parametrize("z", [0.0, 2.0])
def test_a_remembered_device_is_left_out_with_what_the_rule_flags_and_counts_against_f(z: float) -> None:
    left_out, w, x = _round({"remember_drops": True, "outlier_z": z})
    # the filter scores all 9 (the remembered one included) at f = 2; what it flags goes too
    flagged = [i for i in range(9) if i not in cosine_keep(list(x), num_malicious=2, outlier_z=z)]
    out = sorted([*flagged, *([3] if 3 not in flagged else [])][:2])  # at most f, flagged first
    rest = [i for i in range(9) if i not in out]
    f_rest = max(0, 2 - len(out))  # the left-out count against f
    kept = cosine_keep(list(x[rest]), num_malicious=f_rest, outlier_z=z)
    assert left_out == sorted([*out, *(rest[j] for j in range(len(rest)) if j not in kept)])
    want = cosine_filter(list(x[rest]), num_malicious=f_rest, outlier_z=z)
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)
    off, w_off, _ = _round({"outlier_z": z})  # without the memory: the filter alone, f = 2
    assert off == flagged and 3 not in off
    assert (3 in left_out) == (len(flagged) < 2)  # ungated, the filter's own 2 fill f
    if 3 in left_out:
        assert not np.allclose(w_off, w)


def test_a_coalition_member_the_memory_missed_is_caught_beside_the_remembered() -> None:
    # 3 attackers share a direction; rounds before dropped 2 of them. Scored without those two,
    # the third has no partner and would pass; scored with everyone, it stands out.
    rng = np.random.default_rng(1)
    n, d = 15, 400
    x = rng.normal(size=(n, d))
    x[12:] = rng.normal(size=d) * 1.0 + 0.6 * x[12:]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cfg = run_config_from_dict(
        {
            "robust": {"rule": "cosine_filter", "num_malicious": 3, "outlier_z": 2.0, "remember_drops": True},
            "federation": {"server_lr": 1.0},
        }
    )
    devices = [f"d{i}" for i in range(n)]
    state = ServerState(
        round=2,
        global_state={"w": np.zeros(d, dtype=np.float32)},
        rng={},
        history=[{"round": 1, "dropped": ["d12", "d13"]}, {"round": 2, "dropped": ["d12", "d13"]}],
    )
    rest = [i for i in range(n) if i not in (12, 13)]
    assert len(cosine_keep(list(x[rest]), num_malicious=1, outlier_z=2.0)) == n - 2  # alone, d14 passes
    left_out: list[int] = []
    updates = [v.astype(np.float32) for v in x]
    assert step(updates, cfg, state, devices, rng, left_out, {}, {"w": (d,)}) is None
    assert left_out == [12, 13, 14]


def test_refused_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="robust.remember_drops"):
        run_config_from_dict({"robust": {"remember_drops": True}, "user_dp": {"enabled": True}})
    with pytest.raises(ConfigError, match="robust.remember_drops must be true or false"):
        run_config_from_dict({"robust": {"remember_drops": "yes"}})
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="robust.remember_after must be an integer >= 1"):
            run_config_from_dict({"robust": {"remember_after": bad}})


def test_secure_mode_remembers_by_group_testing() -> None:
    # a group is a suspect when a member is; its rank is its most-often-dropped member's
    history = [{"round": 1, "dropped": ["a", "b", "c"]}, {"round": 2, "dropped": ["a", "d"]}]
    groups = [["x", "y"], ["d", "z"], ["b", "a"], ["c"]]
    labels = [f"group-{i}" for i in range(4)]
    assert remembered_suspects(history, labels, 9, groups) == [2, 1, 3]  # a: twice; d: round 2
    assert remembered_suspects(history, labels, 1, groups) == [2]
    cfg = run_config_from_dict(
        {
            "robust": {"rule": "cosine_filter", "num_malicious": 1, "remember_drops": True},
            "secagg": {"enabled": True, "num_groups": 3, "min_group_size": 2},
            "federation": {"clients_per_round": 6},
            "cohort": {"num_clients": 6},
        }
    )
    assert cfg.robust.remember_drops  # the server needs group means and who was in each group
    rng = np.random.default_rng(0)
    means = [v.astype(np.float32) for v in rng.normal(size=(4, 30))]
    state = ServerState(round=2, global_state={"w": np.zeros(30, dtype=np.float32)}, rng={}, history=history)
    left_out: list[int] = []
    assert step(means, cfg, state, labels, rng, left_out, {}, {"w": (30,)}, {}, groups) is None
    assert left_out == [2]  # the mean holding "a"


def test_no_more_than_f_go_and_the_flagged_come_first() -> None:
    # three honest devices an earlier round wrongly dropped, and a coalition the filter sees now:
    # f = 3 in all, and they are the coalition's
    rng = np.random.default_rng(1)
    n, d = 15, 400
    x = rng.normal(size=(n, d))
    x[12:] = rng.normal(size=d) + 0.6 * x[12:]
    cfg = run_config_from_dict(
        {
            "robust": {"rule": "cosine_filter", "num_malicious": 3, "outlier_z": 2.0, "remember_drops": True},
            "federation": {"server_lr": 1.0},
        }
    )
    state = ServerState(
        round=1,
        global_state={"w": np.zeros(d, dtype=np.float32)},
        rng={},
        history=[{"round": 1, "dropped": ["d0", "d1", "d2"]}],
    )
    left_out: list[int] = []
    updates = [v.astype(np.float32) for v in x]
    devices = [f"d{i}" for i in range(n)]
    assert step(updates, cfg, state, devices, rng, left_out, {}, {"w": (d,)}) is None
    assert left_out == [12, 13, 14]
