"""Attackers in simulations: selection, data poisoning (idempotent), update replacement."""

import numpy as np
import pytest

from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.feedback import read_feedback, write_jsonl
from fedrlhf.simulation.cohorts import user_id
from fedrlhf.simulation.threats import attackers, poison_cohort, update_hook
from tests.helpers import synthetic_pairs


def _cfg(**attack):
    return run_config_from_dict({"cohort": {"num_clients": 10}, "attack": attack})


def test_attackers_are_a_seeded_fraction_of_the_cohort() -> None:
    cfg = _cfg(name="sign_flip", fraction=0.2)
    assert len(attackers(cfg)) == 2 and attackers(cfg) == attackers(cfg)
    assert attackers(_cfg(name="none", fraction=0.2)) == set()


def test_label_flip_poisons_only_attackers_once(tmp_path) -> None:
    cfg = _cfg(name="label_flip", fraction=0.2)
    for i in range(10):
        write_jsonl(tmp_path / user_id(i) / "train.jsonl", synthetic_pairs(8, seed=i))
    bad = poison_cohort(cfg, tmp_path)
    for i in range(10):
        records = read_feedback(tmp_path / user_id(i) / "train.jsonl").records
        flipped = records[0].chosen == synthetic_pairs(8, seed=i)[0].rejected
        assert flipped == (user_id(i) in bad)
    poison_cohort(cfg, tmp_path)  # a resumed run must not flip them back
    victim = sorted(bad)[0]
    again = read_feedback(tmp_path / victim / "train.jsonl").records
    assert again[0].chosen == synthetic_pairs(8, seed=int(victim[-5:]))[0].rejected


def test_update_hook_replaces_only_attackers() -> None:
    cfg = _cfg(name="sign_flip", fraction=0.2, params={"scale": 3.0})
    bad = attackers(cfg)
    hook = update_hook(cfg, bad)
    devices = [user_id(i) for i in range(10)]
    updates = [np.full(4, float(i + 1), dtype=np.float32) for i in range(10)]
    out = hook(1, devices, updates, np.random.default_rng(0))
    for d, u, o in zip(devices, updates, out, strict=False):
        if d in bad:
            assert np.allclose(o, -3.0 * u)
        else:
            assert o is u


def test_oracle_hook_withholds_exactly_the_attackers_whatever_the_attack() -> None:
    devices = [user_id(i) for i in range(10)]
    updates = [np.full(4, float(i + 1), dtype=np.float32) for i in range(10)]
    for name in ("sign_flip", "label_flip"):  # an update attack and a data attack
        cfg = _cfg(name=name, fraction=0.2, oracle=True)
        bad = attackers(cfg)
        out = update_hook(cfg, bad)(1, devices, updates, np.random.default_rng(0))
        assert [d for d, o in zip(devices, out, strict=True) if o is None] == sorted(bad)
        assert all(o is u for o, u in zip(out, updates, strict=True) if o is not None)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"attack": {"name": "none", "oracle": True}}, "needs attackers"),
        ({"attack": {"name": "sign_flip", "fraction": 0.2, "oracle": "yes"}}, "true or false"),
        (
            {"attack": {"name": "label_flip", "fraction": 0.2, "oracle": True}, "secagg": {"enabled": True}},
            "secure mode sees only group means; turn secagg off",
        ),
    ],
)
def test_oracle_config_errors_say_what_to_change(extra, words) -> None:
    with pytest.raises(ConfigError, match=words):
        run_config_from_dict({"cohort": {"num_clients": 10}, **extra})


def _coalition(tmp_path, tiny_bert, name: str, params: str = "", **extra):
    """Three attacking devices (of 15) with their data, marked as a coalition by poison_cohort."""
    cfg = run_config_from_dict(
        {
            "model": {"backbone": tiny_bert, "max_length": 32, "lora_r": 2},
            "train": {"batch_size": 4},
            "cohort": {"num_clients": 15},
            "federation": {"clients_per_round": 15, "seed": 3},
            "attack": {"name": name, "fraction": 0.2, "params": params},
            **extra,
        }
    )
    for i in range(15):
        write_jsonl(tmp_path / user_id(i) / "train.jsonl", synthetic_pairs(8, seed=i))
    bad = sorted(poison_cohort(cfg, tmp_path))
    return cfg, bad


def _global(cfg):
    from fedrlhf.models.state import get_trainable_state
    from fedrlhf.training.device import worker_model

    model, _ = worker_model(cfg.model)
    state = get_trainable_state(model)
    return state, list(state)


def _honest(tmp_path, member: str) -> np.ndarray:
    with np.load(tmp_path / ".coalition" / "round-00001" / f"{member}.npz") as z:
        return z["update"]


def test_secure_mode_attackers_forge_from_their_coalitions_honest_updates(tmp_path, tiny_bert) -> None:
    from fedrlhf.simulation.attacks import alie
    from fedrlhf.simulation.threats import forged_update
    from fedrlhf.training.device import DeviceDir

    cfg, bad = _coalition(tmp_path, tiny_bert, "alie")
    assert len(bad) == 3 and update_hook(cfg, set(bad)) is not None  # plain mode: the server hook
    state, names = _global(cfg)
    forged = {m: forged_update(DeviceDir(tmp_path / m), state, names, cfg, 1) for m in bad}
    honest = [_honest(tmp_path, m) for m in bad]  # each member trained once, then cached
    assert all(np.linalg.norm(h) > 0 for h in honest) and not np.allclose(honest[0], honest[1])
    expected = alie(honest, num_malicious=3, num_clients=15)[0]
    for vec, metrics in forged.values():  # every member sends the same ALIE vector
        np.testing.assert_allclose(vec, expected, rtol=1e-5, atol=1e-7)
        assert metrics["train_loss"] > 0
    honest_ids = {p.name for p in tmp_path.iterdir() if p.is_dir()} - set(bad) - {".coalition"}
    assert not any((tmp_path / d / "meta.json").is_file() for d in honest_ids)  # honest devices unmarked


def test_secure_mode_sign_flip_reverses_the_attackers_own_update_unclipped(tmp_path, tiny_bert) -> None:
    from fedrlhf.simulation.threats import forged_update
    from fedrlhf.training.device import DeviceDir

    cfg, bad = _coalition(
        tmp_path,
        tiny_bert,
        "sign_flip",
        "scale=4.0",
        secagg={"enabled": True, "min_group_size": 2, "num_groups": 7, "clip_norm": 1e-4},
        robust={"rule": "coordinate_median"},
        privacy={"enabled": True, "noise_multiplier": 1.0},
    )
    assert update_hook(cfg, set(bad)) is None  # secure mode: nothing is replaced at the server
    state, names = _global(cfg)
    for m in bad:
        vec, _ = forged_update(DeviceDir(tmp_path / m), state, names, cfg, 1)
        own = _honest(tmp_path, m)
        np.testing.assert_allclose(vec, -4.0 * own, rtol=1e-6)
        assert np.linalg.norm(vec) > cfg.secagg.clip_norm  # not clipped: the group-mean bound limits it
        assert not (tmp_path / m / "privacy_ledger.json").exists()  # the adversary trains without DP
