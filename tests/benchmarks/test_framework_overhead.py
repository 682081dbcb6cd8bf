"""benchmarks/framework_overhead.py at smoke size: a simulation and the same clients in one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.helpers import read_json, run

pytestmark = pytest.mark.slow  # a simulation (Ray start-up)


def test_ratio_of_the_simulation_to_the_same_work_in_one_process(tmp_path: Path, tiny_bert: str) -> None:
    run(
        "framework_overhead.py",
        "--backbone",
        tiny_bert,
        "--clients",
        "2",
        "--rounds",
        "1",
        "--out",
        str(tmp_path),
    )
    data = read_json(tmp_path / "overhead.json")
    assert data["clients"] == 2 and data["rounds"] == 1
    assert data["ratio"] == pytest.approx(data["simulation_seconds"] / data["one_process_seconds"], rel=0.1)
    timing = data["simulation_timing"]  # the simulation's own report says where its time went
    assert timing["train_stage"] > 0 and timing["client_compute"] > 0 and timing["outside_rounds"] > 0
