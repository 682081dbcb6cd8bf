"""report.md / report.json of a deployment (``prepare-cohort=false``, issue 28.6): no simulated
cohort, no server test data, devices that fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedrlhf.config import run_config_from_dict
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.simulation.report import write_report


def _row(round_: int, client_acc: float, failed: dict[str, str]) -> dict:
    asked = ["device-0", "device-1", "device-2"]
    return {
        "round": round_,
        "clients_sampled": 3,
        "clients_ok": 3 - len(failed),
        "failures": {"error": len(failed)},
        "refused": None,
        "global_accuracy": None,  # no federation.test_data on the server
        "client_global_accuracy": client_acc,  # the model the devices received
        "personal_accuracy": None,
        "epsilon": 1.5 * round_,
        "bytes_up": 1000,
        "bytes_down": 2000,
        "seconds": 20.0,
        "dropped": [],
        "asked": asked,
        "answered": [d for d in asked if d not in failed],
        "failed": failed,
        "identification": [],
    }


def test_a_deployment_report_says_who_took_part_and_the_final_models_accuracy(tmp_path: Path) -> None:
    cfg = run_config_from_dict({"cohort": {"num_clients": 4}, "federation": {"rounds": 2}})
    first = _row(1, 0.5, {})
    first["identification"] = [
        {
            "expected": 4,
            "online": 3,
            "asked": [11, 12, 13],
            "identified": ["device-0", "device-1", "device-2"],
            "failed": {},
        }
    ]
    refusal = "refused by the device's privacy policy: device-1: lifetime budget 8 spent"
    rows = [first, _row(2, 0.425, {"device-1": refusal})]
    rows[1]["epsilon_by_device"] = {"device-0": 3.0, "device-2": 2.75}
    zeros = {"w": np.zeros(2, np.float32)}
    state = ServerState(round=2, global_state=zeros, rng={}, history=[{"round": 0}, *rows])
    state.final_eval = {"clients": 2, "global_accuracy": 0.54, "personal_accuracy": None}
    write_report(tmp_path, cfg, state, {}, seconds=139.0)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["final"]["client_global_accuracy"] == 0.54  # the final model, not round 2's input
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# fedrlhf federation report") and "simulated" not in md.split("\n\n")[1]
    assert "54.0% of the devices' own test pairs" in md
    assert "3 node(s) online of 4 expected" in md
    assert "- Round 2: asked device-0, device-1, device-2; answered device-0, device-2" in md
    assert f"  - device-1 failed: {refusal}" in md
    assert "  - epsilon spent so far: device-0 3.00, device-2 2.75" in md


def test_the_round_line_names_failed_devices() -> None:
    from fedrlhf.simulation.report import round_line

    line = round_line(_row(2, 0.4, {"device-1": "no reply within federation.timeout (240 s)"}))
    assert line.endswith("; device-1 failed: no reply within federation.timeout (240 s)") and "2/3" in line
