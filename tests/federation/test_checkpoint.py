"""Server checkpoints: resume after a move, and a clear one-line error for every broken file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.errors import ConfigError, ModelError
from fedrlhf.federation.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedrlhf.simulation.run import prepare_cohort

SMALL = {"cohort": {"num_clients": 3, "pairs_per_user": 4, "test_pairs_per_user": 2}}


def _state(round_: int = 2) -> ServerState:
    rng = np.random.default_rng(7)
    return ServerState(
        round=round_,
        global_state={"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.zeros(3, np.float32)},
        rng=dict(rng.bit_generator.state),
        history=[{"round": 0, "global_accuracy": None}, {"round": 1}, {"round": 2}],
        devices=["user-00000"],
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[RunConfig, Path]:
    """A run directory as ``simulate`` leaves it after two rounds (its config wired to it)."""
    run_dir = tmp_path / "run"
    cfg, _ = prepare_cohort(run_config_from_dict(SMALL), run_dir)
    save_checkpoint(run_dir, _state(), cfg)
    return cfg, run_dir


def test_a_moved_run_directory_resumes(saved: tuple[RunConfig, Path], tmp_path: Path) -> None:
    """The wired config holds absolute paths into the run directory (clients, held-out set);
    they must not make the moved run look like one with other settings."""
    cfg, run_dir = saved
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(run_dir), str(moved))
    moved_cfg, _ = prepare_cohort(run_config_from_dict(SMALL), moved)  # what a resumed simulate does
    assert moved_cfg.federation.clients_dir != cfg.federation.clients_dir
    state = load_checkpoint(moved, moved_cfg)
    assert state is not None and state.round == 2 and state.history == _state().history
    for name, value in _state().global_state.items():
        np.testing.assert_array_equal(state.global_state[name], value)
    other = run_config_from_dict({**SMALL, "train": {"lr": 0.5}})  # (federation.rounds alone may change)
    with pytest.raises(ConfigError, match="different settings"):
        load_checkpoint(moved, prepare_cohort(other, moved)[0])


def test_no_checkpoint_or_an_empty_one_is_a_fresh_run(tmp_path: Path) -> None:
    cfg = run_config_from_dict({})
    assert load_checkpoint(tmp_path, cfg) is None
    (tmp_path / "checkpoint").mkdir()
    assert load_checkpoint(tmp_path, cfg) is None


def _meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("state.json", "delete", "state.json: missing"),
        ("global.safetensors", "delete", "global.safetensors: missing"),
        ("state.json", b"[]", "holds a JSON list, not an object"),
        ("state.json", b"{}", "lacks round, rng, history, config_hash"),
        ("state.json", b'{"round": 2,', "state.json: unreadable"),
        ("state.json", b"\xff\xfe\x00garbage", "state.json: unreadable"),
        ("global.safetensors", "truncate", "global.safetensors: unreadable"),
        ("global.safetensors", b"", "global.safetensors: unreadable"),
    ],
)
def test_a_broken_checkpoint_file_is_one_line_naming_it(
    saved: tuple[RunConfig, Path], name: str, damage: bytes | str, message: str
) -> None:
    cfg, run_dir = saved
    target = run_dir / "checkpoint" / name
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    else:
        assert isinstance(damage, bytes)
        target.write_bytes(damage)
    with pytest.raises(ModelError, match=message) as err:
        load_checkpoint(run_dir, cfg)
    assert "\n" not in str(err.value) and str(target) in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("round", "2", "round is '2', not a int"),
        ("round", -1, "round is -1"),
        ("history", {"round": 1}, "history is .*not a list"),
        ("rng", {"seed": 0}, "rng is not a PCG64 state"),
        ("rng", [1, 2], "rng is .*not a dict"),
        ("user_dp", 3, "user_dp is 3, not a dict or NoneType"),
    ],
)
def test_a_state_json_value_of_the_wrong_kind_is_named(
    saved: tuple[RunConfig, Path], key: str, value: Any, message: str
) -> None:
    cfg, run_dir = saved
    meta = {**_meta(run_dir), key: value}
    (run_dir / "checkpoint" / "state.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=message):
        load_checkpoint(run_dir, cfg)


def test_a_non_finite_global_model_in_a_checkpoint_is_refused(saved: tuple[RunConfig, Path]) -> None:
    from safetensors.numpy import save_file

    cfg, run_dir = saved
    save_file({"w": np.full(3, np.inf, np.float32)}, str(run_dir / "checkpoint" / "global.safetensors"))
    with pytest.raises(ModelError, match="'w' is not finite float values"):
        load_checkpoint(run_dir, cfg)
