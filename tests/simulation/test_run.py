"""``fedrlhf simulate``'s checks before Flower starts: each refusal is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrlhf.cli import main

CONFIG = """
[cohort]
num_clients = 3
pairs_per_user = 4
test_pairs_per_user = 2
[federation]
rounds = 1
clients_per_round = 3
"""


def _simulate(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, list[str]]:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    code = main(["simulate", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet", *extra])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("workers", ["-1", "0"])
def test_workers_below_one_is_refused_not_a_hang(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, workers: str
) -> None:
    """Flower's engine finds no CPU for a client with num_cpus <= 0 and stops its backend while
    the server waits for replies (federation.timeout, an hour by default): refuse it up front."""
    code, err = _simulate(capsys, tmp_path, "--workers", workers)
    assert code == 2 and err == [
        f"fedrlhf simulate: error: workers (--workers) must be an integer >= 1, got {workers}"
    ]


def test_a_checkpoint_without_state_json_is_an_error_not_a_restart(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "run" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "global.safetensors").write_bytes(b"\0" * 16)
    code, err = _simulate(capsys, tmp_path)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"fedrlhf simulate: error: checkpoint file {checkpoint / 'state.json'}: missing")
