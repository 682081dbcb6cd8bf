"""benchmarks/feature_batching.py at smoke size: both ways time the same texts, same features."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.helpers import read_json, run


def test_per_client_and_one_pass_features_agree(tmp_path: Path, tiny_bert: str) -> None:
    out = tmp_path / "fb.json"
    args = ("--clients", "3", "--pairs", "4", "--batch", "4", "--max-length", "32")
    run("feature_batching.py", *args, "--backbone", tiny_bert, "--out", str(out))
    data = read_json(out)
    assert data["clients"] == 3 and data["texts"] == 2 * sum([4, 4, 4])
    assert data["per_client_seconds"] > 0 and data["one_pass_seconds"] > 0
    assert data["max_feature_difference"] < 1e-4  # the order of computation changes nothing
