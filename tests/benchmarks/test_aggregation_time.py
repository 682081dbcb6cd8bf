"""benchmarks/aggregation_time.py: its cells, its budget, its smoke run (not its timings)."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest

from fedrlhf.aggregation.rules import REGISTRY
from tests.benchmarks.helpers import load, read_json, run

agg = load("aggregation_time")
BASE = {"n": 10, "d": 64, "size": "quick", "f": 1}


def _feed(*events: dict | None) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    for event in events:
        lines.put(None if event is None else json.dumps(event) + "\n")
    return lines


def test_every_registered_rule_and_both_pre_aggregations_are_timed() -> None:
    todo = agg.combos("trimmed_mean")
    assert {rule for pre, rule in todo if pre == "none"} == set(REGISTRY)
    assert ("nnm", "trimmed_mean") in todo and ("bucketing", "trimmed_mean") in todo


def test_server_config_refuses_what_the_server_would() -> None:
    from fedrlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="bucketing"):
        agg.server_config("bucketing", "bulyan", 10, 1)  # 5 buckets, bulyan needs 7


def test_a_call_past_the_budget_is_recorded_as_skipped_not_waited_for() -> None:
    cells: list[dict] = []
    lines = _feed({"event": "ready"}, {"event": "start", "pre": "none", "rule": "krum"})
    assert agg._follow(lines, BASE, cells, budget=0.2) is False
    assert cells == [
        {**BASE, "pre": "none", "rule": "krum", "skipped": "skipped (over budget: first call > 0.2 s)"}
    ]
    assert agg.fmt(cells[0]) == "over budget"


def test_done_cells_carry_the_median_and_a_dead_worker_is_said() -> None:
    cells: list[dict] = []
    lines = _feed(
        {"event": "ready"},
        {"event": "start", "pre": "none", "rule": "mean"},
        {"event": "first", "seconds": 0.003},
        {"event": "done", "pre": "none", "rule": "mean", "times": [0.003, 0.001, 0.002]},
        {"event": "start", "pre": "nnm", "rule": "trimmed_mean"},
        None,
    )
    assert agg._follow(lines, BASE, cells, budget=5) is False
    assert cells[0]["seconds_median"] == 0.002 and cells[0]["repeats"] == 3
    assert cells[1]["skipped"] == "skipped (worker died)"
    assert agg._follow(_feed(None), BASE, [], budget=5) is None  # never started


@pytest.mark.slow
def test_quick_run_writes_every_cell(tmp_path: Path) -> None:
    out = run("aggregation_time.py", "--quick", "--out", str(tmp_path))
    data = read_json(tmp_path / "aggregation_time.json")
    assert data["settings"]["n"] == [10, 20] and data["settings"]["sizes"] == {"quick": 64}
    assert {"cpu", "cores", "loadavg_1min"} <= set(data["machine"])
    cells = data["cells"]
    assert len(cells) == 2 * (len(REGISTRY) + 2)
    for cell in cells:
        assert {"n", "d", "f", "pre", "rule"} <= set(cell)
        assert ("seconds_median" in cell and cell["seconds_median"] > 0) or "skipped" in cell, cell
    assert "| defence | n = 10 | n = 20 |" in out and (tmp_path / "tables.md").is_file()
    assert (tmp_path / "aggregation_time.png").is_file()
    # the tables and plot redrawn from the JSON alone are the ones the run printed
    (tmp_path / "aggregation_time.png").unlink()
    redrawn = run("aggregation_time.py", "--replot", str(tmp_path / "aggregation_time.json"))
    assert redrawn.strip() == (tmp_path / "tables.md").read_text().strip()
    assert (tmp_path / "aggregation_time.png").is_file()
