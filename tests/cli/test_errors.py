"""`fedrlhf train` / `eval`: bad input is one line on stderr and exit code 2; nothing is deleted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedrlhf.cli import main
from fedrlhf.feedback import write_jsonl
from fedrlhf.io import MARKER
from tests.helpers import synthetic_pairs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    write_jsonl(path, synthetic_pairs(24, seed=0))
    return path


def _train(tiny_bert: str, data: Path, out: Path, *extra: str) -> int:
    args = ["train", "--data", str(data), "--out", str(out), "--backbone", tiny_bert]
    return main([*args, "--max-length", "32", "--epochs", "1", "--quiet", *extra])


@pytest.fixture(scope="module")
def model(tiny_bert: str, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "rm"
    assert _train(tiny_bert, data, out) == 0
    return out


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single stderr line of a failed command (checked: prefix, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fedrlhf {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _eval(model: Path, data: Path, *extra: str) -> int:
    return main(["eval", "--model", str(model), "--data", str(data), "--json", *extra])


# ----------------------------------------------------------------------------- item 1: --out


def test_out_refuses_a_directory_fedrlhf_did_not_create(tiny_bert, data, tmp_path, capsys) -> None:
    v = tmp_path / "v"
    (v / "sub").mkdir(parents=True)
    (v / "notes.txt").write_text("x\n")
    assert _train(tiny_bert, data, v) == 2
    line = one_error_line(capsys, "train")
    assert f"--out {v} is a directory that fedrlhf did not create (it holds notes.txt, sub/)" in line
    assert (v / "notes.txt").read_text() == "x\n"
    assert sorted(p.name for p in v.iterdir()) == ["notes.txt", "sub"]


def test_out_refuses_a_file_and_keeps_it(tiny_bert, data, tmp_path, capsys) -> None:
    f = tmp_path / "f"
    f.write_text("precious")
    assert _train(tiny_bert, data, f) == 2
    assert "is a file" in one_error_line(capsys, "train")
    assert f.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_retraining_into_a_fedrlhf_model_directory_replaces_it(tiny_bert, data, model, tmp_path) -> None:
    out = tmp_path / "rm"
    shutil.copytree(model, out)
    assert (out / MARKER).is_file() and (out / "training.json").is_file()
    assert _train(tiny_bert, data, out, "--seed", "1") == 0
    written = {p.name for p in out.iterdir()}
    assert {"training.json", "fedrlhf_config.json", "head.safetensors", MARKER} <= written
    (out / "notes.txt").write_text("mine")  # now the user added a file: the next train refuses
    assert _train(tiny_bert, data, out) == 2 and (out / "notes.txt").read_text() == "mine"


def test_out_under_an_unwritable_path_is_one_line(tiny_bert, data, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert _train(tiny_bert, data, tmp_path / "file" / "rm") == 2
    assert "is a file" in one_error_line(capsys, "train")
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    assert _train(tiny_bert, data, Path("/sys/fedrlhf-test/rm")) == 2
    assert "/sys/fedrlhf-test" in one_error_line(capsys, "train")


# ----------------------------------------------------------------------------- item 10


def test_huge_learning_rate_stops_with_diverged_and_saves_nothing(tiny_bert, data, tmp_path, capsys) -> None:
    assert _train(tiny_bert, data, tmp_path / "rm", "--lr", "1e30") == 2
    assert "training diverged at step" in one_error_line(capsys, "train")
    assert not (tmp_path / "rm").exists()


def test_dp_delta_must_be_small(tiny_bert, data, tmp_path, capsys) -> None:
    assert _train(tiny_bert, data, tmp_path / "rm", "--dp-epsilon", "4", "--dp-delta", "0.5") == 2
    assert "privacy.delta must be in (0, 0.001), got 0.5" in one_error_line(capsys, "train")
    many = tmp_path / "many.jsonl"
    write_jsonl(many, synthetic_pairs(2000, seed=2))
    assert _train(tiny_bert, many, tmp_path / "rm", "--dp-epsilon", "4", "--dp-delta", "9e-4") == 2
    assert "not below 1/N = 0.0005 for N = 2000" in one_error_line(capsys, "train")
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize("size", ["0", "-1", "x"])
def test_eval_batch_size_must_be_positive(model, data, size, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _eval(model, data, "--batch-size", size)
    assert info.value.code == 2
    assert "argument --batch-size: must be an integer >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 14


def test_per_pair_a_directory(model, data, tmp_path, capsys) -> None:
    assert _eval(model, data, "--per-pair", str(tmp_path)) == 2
    assert f"--per-pair {tmp_path} is a directory" in one_error_line(capsys, "eval")


def test_cache_dir_a_file(tiny_bert, data, tmp_path, capsys) -> None:
    (tmp_path / "cache").write_text("x")
    assert _train(tiny_bert, data, tmp_path / "rm", "--cache-dir", str(tmp_path / "cache")) == 2
    assert f"cache directory {tmp_path / 'cache'} is a file" in one_error_line(capsys, "train")


def test_max_length_above_the_backbone_limit(tiny_bert, data, tmp_path, capsys) -> None:
    assert _train(tiny_bert, data, tmp_path / "rm", "--max-length", "4096") == 2
    line = one_error_line(capsys, "train")
    assert "is 4096" in line and "at most 512 tokens" in line


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("adapter_model.safetensors", _truncate),
        ("head.safetensors", _truncate),
        ("fedrlhf_config.json", _truncate),
        ("fedrlhf_config.json", lambda p: p.write_bytes(b"\xff\xfe not utf-8")),
        ("fedrlhf_config.json", lambda p: p.write_text("[1, 2]")),
        ("head.safetensors", lambda p: p.unlink()),
    ],
)
def test_corrupt_model_file_is_named(model, data, tmp_path, capsys, name, damage) -> None:
    broken = tmp_path / "rm"
    shutil.copytree(model, broken)
    damage(broken / name)
    assert _eval(broken, data) == 2
    assert str(broken / name) in one_error_line(capsys, "eval")


def test_nan_in_the_head_is_a_corrupt_model(model, data, tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "rm"
    shutil.copytree(model, broken)
    head = load_file(broken / "head.safetensors")
    head["weight"][0, 0] = float("nan")
    save_file(head, broken / "head.safetensors")
    assert _eval(broken, data) == 2
    assert "holds nan or inf" in one_error_line(capsys, "eval")


@pytest.mark.parametrize("bad", [b'"\\ud800 x"', b'"\xff x"'])
def test_lone_surrogate_or_bad_byte_in_data_names_file_and_line(tiny_bert, tmp_path, capsys, bad) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(good + b'\n{"prompt": "p", "chosen": ' + bad + b', "rejected": "b"}\n')
    assert _train(tiny_bert, path, tmp_path / "rm") == 2
    assert f"{path}, line 2" in one_error_line(capsys, "train")
