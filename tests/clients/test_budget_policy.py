"""The device's budget at init (0 = nothing, 'none' = no limit) and broken ledgers as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.cli import main as client_main
from fedrlhf.cli import main as fedrlhf_main
from fedrlhf.feedback import write_jsonl
from tests.helpers import synthetic_pairs

BROKEN = {
    "binary": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
    "empty": b"",
    "truncated": b'{"version": 1, "accountant": "rdp", "delta": 1e-05, "entr',
    "list": b"[]",
    "object": b"{}",
    "entries-object": b'{"version": 1, "accountant": "rdp", "delta": 1e-05, "entries": {}}',
    "entries-string": b'{"version": 1, "accountant": "rdp", "delta": 1e-05, "entries": ""}',
    "huge-noise": b'{"version": 1, "accountant": "rdp", "delta": 1e-05, "entries": '
    b'[{"noise_multiplier": 1e300, "sample_rate": 0.1, "steps": 3, "label": "x", "timestamp": "t"}]}',
    "huge-steps": b'{"version": 1, "accountant": "rdp", "delta": 1e-05, "entries": '
    b'[{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1'
    + b"0" * 400
    + b', "label": "x", "timestamp": "t"}]}',
}


def _client(capsys: pytest.CaptureFixture[str], device: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = client_main(["--device", str(device), *args])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err


def test_zero_means_nothing_may_be_spent(capsys, tmp_path: Path) -> None:
    device = tmp_path / "dev"
    assert _client(capsys, device, "init", "--lifetime-epsilon", "0")[0] == 0
    assert json.loads((device / "client.json").read_text())["lifetime_epsilon"] == 0
    code, out, _ = _client(capsys, device, "budget")
    assert code == 0 and "of 0 (0 left)" in out
    code, _, err = _client(capsys, device, "join", "--superlink", "127.0.0.1:9092", "--insecure", "--dry-run")
    _one_line_error(code, err, "spent its privacy budget")


def test_no_limit_is_an_explicit_word_stored_as_such(capsys, tmp_path: Path) -> None:
    device = tmp_path / "dev"
    assert _client(capsys, device, "init", "--lifetime-epsilon", "none")[0] == 0
    assert json.loads((device / "client.json").read_text())["lifetime_epsilon"] == "none"
    code, out, _ = _client(capsys, device, "budget")
    assert code == 0 and "(no limit)" in out
    for bad in ("-1", "inf", "nan", "lots"):
        code, _, err = _client(capsys, tmp_path / f"bad{bad}", "init", "--lifetime-epsilon", bad)
        assert code == 2 and "'none' for no limit" in err


def test_a_legacy_null_budget_is_refused(capsys, tmp_path: Path) -> None:
    device = tmp_path / "dev"
    assert _client(capsys, device, "init")[0] == 0
    settings = json.loads((device / "client.json").read_text())
    (device / "client.json").write_text(json.dumps({**settings, "lifetime_epsilon": None}))
    code, _, err = _client(capsys, device, "budget")
    _one_line_error(code, err, "client.json", "null")


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_ledger_is_one_line_naming_it(capsys, tmp_path: Path, kind: str) -> None:
    device = tmp_path / "dev"
    assert _client(capsys, device, "init")[0] == 0
    ledger = device / "privacy_ledger.json"
    ledger.write_bytes(BROKEN[kind])
    for args in (["budget"], ["join", "--superlink", "127.0.0.1:9092", "--insecure", "--dry-run"]):
        code, _, err = _client(capsys, device, *args)
        _one_line_error(code, err, str(ledger))
    capsys.readouterr()
    code = fedrlhf_main(["privacy", "report", "--ledger", str(ledger)])
    _one_line_error(code, capsys.readouterr().err, "fedrlhf privacy: error:", str(ledger))
    assert ledger.read_bytes() == BROKEN[kind]


@pytest.mark.parametrize("kind", ["entries-object", "binary"])
def test_train_refuses_a_broken_ledger_before_training(
    capsys, tmp_path: Path, tiny_bert: str, kind: str
) -> None:
    data, ledger = tmp_path / "d.jsonl", tmp_path / "L.json"
    write_jsonl(data, synthetic_pairs(8))
    ledger.write_bytes(BROKEN[kind])
    capsys.readouterr()
    code = fedrlhf_main(
        ["train", "--data", str(data), "--out", str(tmp_path / "out"), "--dp-epsilon", "3",
         "--ledger", str(ledger), "--backbone", tiny_bert, "--max-length", "32", "--quiet"]
    )  # fmt: skip
    _one_line_error(code, capsys.readouterr().err, "fedrlhf train: error:", str(ledger))
    assert ledger.read_bytes() == BROKEN[kind] and not (tmp_path / "out" / "privacy.json").exists()
