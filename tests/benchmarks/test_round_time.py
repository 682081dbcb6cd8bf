"""benchmarks/round_time.py at smoke size: round rows, the devices' own seconds, the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.helpers import read_json, run

pytestmark = pytest.mark.slow  # a simulation (Ray start-up)


def test_quick_run_times_rounds_and_reads_the_devices_seconds(tmp_path: Path, tiny_bert: str) -> None:
    out = run("round_time.py", "--quick", "--backbone", tiny_bert, "--out", str(tmp_path))
    data = read_json(tmp_path / "round_time.json")
    assert data["settings"]["clients"] == [2] and data["settings"]["dp"] is True
    (cell,) = data["cells"]
    assert cell["clients_per_round"] == 2 and [r["round"] for r in cell["rounds"]] == [1, 2]
    for r in cell["rounds"]:
        assert r["clients_ok"] == 2 and 0 < r["client_seconds_max"] <= r["client_seconds_sum"]
        assert r["framework_seconds"] == pytest.approx(r["seconds"] - r["client_seconds_sum"] / 2)
    assert 0 < cell["epsilon"] <= 8.0 + 1e-6  # the recipe's DP ran, within its target
    assert cell["wall_seconds"] > sum(r["seconds"] for r in cell["rounds"])
    assert "| clients per round |" in out
