"""benchmarks/round_bytes.py at smoke size: real messages counted, the secure count cross-checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.helpers import read_json, run

pytestmark = pytest.mark.slow  # two simulations (Ray start-up)


def test_quick_run_measures_plain_and_secure_rounds(tmp_path: Path, tiny_bert: str) -> None:
    out = run("round_bytes.py", "--quick", "--backbone", tiny_bert, "--clients", "4", "--out", str(tmp_path))
    data = read_json(tmp_path / "round_bytes.json")
    plain, secure = data["cells"]
    assert (plain["mode"], secure["mode"]) == ("plain", "secagg+") and secure["group_size"] == 4
    for cell in (plain, secure):
        assert cell["rounds"] == 1 and cell["payload_bytes"] == 4 * cell["floats"] > 0
        assert cell["per_round"][0]["messages_down"] == cell["messages_down_per_client"] * 4
    # plain: one message each way per client, holding at least the float32 arrays it reports
    assert plain["messages_down_per_client"] == plain["messages_up_per_client"] == 1
    # the server's own count (report.json) is of the serialized messages too, to the byte
    assert plain["reported_up_per_client"] == plain["up_per_client"]
    assert plain["reported_down_per_client"] == plain["down_per_client"]
    assert (
        plain["up_per_client"] > plain["payload_bytes"] and plain["down_per_client"] > plain["payload_bytes"]
    )
    # secure: the server's own count is of the same serialized messages, so the two agree exactly
    assert secure["messages_down_per_client"] > 1
    assert secure["up_per_client"] == secure["reported_up_per_client"]
    assert secure["down_per_client"] == secure["reported_down_per_client"]
    assert "| model | floats | mode |" in out and (tmp_path / "table.md").is_file()
