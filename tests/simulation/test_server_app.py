"""``flwr run . -c '...'``: every fedrlhf setting can be set per run (issue 28.4).

Flower fuses ``-c`` overrides into ``[tool.flwr.app.config]`` and refuses a key that
is not listed there; these tests run Flower's own parsing and merging on this
repository's pyproject.toml, then the ServerApp's :func:`settings`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, fuse_dicts, get_project_config, parse_config_args

from fedrlhf.config import RunConfig
from fedrlhf.simulation.server_app import APP_KEYS, settings

REPO = Path(__file__).resolve().parents[2]


def _app_config() -> dict:
    return flatten_dict(get_project_config(REPO)["tool"]["flwr"]["app"]["config"])


def _flwr_run_c(overrides: str) -> dict:
    """The run config the ServerApp gets for ``flwr run . <federation> -c '<overrides>'``."""
    return fuse_dicts(_app_config(), parse_config_args([overrides]), check_keys=True)


def test_every_setting_is_listed_in_the_app_config() -> None:
    cfg = RunConfig()
    every = {
        f"{section}.{f.name}"
        for section in RunConfig.__dataclass_fields__
        for f in dataclasses.fields(getattr(cfg, section))
    }
    listed = set(_app_config()) - set(APP_KEYS)
    assert sorted(every - listed) == [], "add these to [tool.flwr.app.config] in pyproject.toml"
    assert sorted(listed - every) == [], "not fedrlhf settings"
    settings(_app_config())  # the defaults as listed are a valid configuration


def test_privacy_is_set_from_the_command_line() -> None:
    cfg, run_dir, prepare = settings(
        _flwr_run_c(
            "privacy.enabled=true privacy.target_epsilon=8.0 privacy.lifetime_epsilon=10.0 "
            'prepare-cohort=false run-dir="/srv/runs/a"'
        )
    )
    assert cfg.privacy.enabled and cfg.privacy.target_epsilon == 8.0 and cfg.privacy.lifetime_epsilon == 10.0
    assert cfg.privacy.noise_multiplier is None and run_dir == Path("/srv/runs/a") and not prepare


def test_a_misspelt_key_is_named() -> None:
    """Flower refuses it; the SuperLink's log names it (flwr run says 'Invalid run configuration')."""
    with pytest.raises(ValueError, match="privacy.target_epsilom"):
        _flwr_run_c("privacy.target_epsilom=8.0")


def test_a_bad_value_names_its_key() -> None:
    from fedrlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="privacy"):
        settings(_flwr_run_c("privacy.enabled=true"))  # neither target_epsilon nor noise_multiplier


def test_a_refused_run_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 28.5: the traceback told the user to use --out, which flwr run does not have."""
    import numpy as np
    from flwr.app import Context, RecordDict

    from fedrlhf.federation.checkpoint import ServerState, save_checkpoint
    from fedrlhf.simulation.server_app import RunFailed, main

    run_config = _flwr_run_c(f'prepare-cohort=false run-dir="{tmp_path}"')
    cfg, _, _ = settings(run_config)
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.5))
    state = ServerState(round=2, global_state={"w": np.zeros(3, np.float32)}, rng={})
    state.rng = dict(np.random.default_rng(0).bit_generator.state)
    save_checkpoint(tmp_path, state, other)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    with pytest.raises(RunFailed):
        main(None, context)  # type: ignore[arg-type]  # refused before the grid is used
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedrlhf ServerApp: error: "), err
    assert "different settings" in err[0] and "run-dir" in err[0] and "--out" in err[0]
