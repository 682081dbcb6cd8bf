"""Fuzzing every file the `fedrlhf` command reads: garbled input is one error line, never a traceback.

Each test takes a valid file (data JSONL, a saved model's files, a privacy ledger, a TOML run
config, a server checkpoint), garbles it (random bytes, truncation, flipped bytes, spliced
bytes, or a settings value swapped for any JSON value) and runs the CLI in-process.  The command
may still succeed when the garbling left the file valid; otherwise it must exit with code 2 and
print exactly one line, ``fedrlhf COMMAND: error: ...``, on stderr.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrlhf.cli import main
from fedrlhf.errors import FedRLHFError
from fedrlhf.feedback import write_jsonl
from tests.helpers import synthetic_pairs

REPO = Path(__file__).resolve().parents[2]
MODEL_FILES = ("fedrlhf_config.json", "head.safetensors", "adapter_model.safetensors")
fuzz = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def garbled(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` damaged one of four ways (or replaced by random bytes)."""
    how = draw(st.sampled_from(["random", "truncate", "flip", "splice"]))
    if how == "random" or not original:
        return draw(st.binary(max_size=300))
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    data = bytearray(original)
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=20)) + bytes(data[at:])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def assert_ok_or_one_error_line(code: int, err: str, command: str, *, may_succeed: bool = True) -> None:
    assert "Traceback" not in err, err
    if code == 0 and may_succeed:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"fedrlhf {command}: error: "), err


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per hypothesis example (fixtures such as tmp_path are one per test)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def trained(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data file, a model trained with DP on it, and its ledger."""
    root = tmp_path_factory.mktemp("fuzz")
    data, ledger, model = root / "data.jsonl", root / "ledger.json", root / "rm"
    write_jsonl(data, synthetic_pairs(6, seed=0))
    argv = ["train", "--data", str(data), "--out", str(model), "--backbone", tiny_bert, "--quiet"]
    argv += ["--max-length", "16", "--epochs", "1", "--dp-epsilon", "8", "--ledger", str(ledger)]
    assert main(argv) == 0 and ledger.is_file()
    return {"data": data, "model": model, "ledger": ledger}


def _model_copy(trained: dict[str, Path], tmp: Path) -> Path:
    model = tmp / "rm"
    model.mkdir()
    for name in MODEL_FILES:
        shutil.copy(trained["model"] / name, model / name)
    return model


@fuzz
@given(st.data(), st.sampled_from(["train", "eval"]))
def test_garbled_data_jsonl(trained, capsys, data: st.DataObject, command: str) -> None:
    with scratch() as tmp:
        path = tmp / "d.jsonl"
        path.write_bytes(data.draw(garbled(trained["data"].read_bytes())))
        if command == "eval":
            argv = ["eval", "--model", str(trained["model"]), "--data", str(path)]
        else:
            config = json.loads((trained["model"] / "fedrlhf_config.json").read_text())["model"]
            argv = ["train", "--data", str(path), "--out", str(tmp / "out"), "--quiet", "--epochs", "1"]
            argv += ["--backbone", config["backbone"], "--max-length", "16"]
        assert_ok_or_one_error_line(*run(capsys, argv), command)


@fuzz
@given(st.data(), st.sampled_from(MODEL_FILES))
def test_garbled_model_file(trained, capsys, data: st.DataObject, name: str) -> None:
    with scratch() as tmp:
        model = _model_copy(trained, tmp)
        (model / name).write_bytes(data.draw(garbled((model / name).read_bytes())))
        code, err = run(capsys, ["eval", "--model", str(model), "--data", str(trained["data"]), "--json"])
        assert_ok_or_one_error_line(code, err, "eval")
        if code == 2:
            assert name in err or str(model) in err


@fuzz
@given(st.sampled_from(["format", "version", "pooling", "model"]) | st.text(max_size=8), json_values)
def test_model_config_with_any_value(trained, capsys, key: str, value: Any) -> None:
    with scratch() as tmp:
        model = _model_copy(trained, tmp)
        meta = json.loads((model / "fedrlhf_config.json").read_text())
        section = meta["model"] if key in meta["model"] else meta
        section[key] = value
        (model / "fedrlhf_config.json").write_text(json.dumps(meta))
        code, err = run(capsys, ["eval", "--model", str(model), "--data", str(trained["data"]), "--json"])
        assert_ok_or_one_error_line(code, err, "eval")


@fuzz
@given(st.sampled_from(["backbone", "max_length", "pooling", "lora_r", "lora_target_modules"]), json_values)
def test_model_settings_with_any_value(trained, capsys, key: str, value: Any) -> None:
    with scratch() as tmp:
        model = _model_copy(trained, tmp)
        meta = json.loads((model / "fedrlhf_config.json").read_text())
        meta["model"][key] = value
        (model / "fedrlhf_config.json").write_text(json.dumps(meta))
        code, err = run(capsys, ["eval", "--model", str(model), "--data", str(trained["data"]), "--json"])
        assert_ok_or_one_error_line(code, err, "eval")


@fuzz
@given(st.data())
def test_garbled_ledger(trained, capsys, data: st.DataObject) -> None:
    with scratch() as tmp:
        path = tmp / "ledger.json"
        path.write_bytes(data.draw(garbled(trained["ledger"].read_bytes())))
        code, err = run(capsys, ["privacy", "report", "--ledger", str(path), "--json"])
        assert_ok_or_one_error_line(code, err, "privacy")


@fuzz
@given(st.data())
def test_garbled_toml_config(capsys, data: st.DataObject) -> None:
    with scratch() as tmp:
        path = tmp / "run.toml"
        path.write_bytes(data.draw(garbled((REPO / "simulations" / "quickstart.toml").read_bytes())))
        (tmp / "taken").write_text("a file, so that a config left valid stops before any simulation")
        code, err = run(capsys, ["simulate", "--config", str(path), "--out", str(tmp / "taken"), "--quiet"])
        assert_ok_or_one_error_line(code, err, "simulate", may_succeed=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A run config and a run directory holding the checkpoint of one round."""
    import numpy as np

    from fedrlhf.config import run_config_from_dict
    from fedrlhf.federation.checkpoint import ServerState, save_checkpoint

    cfg = run_config_from_dict({})
    run_dir = tmp_path_factory.mktemp("run")
    state = ServerState(round=1, global_state={"w": np.zeros(3, np.float32)}, rng={"seed": 0})
    save_checkpoint(run_dir, state, cfg)
    return cfg, run_dir


@fuzz
@given(st.data(), st.sampled_from(["state.json", "global.safetensors"]))
def test_garbled_checkpoint(checkpoint, data: st.DataObject, name: str) -> None:
    """`simulate` resumes from RUN/checkpoint inside Flower's engine: fuzzed at its loader."""
    with scratch() as tmp:
        from fedrlhf.federation.checkpoint import load_checkpoint

        cfg, run_dir = checkpoint
        shutil.copytree(run_dir / "checkpoint", tmp / "checkpoint")
        target = tmp / "checkpoint" / name
        target.write_bytes(data.draw(garbled(target.read_bytes())))
        try:
            load_checkpoint(tmp, cfg)
        except FedRLHFError as exc:
            assert "\n" not in str(exc)
