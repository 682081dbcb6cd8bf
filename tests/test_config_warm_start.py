"""``[warm_start]``: validated like every section, settable wherever the others are."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrlhf.config import (
    NON_PRIVATE_DEFAULTS,
    RunConfig,
    WarmStartConfig,
    load_run_config,
    run_config_from_dict,
)
from fedrlhf.errors import ConfigError


def test_off_by_default_with_the_non_private_training_defaults() -> None:
    cfg = RunConfig().warm_start
    assert cfg.data == ()
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (
        NON_PRIVATE_DEFAULTS["train.epochs"],
        NON_PRIVATE_DEFAULTS["train.batch_size"],
        NON_PRIVATE_DEFAULTS["train.lr"],
    )


def test_data_is_one_path_or_a_list(tmp_path: Path) -> None:
    assert WarmStartConfig(data="a.jsonl").data == ("a.jsonl",)
    assert WarmStartConfig(data=tmp_path / "a.jsonl").data == (str(tmp_path / "a.jsonl"),)  # type: ignore[arg-type]
    assert WarmStartConfig(data="").data == ()
    nested = run_config_from_dict({"warm_start": {"data": ["a.jsonl", "b.jsonl.gz"], "epochs": 1}})
    assert nested.warm_start.data == ("a.jsonl", "b.jsonl.gz")
    flat = run_config_from_dict({"warm_start.data": "a.jsonl,b.jsonl.gz", "warm_start.seed": 3})
    assert flat.warm_start == WarmStartConfig(data=("a.jsonl", "b.jsonl.gz"), seed=3)
    assert run_config_from_dict(flat.to_flat()) == flat  # Flower's flat run config round-trips


def test_toml_and_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[warm_start]\ndata = "public.jsonl.gz"\nepochs = 3.0\n')
    cfg = load_run_config(path, ["warm_start.max_pairs=500", "warm_start.holdout=0.2"])
    assert cfg.warm_start == WarmStartConfig(
        data=("public.jsonl.gz",), epochs=3.0, max_pairs=500, holdout=0.2
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data", 5, "warm_start.data must be a file path or a list of them"),
        ("data", ["a.jsonl", ""], "warm_start.data must be a file path or a list of them"),
        ("epochs", 0, "warm_start.epochs must be > 0"),
        ("batch_size", -1, "warm_start.batch_size must be an integer >= 0"),
        ("batch_size", 2.5, "warm_start.batch_size must be an integer >= 0"),
        ("lr", float("nan"), "warm_start.lr must be a finite number"),
        ("max_pairs", -1, "warm_start.max_pairs must be an integer >= 0"),
        ("skip_invalid", "yes", "warm_start.skip_invalid must be true or false"),
        ("holdout", 1.0, r"warm_start.holdout must be a share in \[0, 1\)"),
        ("holdout", True, r"warm_start.holdout must be a share in \[0, 1\)"),
        ("seed", -2, "warm_start.seed must be an integer >= 0"),
    ],
)
def test_a_bad_value_names_its_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict({"warm_start": {"data": "public.jsonl", key: value}})


def test_an_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[warm_start\] unknown setting\(s\) \['epoch'\]"):
        run_config_from_dict({"warm_start": {"data": "public.jsonl", "epoch": 2}})


def test_warm_start_and_an_initial_model_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="warm_start.data and federation.initial_model both set"):
        run_config_from_dict(
            {"warm_start": {"data": "public.jsonl"}, "federation": {"initial_model": "runs/m"}}
        )
    # either alone is fine
    run_config_from_dict({"federation": {"initial_model": "runs/m"}})
    run_config_from_dict({"warm_start": {"data": "public.jsonl"}})
