"""Simulated round time vs clients per round: the DP recipe's head on the packaged MiniLM.

    python benchmarks/round_time.py                          # 2, 5, 10, 20 clients per round
    python benchmarks/round_time.py --quick --backbone PATH --out DIR   # a smoke run

For each k a real simulation (``fedrlhf.simulation.run.run_simulation``, 2 Ray workers) of a
synthetic cohort of k users (24 pairs each), all k sampled in each of --rounds rounds, with the
DP recipe (``fedrlhf.config.DP_RECIPE``'s head on the last 4 layers, full-batch DP-GD, 20 steps a
round, record-level epsilon 8 over all rounds, as ``simulations/hh-harmless-local-dp.toml``; --no-dp:
the same without DP). Per round: the server's wall time (``rounds[].seconds``: send, train,
receive, aggregate), the devices' own ``client_round`` seconds (each train reply reports them,
read off a tapped Grid: ``grid_tap.py``), and what is left when the devices' work is spread
over the workers: ``round - sum(client seconds) / workers``. Round 1 is cold (each worker loads
the backbone, each device computes its features once); later rounds reuse both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL_PRESETS, machine, md_table, write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "round-time"


def run_config(args: argparse.Namespace, k: int) -> Any:
    from fedrlhf.config import DP_RECIPE, run_config_from_dict

    recipe = {key: v for key, v in DP_RECIPE.items() if key != "train.epochs"}  # epochs: per round below
    privacy = {"enabled": True, "target_epsilon": 8.0, "delta": 1e-5} if args.dp else {}
    return run_config_from_dict(
        {
            **recipe,
            "model": {"backbone": args.backbone, "max_length": 64},
            "privacy": privacy,
            "federation": {
                "rounds": args.rounds,
                "clients_per_round": k,
                "local_epochs": 20.0,
                "eval_every": 0,
                "save_every_round": False,
            },
            "cohort": {"num_clients": k, "pairs_per_user": 24, "test_pairs_per_user": 2},
        }
    )


def cell(args: argparse.Namespace, k: int) -> dict[str, Any]:
    from grid_tap import tapped_simulation

    cfg = run_config(args, k)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report, tap = tapped_simulation(cfg, Path(tmp) / "run", workers=args.workers)
    wall = time.perf_counter() - start
    rounds = []
    for row in report["rounds"]:
        seconds = tap.client_seconds.get(row["round"], [])
        rounds.append(
            {
                "round": row["round"],
                "seconds": row["seconds"],
                "clients_ok": row["clients_ok"],
                "client_seconds_sum": sum(seconds),
                "client_seconds_max": max(seconds, default=0.0),
                "framework_seconds": row["seconds"] - sum(seconds) / args.workers,
            }
        )
    warm = rounds[1:] or rounds
    return {
        "clients_per_round": k,
        "workers": args.workers,
        "wall_seconds": wall,
        "rounds": rounds,
        "cold_seconds": rounds[0]["seconds"],
        "warm_seconds_median": statistics.median(r["seconds"] for r in warm),
        "warm_client_seconds_median": statistics.median(r["client_seconds_sum"] for r in warm),
        "warm_framework_seconds_median": statistics.median(r["framework_seconds"] for r in warm),
        "epsilon": report["final"]["epsilon"],
    }


def table(cells: list[dict[str, Any]]) -> str:
    rows = [
        [
            c["clients_per_round"],
            f"{c['cold_seconds']:.1f}",
            f"{c['warm_seconds_median']:.2f}",
            f"{c['warm_client_seconds_median']:.2f}",
            f"{c['warm_framework_seconds_median']:.2f}",
            f"{c['warm_seconds_median'] / c['clients_per_round']:.3f}",
            f"{c['wall_seconds']:.0f}",
        ]
        for c in cells
    ]
    head = [
        "clients per round",
        "round 1 s (cold)",
        "later rounds s (median)",
        "devices' own s (sum)",
        "left over: round - sum / workers",
        "s per client (later rounds)",
        "whole run s (Ray start, eval, report)",
    ]
    return md_table(head, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--clients", default="2,5,10,20", help="clients per round, comma list")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-dp", dest="dp", action="store_false", help="the recipe's model without DP")
    p.add_argument("--quick", action="store_true", help="2 clients, 2 rounds (a smoke run)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    try:
        ks = [int(v) for v in args.clients.split(",")]
    except ValueError:
        sys.exit(f"--clients: expected a comma list of integers, got {args.clients!r}")
    if args.quick:
        ks, args.rounds = [2], 2
    if args.rounds < 2:
        sys.exit("--rounds must be >= 2 (round 1 is cold; the later rounds are the steady state)")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    info, cells = machine(), []
    for k in ks:
        cells.append(cell(args, k))
        c = cells[-1]
        print(
            f"{k} clients per round: round 1 {c['cold_seconds']:.1f} s, later rounds "
            f"{c['warm_seconds_median']:.2f} s (devices {c['warm_client_seconds_median']:.2f} s summed), "
            f"run {c['wall_seconds']:.0f} s",
            flush=True,
        )
    text = table(cells)
    print("\n" + text)
    info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    settings = {**vars(args), "clients": ks, "model": MODEL_PRESETS["head-recipe"]}
    out = Path(args.out)
    write_json(out / "round_time.json", {"settings": settings, "machine": info, "cells": cells})
    (out / "table.md").write_text(text + "\n")
    print(f"\nwrote {out / 'round_time.json'}")


if __name__ == "__main__":
    main()
