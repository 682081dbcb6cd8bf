"""benchmarks/robustness_seeds.py: defences against clean FedAvg of the same seed (the issue's goal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.helpers import BENCHMARKS, load

PAIRS = 10


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The script imports its sibling modules (heldout, robustness), as run from benchmarks/."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def cell(right: int) -> dict:
    """A finished cell whose final model is right on the first ``right`` of the held-out pairs."""
    bits = "1" * right + "0" * (PAIRS - right)
    return {
        "status": "ok",
        "accuracy": right / PAIRS,
        "heldout": {"correct": bits, "accuracy": right / PAIRS},
    }


def grid(folder: Path, seed: int, cells: dict[str, int], overrides: list[str]) -> Path:
    attacks = sorted({k.split("|")[0] for k in cells})
    data = {
        "meta": {"overrides": [f"federation.seed={seed}", *overrides]},
        "config": {"federation": {"seed": seed}},
        "attacks": {a: "" for a in attacks},
        "defences": sorted({k.split("|")[1] for k in cells}),
        "cells": {k: cell(v) for k, v in cells.items()},
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def test_worst_case_and_clean_cost_are_against_clean_fedavg_of_the_same_seed(tmp_path: Path) -> None:
    seeds = load("robustness_seeds")
    grids = [
        grid(tmp_path / "fedavg0", 0, {"none|mean": 8}, []),
        grid(tmp_path / "fedavg1", 1, {"none|mean": 6}, []),
        # a defence that barely learns never drops from its own clean run, but is 4-5 points under FedAvg
        grid(tmp_path / "idle0", 0, {"none|krum": 4, "label_flip|krum": 4}, ["robust.x=1"]),
        grid(tmp_path / "idle1", 1, {"none|krum": 1, "label_flip|krum": 1}, ["robust.x=1"]),
        # another defence on seed 0 under the same setting: grids of one seed may hold different defences
        grid(tmp_path / "other0", 0, {"none|dnc": 8, "label_flip|dnc": 7}, ["robust.x=1"]),
    ]
    summary = seeds.summarize([seeds.load_grid(g) for g in grids], None, 1)
    rows = {r["defence"]: r for r in summary["rows"]}
    idle = rows["krum"]
    assert idle["largest_mean_drop"]["mean"] == 0.0  # from its own clean run: nothing lost
    assert idle["vs_fedavg_clean"]["clean"]["values"] == pytest.approx([-0.4, -0.5])
    assert idle["worst_vs_fedavg_clean"]["attack"] == "label_flip"
    assert idle["worst_vs_fedavg_clean"]["mean"] == pytest.approx(-0.45)
    assert rows["dnc"]["worst_vs_fedavg_clean"]["values"] == pytest.approx([-0.1])
    assert "NOT within 2 points" in seeds.markdown(summary, [seeds.load_grid(g) for g in grids])


def test_one_defence_twice_on_a_seed_is_refused(tmp_path: Path) -> None:
    seeds = load("robustness_seeds")
    grids = [
        grid(tmp_path / "a", 0, {"none|dnc": 8}, ["robust.x=1"]),
        grid(tmp_path / "b", 0, {"none|dnc": 7}, ["robust.x=1"]),
    ]
    with pytest.raises(SystemExit, match="one grid per seed and defence"):
        seeds.summarize([seeds.load_grid(g) for g in grids], None, 1)
