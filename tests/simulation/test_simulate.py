"""`fedrlhf simulate` end to end in Flower's simulation engine (slow: Ray start-up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrlhf.models import RewardModel

pytestmark = pytest.mark.slow

CONFIG = """
[model]
backbone = "{backbone}"
max_length = 32
personal_adapter = true
[train]
batch_size = 8
lr = 0.01
[federation]
rounds = {rounds}
clients_per_round = 3
personal = true
dropout = 0.25
seed = 3
[cohort]
kind = "synthetic"
num_clients = 4
pairs_per_user = 12
test_pairs_per_user = 6
encrypted_store = true
"""


def _simulate(config: Path, out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "fedrlhf.cli",
        "simulate",
        "--config",
        str(config),
        "--out",
        str(out),
        "--quiet",
    ]
    return subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the run and everything it started (Ray's workers share its session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _config(tmp_path: Path, tiny_bert: str, rounds: int) -> Path:
    path = tmp_path / f"sim-{rounds}.toml"
    path.write_text(CONFIG.format(backbone=tiny_bert, rounds=rounds))
    return path


def test_report_follows_the_contract(tiny_bert: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _finish(_simulate(_config(tmp_path, tiny_bert, 2), out))
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        assert {"round", "global_accuracy", "epsilon", "bytes_up", "bytes_down", "seconds"} <= set(row)
        assert row["bytes_down"] > 0 and 0 <= row["global_accuracy"] <= 1
        timing = row["timing"]  # where the round's time went
        assert 0 < timing["train_stage"] <= row["seconds"] <= timing["total"]
        assert timing["client_compute"] > 0 and timing["aggregation"] >= 0 and timing["evaluation"] > 0
    final = report["final"]
    spent = final["timing"]
    assert spent["rounds"] == pytest.approx(sum(r["timing"]["total"] for r in report["rounds"]))
    assert 0 < spent["outside_rounds"] < final["seconds"]
    assert "the devices' stage" in (out / "report.md").read_text()
    for key in ("global_accuracy", "personal_accuracy", "epsilon", "delta", "attack_success_rate", "seconds"):
        assert key in final
    assert 0.5 < final["bayes_accuracy"] < 1
    assert report["federated_evaluation"]["clients"] >= 1
    assert (out / "report.md").is_file() and (out / "accuracy.png").stat().st_size > 1000
    RewardModel.from_pretrained(out / "model")
    RewardModel.from_pretrained(out / "models" / "round-001")
    assert list((out / "clients").glob("user-*/personal.safetensors")), "no personal adapter was kept"
    assert not list((out / "clients").glob("user-*/train.jsonl")), "training data should live in the stores"
    assert len(list((out / "clients").glob("user-*/feedback.db"))) == 4


def test_killed_run_resumes_to_the_same_model(tiny_bert: str, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_bert, 4)
    _finish(_simulate(config, tmp_path / "straight"))
    killed = tmp_path / "killed"
    proc = _simulate(config, killed)
    state = killed / "checkpoint" / "state.json"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            if state.is_file() and json.loads(state.read_text())["round"] >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.2)
    finally:
        _kill_group(proc)  # SIGKILL mid-run
    assert json.loads(state.read_text())["round"] < 4
    _finish(_simulate(config, killed))  # the same command resumes
    a = load_file(str(tmp_path / "straight" / "checkpoint" / "global.safetensors"))
    b = load_file(str(killed / "checkpoint" / "global.safetensors"))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    rounds = [r["round"] for r in json.loads((killed / "report.json").read_text())["rounds"]]
    assert rounds == [1, 2, 3, 4]


ATTACK_CONFIG = """
[model]
backbone = "{backbone}"
max_length = 32
[train]
batch_size = 8
lr = 0.01
[federation]
rounds = 2
clients_per_round = {clients}
seed = {seed}
[cohort]
kind = "synthetic"
num_clients = {clients}
pairs_per_user = 8
test_pairs_per_user = 4
[attack]
{attack}
[robust]
{robust}
"""


def _attack_run(
    tmp_path: Path, tiny_bert: str, name: str, *, clients: int, seed: int, attack: str, robust: str
):
    """Run a 2-round attacked simulation of ``clients`` (all in every round); its report and folder."""
    config = tmp_path / f"{name}.toml"
    config.write_text(
        ATTACK_CONFIG.format(backbone=tiny_bert, clients=clients, seed=seed, attack=attack, robust=robust)
    )
    out = tmp_path / name
    _finish(_simulate(config, out))
    return json.loads((out / "report.json").read_text()), out


def test_filtering_rule_reports_the_devices_it_dropped(tiny_bert: str, tmp_path: Path) -> None:
    """Two sybil clones send one vector (cosine 1): the cosine filter drops exactly them each round,
    and the report says so, per round (``dropped``) and per attacker count."""
    report, _ = _attack_run(
        tmp_path,
        tiny_bert,
        "sybil",
        clients=6,
        seed=1,
        attack='name = "sybil_clones"\nfraction = 0.34',
        robust='rule = "cosine_filter"\nnum_malicious = 2',
    )
    attackers = sorted(report["cohort"]["attackers"])
    assert len(attackers) == 2
    assert [row["dropped"] for row in report["rounds"]] == [attackers, attackers]
    assert report["final"]["attackers_dropped_per_round"] == [2, 2]


def test_oracle_aggregates_honest_clients_only_whatever_the_attack(tiny_bert: str, tmp_path: Path) -> None:
    """With attack.oracle the server withholds the attackers' updates: every round aggregates the
    same honest updates, so a data attack and a huge update attack end in the very same model."""
    finals = []
    for name, params in (("label_flip", ""), ("sign_flip", "scale=50.0")):
        report, out = _attack_run(
            tmp_path,
            tiny_bert,
            name,
            clients=5,
            seed=2,
            attack=f'name = "{name}"\nparams = "{params}"\nfraction = 0.4\noracle = true',
            robust='rule = "mean"',
        )
        assert len(report["cohort"]["attackers"]) == 2
        assert [(r["clients_ok"], r["failures"].get("withheld")) for r in report["rounds"]] == [(3, 2)] * 2
        finals.append(load_file(str(out / "checkpoint" / "global.safetensors")))
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        np.testing.assert_array_equal(finals[0][key], finals[1][key], err_msg=key)


def test_norm_ratio_check_rejects_boosted_updates_and_the_report_counts_them(
    tiny_bert: str, tmp_path: Path
) -> None:
    """robust.max_norm_ratio: two sign flippers boosted 50x are left out before FedAvg every round."""
    report, _ = _attack_run(
        tmp_path,
        tiny_bert,
        "ratio",
        clients=6,
        seed=1,
        attack='name = "sign_flip"\nparams = "scale=50.0"\nfraction = 0.34',
        robust='rule = "mean"\nmax_norm_ratio = 3.0',
    )
    attackers = sorted(report["cohort"]["attackers"])
    assert len(attackers) == 2
    assert [row["dropped"] for row in report["rounds"]] == [attackers, attackers]
    assert [row["failures"].get("norm_ratio") for row in report["rounds"]] == [2, 2]
    assert [row["clients_ok"] for row in report["rounds"]] == [4, 4]
    assert report["final"]["attackers_dropped_per_round"] == [2, 2]


def test_client_clipping_makes_a_boosted_update_proof_that_counts_against_f(
    tiny_bert: str, tmp_path: Path
) -> None:
    """robust.client_clip_norm: honest clients clip to the bound, so the server rejects the two
    sign flippers' 50x updates as proof of attackers; they count against f = 2, and the two-sided
    filter (which drops 2f and needs more than 2f updates) runs with f = 0 over the 4 honest ones
    instead of failing or throwing honest updates out in the attackers' place.

    The bound (1e-4) is far below the tiny model's honest update norms: had the honest clients
    not clipped, their updates would have been rejected too."""
    report, _ = _attack_run(
        tmp_path,
        tiny_bert,
        "clientclip",
        clients=6,
        seed=1,
        attack='name = "sign_flip"\nparams = "scale=50.0"\nfraction = 0.34',
        robust='rule = "cosine_two_sided"\nnum_malicious = 2\nclient_clip_norm = 1e-4',
    )
    attackers = sorted(report["cohort"]["attackers"])
    assert len(attackers) == 2
    assert [row["failures"].get("norm") for row in report["rounds"]] == [2, 2]
    assert [row["clients_ok"] for row in report["rounds"]] == [4, 4]
    assert [row["dropped"] for row in report["rounds"]] == [attackers, attackers]
    assert report["final"]["attackers_dropped_per_round"] == [2, 2]


DISTRIBUTED_DP_CONFIG = """
[model]
backbone = "{backbone}"
max_length = 32
trainable = "head"
[train]
batch_size = 0
epochs = 20
lr = 0.02
[federation]
rounds = 2
clients_per_round = 8
seed = 1
[secagg]
enabled = true
min_group_size = 4
clip_norm = 0.5
dp_noise_multiplier = 1.0
[robust]
rule = "mean"
[cohort]
kind = "synthetic"
num_clients = 10
pairs_per_user = 8
test_pairs_per_user = 4
"""


def test_distributed_dp_over_secure_groups_reports_the_accountants_epsilon(
    tiny_bert: str, tmp_path: Path
) -> None:
    from fedrlhf.privacy.ledger import compose_epsilon

    config = tmp_path / "ddp.toml"
    config.write_text(DISTRIBUTED_DP_CONFIG.format(backbone=tiny_bert))
    out = tmp_path / "run"
    _finish(_simulate(config, out))
    report = json.loads((out / "report.json").read_text())
    want = compose_epsilon([(1.0, 0.8, 2)], accountant="rdp", delta=1e-5)  # z, 8 of 10, 2 rounds
    assert report["final"]["epsilon"] == pytest.approx(want)
    assert [r["epsilon"] for r in report["rounds"]][-1] == pytest.approx(want)
    assert all(r["clients_ok"] == 8 for r in report["rounds"])  # noised group means pass the check
    assert report["final"]["global_accuracy"] is not None


RECORD_DP_CONFIG = """
[model]
backbone = "{backbone}"
max_length = 32
trainable = "head"
[privacy]
enabled = true
target_epsilon = 4.0
max_grad_norm = 0.1
[federation]
rounds = 2
clients_per_round = 8
seed = 1
server_optimizer = "fedadam"
server_lr = 0.05
[secagg]
enabled = true
record_dp = true
min_group_size = 4
clip_norm = 1.0
clipping_range = {room}
[robust]
rule = "mean"
[cohort]
kind = "synthetic"
num_clients = 8
pairs_per_user = 8
test_pairs_per_user = 4
"""


def test_record_level_distributed_dp_spends_each_devices_ledger_one_step_a_round(
    tiny_bert: str, tmp_path: Path
) -> None:
    from fedrlhf.config import PrivacyConfig
    from fedrlhf.privacy.distributed import record_noise_multiplier
    from fedrlhf.privacy.ledger import compose_epsilon

    sigma = record_noise_multiplier(PrivacyConfig(enabled=True, target_epsilon=4.0), 2)
    config = tmp_path / "rdp.toml"
    room = round(1.0 + 6 * sigma * 0.1 / 2 + 1, 2)  # clip + 6 noise stds of a share (t = 3 of 4), + 1
    config.write_text(RECORD_DP_CONFIG.format(backbone=tiny_bert, room=room))
    out = tmp_path / "run"
    _finish(_simulate(config, out))
    report = json.loads((out / "report.json").read_text())
    want = compose_epsilon([(sigma, 1.0, 2)], accountant="rdp", delta=1e-5)  # 2 full-batch steps
    assert want == pytest.approx(4.0, abs=0.02)
    assert report["final"]["epsilon"] == pytest.approx(want)
    for r in report["rounds"]:
        assert r["clients_ok"] == 8 and r["refused"] is None  # noised group sums pass the check
        assert len(r["epsilon_by_device"]) == 8
    ledgers = sorted((out / "clients").glob("*/privacy_ledger.json"))
    assert len(ledgers) == 8
    for ledger in ledgers:
        entries = json.loads(ledger.read_text())["entries"]
        mechanisms = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        assert mechanisms == [(sigma, 1.0, 1)] * 2
