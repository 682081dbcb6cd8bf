"""benchmarks/scale_rss.py at smoke size: a real simulation, its RSS sampled, the report copied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.helpers import read_json, run

pytestmark = pytest.mark.slow  # a simulation (Ray start-up)


def test_quick_run_samples_memory_and_keeps_the_report(tmp_path: Path, tiny_bert: str) -> None:
    smoke = [
        "--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "run"), "--every", "0.2",
        "--config", "simulations/quickstart.toml", "--set", f"model.backbone={json.dumps(tiny_bert)}",
        "--set", "cohort.num_clients=4", "--set", "federation.clients_per_round=4",
        "--set", "federation.rounds=1", "--set", "model.max_length=32",
    ]  # fmt: skip
    out = run("scale_rss.py", *smoke)
    name = "scale-1k"  # the README command's --name
    data = read_json(tmp_path / "results" / f"{name}.rss.json")
    assert data["rc"] == 0 and data["cmd"][1] == "simulate" and data["seconds"] > 0
    assert data["peak_rss_mb"] >= data["peak_driver_rss_mb"] > 50  # a Python process holding torch
    assert len(data["samples"]) >= 3
    assert max(s[1] for s in data["samples"]) / 2**20 == pytest.approx(data["peak_rss_mb"])
    report = read_json(tmp_path / "results" / f"{name}.report.json")
    assert [r["round"] for r in report["rounds"]] == [1]
    assert f"{name}: " in out and "peak RSS" in out
    assert (tmp_path / "run.log").is_file()
