"""benchmarks/dp_overhead.py at smoke size: both models, both sides, the recipe's feature pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.helpers import read_json, run

pytestmark = pytest.mark.slow  # five fresh processes, each loading torch and Opacus


def test_quick_run_compares_plain_and_dp_for_the_recipe_and_lora(tmp_path: Path, tiny_bert: str) -> None:
    out_file = tmp_path / "dp.json"
    out = run("dp_overhead.py", "--quick", "--backbone", tiny_bert, "--out", str(out_file))
    models = read_json(out_file)["models"]
    assert set(models) == {"recipe", "lora"}
    recipe, lora = models["recipe"], models["lora"]
    assert recipe["features"]["mode"] == "features" and recipe["features"]["input_seconds"] > 0
    assert lora["features"] is None
    for result in (recipe, lora):
        plain, dp = result["sides"]["plain"], result["sides"]["dp"]
        assert (plain["mode"], dp["mode"]) == ("plain", "dp")
        for side in (plain, dp):
            assert side["step_s_median"] > 0 and side["peak_rss_mb"] > 0
        assert result["ratio"]["time"] == pytest.approx(dp["step_s_median"] / plain["step_s_median"])
    # the recipe trains the head alone (its inputs the cached 4-layer features), LoRA much more
    assert recipe["sides"]["plain"]["trainable_params"] < lora["sides"]["plain"]["trainable_params"]
    assert recipe["sides"]["plain"]["steps"] == 3 and lora["sides"]["plain"]["steps"] == 2
    assert out.count("DP / plain:") == 2
