"""Bytes per round per client, down (server -> device) and up, plain vs SecAgg+, measured.

    python benchmarks/round_bytes.py                     # head-recipe and lora, MiniLM, 8 clients
    python benchmarks/round_bytes.py --quick --backbone PATH --out DIR   # smoke run

Each cell is a real simulated run (``fedrlhf.simulation.run.run_simulation``: a synthetic cohort,
every client in every round, FedAvg) whose server Grid is tapped (``grid_tap.py``): every train
message is serialized as Flower serializes it (``recorddict_to_proto(content).ByteSize()``) and
counted, per round. Secure mode runs the default ``[secagg]`` settings (groups of
``secagg.min_group_size`` = 4, SecAgg+ with shares = group size, clip 1.0, quantization 2^20).
What the run's own ``report.json`` says (``rounds[].bytes_up / bytes_down``) is printed beside
it: plain mode counts the arrays only, secure mode the serialized protocol (the same measure).
Bytes do not depend on training, so devices hold few short pairs; the figures are exact for
these settings (per client they depend on the model, the mode and the group size only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL_PRESETS, machine, md_table, write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "round-bytes"


def run_config(args: argparse.Namespace, preset: str, secure: bool) -> Any:
    from fedrlhf.config import run_config_from_dict

    return run_config_from_dict(
        {
            "model": {"backbone": args.backbone, "max_length": 32, **MODEL_PRESETS[preset]},
            "train": {"batch_size": 4, "lr": 1e-3},
            "federation": {
                "rounds": args.rounds,
                "clients_per_round": args.clients,
                "eval_every": 0,
                "save_every_round": False,
            },
            "cohort": {"num_clients": args.clients, "pairs_per_user": 4, "test_pairs_per_user": 1},
            "secagg": {"enabled": secure},
        }
    )


def cell(args: argparse.Namespace, preset: str, secure: bool) -> dict[str, Any]:
    """One tapped run; bytes per client per round (mean over rounds), measured and as reported."""
    from grid_tap import tapped_simulation

    cfg = run_config(args, preset, secure)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report, tap = tapped_simulation(cfg, Path(tmp) / "run", workers=args.workers)
    rounds = tap.per_round("train")
    per = args.clients * len(rounds)
    floats = state_floats(cfg)
    return {
        "model": preset,
        "mode": "secagg+" if secure else "plain",
        "group_size": cfg.secagg.min_group_size if secure else None,
        "clients_per_round": args.clients,
        "rounds": len(rounds),
        "floats": floats,
        "payload_bytes": 4 * floats,
        "down_per_client": sum(r["bytes_down"] for r in rounds) / per,
        "up_per_client": sum(r["bytes_up"] for r in rounds) / per,
        "messages_down_per_client": sum(r["messages_down"] for r in rounds) / per,
        "messages_up_per_client": sum(r["messages_up"] for r in rounds) / per,
        "reported_down_per_client": sum(r["bytes_down"] for r in report["rounds"]) / per,
        "reported_up_per_client": sum(r["bytes_up"] for r in report["rounds"]) / per,
        "per_round": rounds,
        "other_messages": {k: v for k, v in tap.totals().items() if k != "train"},
        "seconds": round(time.perf_counter() - start, 1),
    }


def state_floats(cfg: Any) -> int:
    """Floats of the run's global trainable state (what each device receives and sends back)."""
    from fedrlhf.models import RewardModel
    from fedrlhf.models.state import get_trainable_state

    return int(sum(v.size for v in get_trainable_state(RewardModel.build(cfg.model, seed=0)).values()))


def table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for c in cells:
        rows.append(
            [
                c["model"],
                f"{c['floats']:,}",
                c["mode"] + (f" (groups of {c['group_size']})" if c["group_size"] else ""),
                f"{c['down_per_client']:,.0f}",
                f"{c['up_per_client']:,.0f}",
                f"{c['up_per_client'] / c['payload_bytes']:.2f}x",
                f"{c['messages_down_per_client']:g} / {c['messages_up_per_client']:g}",
                f"{c['reported_down_per_client']:,.0f} / {c['reported_up_per_client']:,.0f}",
            ]
        )
    head = [
        "model",
        "floats",
        "mode",
        "bytes down / client / round",
        "bytes up / client / round",
        "up / payload (4 B a float)",
        "messages down / up",
        "report.json says (down / up)",
    ]
    return md_table(head, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--models", default="head-recipe,lora", help=f"comma list of {sorted(MODEL_PRESETS)}")
    p.add_argument("--clients", type=int, default=8, help="clients per round (= cohort size)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one model, one round (a smoke run)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_PRESETS]
    if bad:
        sys.exit(f"--models: unknown model(s) {bad}; choose from {sorted(MODEL_PRESETS)}")
    if args.quick:
        models, args.rounds = models[:1], 1
    if args.clients < 4:
        sys.exit("--clients must be >= 4 (secure mode needs a group of secagg.min_group_size = 4)")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    cells = []
    for preset in models:
        for secure in (False, True):
            cells.append(cell(args, preset, secure))
            c = cells[-1]
            print(
                f"{preset} {c['mode']}: {c['down_per_client']:,.0f} B down, {c['up_per_client']:,.0f} B up "
                f"per client per round ({c['seconds']} s)",
                flush=True,
            )
    text = table(cells)
    print("\n" + text)
    out = Path(args.out)
    write_json(out / "round_bytes.json", {"settings": vars(args), "machine": machine(), "cells": cells})
    (out / "table.md").write_text(text + "\n")
    print(f"\nwrote {out / 'round_bytes.json'}")


if __name__ == "__main__":
    main()
