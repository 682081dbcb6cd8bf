"""The README's main job, run as typed (after the install the test environment already did)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main_job() -> str:
    """The fedrlhf part of the README's first bash block (the part after the installs)."""
    block = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)[0]
    steps = [s.strip() for s in block.strip().split("&&")]
    runs = [s for s in steps if s.startswith(".venv/bin/fedrlhf ")]
    assert len(runs) == 1, steps
    assert all("pip install" in s or s.startswith("python3 -m venv") for s in steps if s not in runs)
    return runs[0]


def test_the_main_job_is_the_quickstart_simulation() -> None:
    assert (
        main_job() == ".venv/bin/fedrlhf simulate --config simulations/quickstart.toml --out runs/quickstart"
    )


@pytest.mark.slow
def test_the_main_job_learns_privately(tmp_path: Path) -> None:
    """A private run whose global model clearly improves, personal above global, nothing alarming printed."""
    shutil.copytree(REPO / "simulations", tmp_path / "simulations")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(BIN)
    env = {k: v for k, v in os.environ.items() if k != "FEDRLHF_HOME"}
    done = subprocess.run(
        ["bash", "-c", main_job()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert not re.search(r"Warning|Traceback", out), out[-3000:]
    report = json.loads((tmp_path / "runs" / "quickstart" / "report.json").read_text())
    final, initial = report["final"], report["initial"]
    assert final["epsilon"] is not None and 0 < final["epsilon"] <= 8.0 + 1e-6  # private, within budget
    assert final["epsilon_kind"] == "record"
    assert final["global_accuracy"] >= initial["global_accuracy"] + 0.05  # it clearly learns
    assert final["personal_accuracy"] > final["global_accuracy"]
    assert "eps 8.00" in out  # the round lines show the privacy spent
