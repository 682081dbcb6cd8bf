"""Secure + robust aggregation (fedrlhf.federation.secure): SecAgg+ per random group, rule over group means.

The simulation tests run Flower's simulation engine (Ray) with 8 clients of a
tiny backbone in 2 groups of 4, through a test-local ServerApp that calls
:func:`secure_round` and the simulation's ClientApp (the production app plus the
simulated dropouts and coalition attackers, :mod:`fedrlhf.simulation.client_app`).
Individual deltas are recomputed here by re-running ``client_round`` with the
clients' seeds; they never leave the clients during the simulated rounds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrlhf.config import RunConfig, SecAggConfig, run_config_from_dict
from fedrlhf.errors import ConfigError

NUM_CLIENTS = 8


# ----------------------------------------------------------------------------- config (fast)


def _secure(rule: str = "coordinate_median", **kw: Any) -> dict[str, Any]:
    return {"secagg.enabled": True, "robust.rule": rule, "federation.clients_per_round": 8, **kw}


def test_per_client_rule_without_groups_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"robust.rule 'krum' needs individual updates, which secure "
        r"aggregation hides; keep secagg.enabled and set "
        r"secagg.min_group_size >= 2 so krum runs over group means",
    ):
        run_config_from_dict(_secure("krum", **{"secagg.min_group_size": 1}))
    with pytest.raises(ConfigError, match="single group mean.*num_groups >= 2"):
        run_config_from_dict(_secure(**{"secagg.num_groups": 1}))
    with pytest.raises(ConfigError, match="single group mean"):
        run_config_from_dict(_secure(**{"federation.clients_per_round": 6}))  # 6 // 4 = one group


def test_secure_config_accepts_group_means_and_linear_rules() -> None:
    cfg = run_config_from_dict(_secure())  # 2 groups of 4: the median runs over 2 group means
    assert cfg.secagg.groups_for(8) == 2
    run_config_from_dict(_secure("mean", **{"secagg.num_groups": 1}))  # one SecAgg+ sum suffices for the mean
    run_config_from_dict(_secure("krum", **{"secagg.min_group_size": 2}))  # 4 group means >= 2f + 3
    with pytest.raises(ConfigError, match="needs at least 3 of them"):
        run_config_from_dict(_secure("krum"))
    with pytest.raises(ConfigError, match="min_group_size = 1 would show the server"):
        run_config_from_dict(_secure("mean", **{"secagg.min_group_size": 1}))


@pytest.mark.parametrize(
    "setting, match",
    [
        ({"user_dp.enabled": True, "robust.rule": "mean"}, "user_dp needs each client's update"),
        ({"robust.reputation": True}, "robust.reputation needs each client's update"),
        ({"secagg.clipping_range": 0.5}, "must be >= secagg.clip_norm"),
        ({"secagg.num_shares": 4, "secagg.reconstruction_threshold": 2}, "above num_shares / 2"),
        ({"secagg.reconstruction_threshold": 3}, "set secagg.num_shares too"),
        ({"secagg.num_shares": 7, "secagg.reconstruction_threshold": 4}, "smallest group"),
        ({"secagg.quantization_range": 2**30}, "below 2\\*\\*32"),
        ({"secagg.num_groups": 3}, "cannot form 3 group"),
    ],
)
def test_secure_config_errors(setting: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_config_from_dict({**_secure(), **setting})


def test_shares_and_thresholds() -> None:
    s = SecAggConfig()
    assert [(s.shares_for(n), s.threshold_for(n)) for n in (2, 3, 4, 5)] == [(2, 2), (3, 2), (4, 3), (5, 3)]
    s = SecAggConfig(num_shares=4, min_group_size=3)  # an even count below the group size becomes odd
    assert (s.shares_for(8), s.threshold_for(8), s.shares_for(3)) == (5, 3, 3)
    assert SecAggConfig(clip_norm=0.5).range == 0.5
    assert RunConfig().secagg.enabled is False
    assert run_config_from_dict(RunConfig().to_flat()).secagg == SecAggConfig()


def test_masked_metrics_round_trip() -> None:
    from fedrlhf.federation.secure import decode_metrics, encode_metrics

    a = encode_metrics({"train_loss": 0.7, "global_accuracy": 0.5}, 2.0)
    b = encode_metrics({"train_loss": 0.3, "global_accuracy": 1.0, "personal_accuracy": 0.25}, 2.0)
    assert a.min() >= 0 and a.max() <= 2.0
    got = decode_metrics((a + b) / 2, 2.0, 2)
    assert got == pytest.approx({"train_loss": 0.5, "global_accuracy": 0.75, "personal_accuracy": 0.25})


def test_server_checks_each_group_outcome() -> None:
    from fedrlhf.federation.secure import SecureRoundResult, encode_metrics
    from fedrlhf.federation.secure_server import _GroupOutcome, _record_group

    cfg = run_config_from_dict(_secure(**{"secagg.clip_norm": 1.0}))
    state = {"a": np.zeros(3, np.float32), "b": np.zeros((1, 2), np.float32)}
    nodes = {"u0": 10, "u1": 11, "u2": 12}
    metrics = encode_metrics({"train_loss": 0.5}, cfg.secagg.range)

    def record(arrays: list[np.ndarray] | str | None, weights: dict[int, int]) -> SecureRoundResult:
        res = SecureRoundResult()
        outcome = (
            _GroupOutcome(arrays, weights, [{}, {"epsilon": 2.0}]) if isinstance(arrays, list) else arrays
        )
        _record_group(res, outcome, list(nodes), nodes, cfg, state, 0, 1.0)
        return res

    good = [np.array([0.3, 0.0, 0.4, 0.0, 0.0]), metrics]
    res = record(good, {10: 1, 11: 1})  # u2 dropped out
    assert res.group_sizes == [2] and res.members == [["u0", "u1"]] and res.failures == {"error": 1}
    assert res.metrics[0]["train_loss"] == pytest.approx(0.5) and res.metrics[0]["epsilon"] == 2.0
    assert res.epsilons == {"u1": 2.0}  # per device, for the report (epsilon is not secret)
    res = record(good, {10: 1, 11: 2, 12: 1})  # u1 claims weight 2: the group is discarded
    assert (
        not res.group_means and res.flagged == ["u1"] and res.failures == {"weight": 1, "group_rejected": 1}
    )
    for bad in ([np.array([3.0, 0, 0, 0, 0]), metrics], [np.array([np.nan, 0, 0, 0, 0]), metrics], good[:1]):
        assert record(bad, {10: 1, 11: 1, 12: 1}).failures == {"group_rejected": 1}
    assert record(None, {}).failures == {"group_halted": 1, "lost_clients": 3}
    assert record("ZeroDivisionError: x", {}).failures == {"group_error": 1, "lost_clients": 3}


def test_workflow_parameters_per_group_size() -> None:
    from fedrlhf.federation.secure_server import _workflow

    pair = _workflow(SecAggConfig(min_group_size=2), 2, 10.0)
    assert (pair.num_shares, pair.reconstruction_threshold) == (1.0, 2)  # Flower's "whole group" form
    four = _workflow(SecAggConfig(clip_norm=0.5, quantization_range=2**16), 4, 10.0)
    assert (four.num_shares, four.reconstruction_threshold, four.max_weight) == (4, 3, 1.0)
    assert (four.clipping_range, four.quantization_range, four.timeout) == (0.5, 2**16, 10.0)


# ----------------------------------------------------------------------------- simulations (slow)


def _base_config(tmp: Path, backbone: str, **over: Any) -> RunConfig:
    flat = {
        "model.backbone": backbone,
        "model.max_length": 32,
        "model.lora_r": 2,
        "train.batch_size": 8,
        "cohort.num_clients": NUM_CLIENTS,
        "cohort.pairs_per_user": 8,
        "cohort.test_pairs_per_user": 4,
        "federation.rounds": 2,
        "federation.clients_per_round": 8,
        "federation.test_data": "",
        **_secure(**{"secagg.min_group_size": 4, "secagg.num_groups": 2}),
        **over,
    }
    return run_config_from_dict(flat)


def _client_app() -> Any:
    """The simulation's ClientApp: the production app with simulated dropouts and coalition attackers."""
    from fedrlhf.simulation.client_app import app

    return app


def _simulate(cfg: RunConfig, rounds: int) -> list[dict[str, Any]]:
    """Run ``rounds`` secure rounds over all clients; global <- global + median of group means."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedrlhf.aggregation import aggregate, flatten, unflatten
    from fedrlhf.federation.initial import initial_state
    from fedrlhf.federation.secure import secure_round
    from fedrlhf.federation.server import identify_devices
    from fedrlhf.simulation.run import _backend_config, _quiet_workers

    records: list[dict[str, Any]] = []
    outcome: dict[str, BaseException] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Any, context: Any) -> None:
        try:
            nodes = identify_devices(grid, cfg, expected=NUM_CLIENTS, timeout=600)
            if len(nodes) != NUM_CLIENTS:
                raise RuntimeError(f"only {len(nodes)} of {NUM_CLIENTS} nodes answered the identify query")
            state = initial_state(cfg).global_state
            layout = {n: v.shape for n, v in state.items()}
            for round_ in range(1, rounds + 1):
                rng = np.random.default_rng(round_)
                res = secure_round(grid, cfg, state, sorted(nodes), nodes, round_, rng)
                records.append({"round": round_, "global": state, "result": res})
                if res.group_means:
                    agg = aggregate("coordinate_median", res.group_means)
                    state = unflatten(flatten(state, layout) + agg, layout)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the test thread
            outcome["error"] = exc

    _quiet_workers()
    run_simulation(
        server_app=server,
        client_app=_client_app(),
        num_supernodes=NUM_CLIENTS,
        backend_config=_backend_config(2),
    )  # type: ignore[arg-type]
    if "error" in outcome:
        raise outcome["error"]
    assert len(records) == rounds, "the ServerApp did not finish its rounds"
    return records


def _individual(cfg: RunConfig, record: dict[str, Any], device: str) -> np.ndarray:
    """The clipped delta ``device`` masked in ``record``'s round (recomputed from its seed)."""
    import torch

    from fedrlhf.federation.secure import secure_payload
    from fedrlhf.federation.seeds import client_seed
    from fedrlhf.training.device import DeviceDir, RoundSpec, client_round

    torch.set_num_threads(1)
    round_, state = record["round"], record["global"]
    fed = cfg.federation
    spec = RoundSpec(
        round=round_,
        seed=client_seed(cfg, round_, device),
        local_epochs=fed.local_epochs,
        evaluate=fed.eval_every > 0 and round_ % fed.eval_every == 0,
    )
    delta, metrics = client_round(
        DeviceDir(Path(cfg.federation.clients_dir) / device),
        state,
        spec,
        model_cfg=cfg.model,
        train_cfg=cfg.train,
        privacy=cfg.privacy,
    )
    return secure_payload(delta, list(state), metrics, cfg.secagg)[0]


def _quantization_step(cfg: RunConfig) -> float:
    return 2 * cfg.secagg.range / cfg.secagg.quantization_range


@pytest.fixture()
def prepared(tmp_path: Path, tiny_bert: str) -> Any:
    from fedrlhf.simulation.run import prepare_cohort

    os.environ["FEDRLHF_CLIENT_THREADS"] = "1"

    def make(**over: Any) -> RunConfig:
        return prepare_cohort(_base_config(tmp_path, tiny_bert, **over), tmp_path / "run")[0]

    return make


@pytest.mark.slow
def test_server_sees_only_group_means(prepared: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrlhf.federation import secure_server

    cfg = prepared(**{"secagg.clip_norm": 0.01})  # below the deltas' norms (~0.015): clipping is exercised
    seen: list[list[np.ndarray]] = []
    replies: list[Any] = []
    monkeypatch.setattr(secure_server, "on_aggregate_input", lambda vectors: seen.append(list(vectors)))
    monkeypatch.setattr(secure_server, "on_server_receive", replies.extend)
    records = _simulate(cfg, rounds=2)
    step = _quantization_step(cfg)
    for record, vectors in zip(records, seen, strict=True):
        res = record["result"]
        assert res.group_sizes == [4, 4] and res.failures.get("error", 0) == 0
        assert len(vectors) == 2 and all(v is m for v, m in zip(vectors, res.group_means, strict=True))
        individual = {d: _individual(cfg, record, d) for group in res.members for d in group}
        for mean, group in zip(res.group_means, res.members, strict=True):
            expected = np.mean([individual[d] for d in group], axis=0)
            assert np.max(np.abs(mean - expected)) <= step + 1e-6  # (b) unmasked mean == plain mean
            assert np.linalg.norm(mean) <= cfg.secagg.clip_norm + 1e-3
        for vec in individual.values():  # (a) no individual update reaches the aggregation
            assert min(np.linalg.norm(v - vec) for v in vectors) > 0.05 * np.linalg.norm(vec)
        assert any(np.linalg.norm(v) >= cfg.secagg.clip_norm * 0.999 for v in individual.values())
        assert {k for m in res.metrics for k in m} >= {"train_loss", "global_accuracy", "clients"}
        assert res.bytes_up > 0 and res.bytes_down > 0
    first = records[0]
    _assert_replies_masked(replies, [_individual(cfg, first, d) for d in first["result"].members[0]])


def _assert_replies_masked(replies: list[Any], deltas: list[np.ndarray]) -> None:
    """No reply carries plaintext arrays or metrics; masked vectors do not correlate with the deltas."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    masked = 0
    for reply in replies:
        assert not reply.has_error()
        content = reply.content
        assert all(len(rec) == 0 for rec in content.array_records.values())
        assert all(dict(rec) == {"num_examples": 1} for rec in content.metric_records.values())
        assert set(content.config_records) <= {RECORD_KEY_CONFIGS, "fitres.metrics", "fitres.status"}
        assert set(content.config_records.get("fitres.metrics", {})) <= {"epsilon"}
        protocol = content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in protocol:  # [weight factor, masked delta, masked metrics]
            vec = bytes_to_ndarray(protocol[Key.MASKED_PARAMETERS][1]).astype(np.float64)
            masked += 1
            for delta in deltas:
                assert vec.shape == delta.shape
                assert abs(np.corrcoef(vec, delta)[0, 1]) < 0.2
    assert masked == 2 * NUM_CLIENTS


def _drop_seed(fraction: float, want: list[list[int]]) -> int:
    """A federation.seed whose simulated dropouts hit ``want[round-1][group]`` clients per group."""
    from fedrlhf.aggregation import make_groups
    from fedrlhf.simulation.client_app import drops

    devices = sorted(f"user-{i:05d}" for i in range(NUM_CLIENTS))
    for seed in range(5000):
        counts = []
        for round_, _ in enumerate(want, start=1):
            groups = make_groups(devices, min_group_size=4, num_groups=2, rng=np.random.default_rng(round_))
            counts.append([sum(drops(seed, round_, d, fraction) for d in g) for g in groups])
        if counts == want:
            return seed
    raise AssertionError(f"no seed gives dropouts {want}")


@pytest.mark.slow
def test_group_survives_dropouts_up_to_shares_minus_threshold(prepared: Any) -> None:
    s = SecAggConfig()
    assert s.shares_for(4) - s.threshold_for(4) == 1  # groups of 4 tolerate one dropout
    seed = _drop_seed(0.3, [[1, 1], [2, 0]])
    cfg = prepared(**{"federation.dropout": 0.3, "federation.seed": seed})
    records = _simulate(cfg, rounds=2)
    first, second = records[0]["result"], records[1]["result"]
    assert first.group_sizes == [3, 3] and first.failures == {"error": 2}, first  # both finish without one
    for mean, group in zip(first.group_means, first.members, strict=True):
        expected = np.mean([_individual(cfg, records[0], d) for d in group], axis=0)
        assert np.max(np.abs(mean - expected)) <= _quantization_step(cfg) + 1e-6
    # two dropouts in a group of 4 (threshold 3): that group halts, the other still counts
    assert second.group_sizes == [4] and second.failures == {"group_halted": 1, "lost_clients": 4}


@pytest.mark.slow
def test_update_attack_forged_on_the_device_enters_the_group_sum(prepared: Any) -> None:
    """Secure mode: attackers forge their update before masking; the group mean carries it."""
    cfg = prepared(**{"attack.name": "sign_flip", "attack.fraction": 0.25, "attack.params": "scale=3.0"})
    from fedrlhf.simulation.threats import attackers

    bad = attackers(cfg)
    assert len(bad) == 2
    (record,) = _simulate(cfg, rounds=1)
    res = record["result"]
    assert res.group_sizes == [4, 4] and not res.failures.get("error")
    cache = Path(cfg.federation.clients_dir) / ".coalition" / "round-00001"
    hit = 0
    for mean, group in zip(res.group_means, res.members, strict=True):
        sent = []
        for d in group:
            if d in bad:
                with np.load(cache / f"{d}.npz") as z:
                    sent.append(-3.0 * z["update"])
                hit += 1
            else:
                sent.append(_individual(cfg, record, d))
        assert np.max(np.abs(mean - np.mean(sent, axis=0))) <= _quantization_step(cfg) + 1e-6
    assert hit == 2


def test_groups_rejected_on_proof_count_against_the_rules_f() -> None:
    """A secure group whose mean no clipped updates can have holds an attacker: with r such groups
    discarded, the rule over the remaining means assumes f - r attackers, not f (else a filter
    with f = 3 would also throw out honest means in their place)."""
    from fedrlhf.aggregation import cosine_two_sided, cosine_two_sided_keep
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    cfg = run_config_from_dict({"robust": {"rule": "cosine_two_sided", "num_malicious": 3}})
    means = list(np.random.default_rng(5).normal(size=(7, 12)))
    state, devices = ServerState(round=0, global_state={}, rng={}), [f"group-{i}" for i in range(7)]
    left_out = {}
    for known_bad, f in ((0, 3), (2, 1), (3, 0), (5, 0)):
        dropped: list[int] = []
        out = aggregate_updates(
            means, cfg, state, devices, np.random.default_rng(0), dropped, known_bad=known_bad
        )
        np.testing.assert_allclose(out, cosine_two_sided(means, num_malicious=f))
        assert len(dropped) == len(means) - len(cosine_two_sided_keep(means, num_malicious=f))
        left_out[known_bad] = len(dropped)
    assert left_out[0] > left_out[2] > left_out[3] == left_out[5] == 0


def test_implausible_plaintext_epsilons_of_a_group_are_ignored() -> None:
    from fedrlhf.federation.secure import SecureRoundResult, encode_metrics
    from fedrlhf.federation.secure_server import _GroupOutcome, _record_group

    cfg = run_config_from_dict(_secure(**{"secagg.clip_norm": 1.0}))
    nodes = {"u0": 10, "u1": 11, "u2": 12, "u3": 13}
    arrays = [np.array([0.3, 0.4], np.float32), encode_metrics({}, cfg.secagg.range)]
    plain = [{"epsilon": float("nan")}, {"epsilon": float("inf")}, {"epsilon": True}, {"epsilon": 1.5}]
    res = SecureRoundResult()
    outcome = _GroupOutcome(arrays, dict.fromkeys(nodes.values(), 1), plain)  # type: ignore[arg-type]
    _record_group(res, outcome, list(nodes), nodes, cfg, {"a": np.zeros(2, np.float32)}, 0, 1.0)
    assert res.metrics[0]["epsilon"] == 1.5 and res.epsilons == {"u3": 1.5}
