"""The CLI contracts of ARCHITECTURE.md: `fedrlhf train` and `fedrlhf eval`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrlhf.cli import main
from fedrlhf.feedback import write_jsonl
from tests.helpers import synthetic_pairs


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, Path]:
    train, test = tmp_path / "train.jsonl.gz", tmp_path / "test.jsonl"
    write_jsonl(train, synthetic_pairs(96, seed=0))
    write_jsonl(test, synthetic_pairs(40, seed=1))
    return train, test


def _train(tiny_bert: str, train: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--data",
            str(train),
            "--out",
            str(out),
            "--backbone",
            tiny_bert,
            "--max-length",
            "32",
            "--epochs",
            "3",
            "--lr",
            "1e-2",
            "--quiet",
            *extra,
        ]
    )


def test_train_then_eval_json_and_per_pair(tiny_bert, data, tmp_path, capsys) -> None:
    train, test = data
    assert _train(tiny_bert, train, tmp_path / "rm") == 0
    capsys.readouterr()
    per_pair = tmp_path / "pp.jsonl"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "rm"),
                "--data",
                str(test),
                "--json",
                "--per-pair",
                str(per_pair),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 40 and out["accuracy"] >= 0.9
    lines = [json.loads(x) for x in per_pair.read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(40))
    acc = sum((x["margin"] > 0) + 0.5 * (x["margin"] == 0) for x in lines) / 40
    assert acc == pytest.approx(out["accuracy"])


def test_dp_training_writes_privacy_json(tiny_bert, data, tmp_path, capsys) -> None:
    train, _ = data
    assert _train(tiny_bert, train, tmp_path / "rm", "--dp-epsilon", "4") == 0
    privacy = json.loads((tmp_path / "rm" / "privacy.json").read_text())
    for key in (
        "epsilon",
        "delta",
        "noise_multiplier",
        "max_grad_norm",
        "sample_rate",
        "steps",
        "accountant",
    ):
        assert privacy[key] is not None, key
    assert 0 < privacy["epsilon"] <= 4.0 and privacy["steps"] > 0


def test_bad_input_is_a_one_line_error(tiny_bert, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 3}\n')
    assert _train(tiny_bert, bad, tmp_path / "rm") == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err and "Traceback" not in err
    assert main(["eval", "--model", str(tmp_path / "nothing"), "--data", str(bad), "--skip-invalid"]) == 2
    assert "fedrlhf_config.json" in capsys.readouterr().err


def test_help_of_every_command() -> None:
    for args in ([], ["train"], ["eval"]):
        out = subprocess.run(
            [sys.executable, "-m", "fedrlhf.cli", *args, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0 and "usage: fedrlhf" in out.stdout


def test_dp_training_uses_the_dp_recipe_unless_told_otherwise(tiny_bert, data, tmp_path, capsys) -> None:
    train, _ = data
    assert _train(tiny_bert, train, tmp_path / "rm", "--dp-epsilon", "8") == 0
    meta = json.loads((tmp_path / "rm" / "fedrlhf_config.json").read_text())["model"]
    assert meta["trainable"] == "head" and meta["pool_layers"] == 3  # the recipe's 4, capped: 2 layers + 1
    privacy = json.loads((tmp_path / "rm" / "privacy.json").read_text())
    assert privacy["sample_rate"] == 1.0 and privacy["steps"] == 3  # full-batch DP-GD, --epochs 3
    argv = ("--dp-epsilon", "8", "--trainable", "lora", "--batch-size", "8", "--epochs", "1")
    assert _train(tiny_bert, train, tmp_path / "rm2", *argv, "--ledger", str(tmp_path / "l2.json")) == 0
    meta = json.loads((tmp_path / "rm2" / "fedrlhf_config.json").read_text())["model"]
    assert meta["trainable"] == "lora"
    assert json.loads((tmp_path / "rm2" / "privacy.json").read_text())["sample_rate"] < 1.0
