"""report.md: a newcomer reads what ran and what came out, in plain words and human units."""

from __future__ import annotations

import re
from typing import Any

from fedrlhf.config import RunConfig
from fedrlhf.simulation.report import markdown


def _report(**config: dict[str, Any]) -> dict[str, Any]:
    cfg = RunConfig().to_dict()
    cfg["cohort"].update(num_clients=12, alpha=0.3)
    cfg["federation"].update(rounds=2, clients_per_round=4, personal=True)
    for section, values in config.items():
        cfg[section].update(values)
    rows = [
        {
            "round": i,
            "global_accuracy": acc,
            "personal_accuracy": acc + 0.05,
            "client_global_accuracy": acc - 0.01,
            "epsilon": eps,
            "clients_ok": 4,
            "clients_sampled": 4,
            "failures": {"error": 0, "norm_ratio": i - 1},
            "dropped": ["user-0003"] if i == 2 else [],
            "refused": None,
            "bytes_up": 2_657_288,
            "bytes_down": 4_000_000,
            "seconds": 61.25,
        }
        for i, acc, eps in ((1, 0.61, 1.5), (2, 0.712, 3.2))
    ]
    return {
        "rounds": rows,
        "initial": {"round": 0, "global_accuracy": 0.5},
        "final": {
            "global_accuracy": 0.712,
            "personal_accuracy": 0.785,
            "client_global_accuracy": 0.702,
            "epsilon": 3.2,
            "delta": 1e-5,
            "epsilon_kind": "user",
            "attack_success_rate": None,
            "seconds": 192.4,
            "bytes_up": 5_314_576,
            "bytes_down": 8_000_000,
            "attackers_dropped_per_round": [0, 1],
            "bayes_accuracy": 0.809,
            "bayes_by_archetype": {"concise": 0.7933, "safety-first": 0.856},
            "population_utility_accuracy": 0.7389,
        },
        "federated_evaluation": {"clients": 4, "global_accuracy": 0.7, "personal_accuracy": 0.8},
        "cohort": {"attackers": ["user-0003"], "bayes_accuracy": 0.809, "minority_archetype": 4},
        "config": cfg,
    }


def _first_paragraph(md: str) -> str:
    return md.split("\n\n")[1]


def test_first_paragraph_says_what_ran_and_what_came_out() -> None:
    report = _report(
        user_dp={"enabled": True, "clip_norm": 0.5, "noise_multiplier": 1.1},
        robust={"rule": "multi_krum", "num_malicious": 1},
        secagg={"enabled": False},
    )
    first = _first_paragraph(markdown(report))
    for words in (
        "12 simulated users",
        "2 rounds, 4 users per round",
        "personal adapter",
        "user-level differential privacy",
        "epsilon 3.20 at delta 1e-05",
        "Multi-Krum",
        "tolerate 1 attacker",
        "secure aggregation off",
        "71.2%",  # global
        "78.5%",  # personal
        "80.9%",  # Bayes optimum
        "3 min 12 s",
        "5.31 MB",
        "8.00 MB",
    ):
        assert words in first, (words, first)


def test_secure_record_level_run_is_described_as_such() -> None:
    report = _report(
        privacy={"enabled": True, "target_epsilon": 8.0},
        secagg={"enabled": True, "min_group_size": 5},
        attack={"name": "backdoor", "fraction": 0.25},
    )
    report["final"].update(epsilon_kind="record", attack_success_rate=0.125)
    first = _first_paragraph(markdown(report))
    assert "differential privacy on each device's records" in first and "target epsilon 8" in first
    assert "secure aggregation on" in first and "sums of 5+ devices" in first
    assert "25% of the users are simulated attackers (backdoor)" in first
    assert "12.5% of its trigger pairs" in first


def test_no_reprs_no_key_names_human_units_and_plots_embedded() -> None:
    md = markdown(_report())
    assert "{" not in md and "}" not in md and "[" not in md.replace("![", "")
    assert "5314576" not in md and "_accuracy" not in md and "bayes_by_archetype" not in md
    assert "5.31 MB" in md and "| Wall time | 3 min 12 s |" in md
    assert "![accuracy per round](accuracy.png)" in md
    assert "![privacy spent and data sent per round](privacy_bytes.png)" in md
    # Bayes optimum per archetype is a table, the minority archetype marked
    assert "| concise | 79.3% |" in md and "| safety-first (minority) | 85.6% |" in md
    # the rounds table: MB and seconds, what went wrong in a round in words
    assert re.search(r"\| 2 \| 71\.2% \| 76\.2% \| 3\.20 \| 4 of 4 \| 2\.66 \| 4\.00 \| 61\.2 \|", md)
    assert "1 rejected as too large; 1 left out" in md


def test_a_round_says_how_many_it_left_out_for_agreeing_least() -> None:
    report = _report()
    report["rounds"][-1].update(dropped=["u1", "u2", "u3"], dissenters=["u2", "u3"])
    assert "3 left out (2 agreeing least)" in markdown(report)


def test_a_run_without_ground_truth_or_privacy_leaves_those_out() -> None:
    report = _report(cohort={"kind": "jsonl", "data": "hh.jsonl.gz", "partition": "iid"})
    for key in ("bayes_accuracy", "bayes_by_archetype", "population_utility_accuracy"):
        del report["final"][key]
    report["final"].update(epsilon=None, delta=None, epsilon_kind=None, personal_accuracy=None)
    report["config"]["federation"]["personal"] = False
    report["final"]["new_figure_seconds"] = 1.5  # a key added later still shows, with a label
    md = markdown(report)
    first = _first_paragraph(md)
    assert "pairs of hh.jsonl.gz" in first and "Privacy: no differential privacy." in first
    assert "Bayes" not in md and "personal adapter" not in first
    assert "| New figure seconds | 1.5 |" in md


def test_round_line_is_one_plain_line() -> None:
    from fedrlhf.simulation.report import round_line

    row = _report()["rounds"][1]
    assert round_line(row) == "round 2: 4/4 clients, acc 0.712, eps 3.20"
    assert round_line({**row, "global_accuracy": None, "epsilon": None}).endswith("acc -, eps -")


def test_a_server_optimiser_other_than_fedavg_is_named() -> None:
    assert "server optimiser" not in _first_paragraph(markdown(_report()))
    report = _report(federation={"server_optimizer": "fedadam"})
    assert "applied with the FedAdam server optimiser" in _first_paragraph(markdown(report))
