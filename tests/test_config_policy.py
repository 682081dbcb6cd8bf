"""``federation.task`` and the ``[policy]`` section: validation, errors naming the key, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrlhf.config import PolicySettings, RunConfig, load_run_config, run_config_from_dict
from fedrlhf.errors import ConfigError


def test_the_default_task_is_the_reward_model_and_the_default_policy_is_smollm2() -> None:
    cfg = RunConfig()
    assert cfg.federation.task == "reward"
    assert cfg.policy == PolicySettings() and cfg.policy.model == "smollm2"


@pytest.mark.parametrize("task", ["ppo", "DPO", "", 1])
def test_a_bad_task_names_the_key_and_the_choices(task: object) -> None:
    with pytest.raises(ConfigError, match=r"federation.task must be one of reward, dpo, kto, got"):
        run_config_from_dict({"federation": {"task": task}})


def test_a_top_level_task_is_refused_as_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('task = "dpo"\n')
    with pytest.raises(ConfigError, match=r"task = 'dpo' is not a table"):
        load_run_config(path)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"beta": 0.0}, "policy.beta"),
        ({"beta": float("nan")}, "policy.beta"),
        ({"lora_r": 0}, "policy.lora_r"),
        ({"max_length": 4}, "policy.max_length"),
        ({"model": " "}, "policy.model"),
        ({"lora_target_modules": []}, "policy.lora_target_modules"),
    ],
)
def test_bad_policy_settings_name_the_key(values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        run_config_from_dict({"policy": values})


def test_an_unknown_policy_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[policy\] unknown setting\(s\) \['bta'\]"):
        run_config_from_dict({"policy": {"bta": 0.2}})


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"federation": {"personal": True}}, "federation.personal"),
        ({"warm_start": {"data": "public.jsonl"}}, "warm_start.data"),
        ({"federation": {"initial_model": "runs/warm"}}, "federation.initial_model"),
        ({"attack": {"name": "backdoor", "fraction": 0.2}}, "attack.name = 'backdoor'"),
    ],
)
def test_reward_model_features_a_policy_task_lacks_are_refused(settings: dict, named: str) -> None:
    for task in ("dpo", "kto"):
        data = {**settings, "federation": {**settings.get("federation", {}), "task": task}}
        with pytest.raises(ConfigError, match=rf"federation.task = '{task}' does not support {named}"):
            run_config_from_dict(data)
    run_config_from_dict(settings)  # the reward task has them


def test_secure_rounds_train_a_policy_too() -> None:
    cfg = run_config_from_dict(
        {"federation": {"task": "dpo"}, "secagg": {"enabled": True, "dp_noise_multiplier": 0.5}}
    )
    assert cfg.secagg.enabled and cfg.federation.task == "dpo"


def test_policy_settings_round_trip_through_flowers_flat_run_config(tmp_path: Path) -> None:
    path = tmp_path / "dpo.toml"
    path.write_text(
        '[federation]\ntask = "kto"\n'
        '[policy]\nmodel = "some/dir"\nlora_target_modules = ["q_proj", "v_proj"]\n'
    )
    cfg = load_run_config(path, ["policy.beta=0.3", "robust.rule='coordinate_median'"])
    assert cfg.federation.task == "kto" and cfg.policy.lora_target_modules == ("q_proj", "v_proj")
    assert cfg.policy.beta == 0.3 and cfg.robust.rule == "coordinate_median"  # robust rules apply
    flat = cfg.to_flat()
    assert flat["policy.lora_target_modules"] == "q_proj,v_proj" and flat["federation.task"] == "kto"
    assert run_config_from_dict(flat) == cfg


def test_record_level_distributed_dp_is_a_policy_task_mechanism_too() -> None:
    for task in ("dpo", "kto"):
        cfg = run_config_from_dict(
            {
                "federation": {"task": task},
                "secagg": {"enabled": True, "record_dp": True, "clipping_range": 50.0},
                "privacy": {"enabled": True, "target_epsilon": 8.0},
                "policy": {"lora_layers": 2, "lora_target_modules": ["v_proj"]},
            }
        )
        assert cfg.secagg.record_dp and cfg.policy.lora_layers == 2
