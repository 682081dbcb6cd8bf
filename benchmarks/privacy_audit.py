"""Empirical privacy: one-run canary audit (Steinke, Nasr, Jagielski 2023) of local training.

    python benchmarks/privacy_audit.py                        # tiny BERT, no DP and epsilon 1, 4, 8
    python benchmarks/privacy_audit.py --backbone minilm --epochs 5 --canaries 400

For each setting, ``fedrlhf.training.canary.run_canary_audit`` hides m random canary
pairs (each included with probability 1/2, in a random orientation) among the base
pairs, trains once, and turns the membership guesses into a lower bound on epsilon
(95 % confidence). A bound above the claimed epsilon means the DP is broken; the
non-private row shows how much the audit can see at these settings (m canaries
cap it: about 3.3 for m = 200). Base pairs are HH harmless train pairs when
../shared/data is present, else synthetic ones. Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import HH_DEV, hh_split  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny", help="'tiny' (a 64-wide BERT made here), 'minilm', a path")
    p.add_argument("--epsilons", default="1,4,8", help="comma-separated target epsilons (plus a non-DP run)")
    p.add_argument("--canaries", type=int, default=200)
    p.add_argument("--base", type=int, default=16, help="ordinary training pairs the canaries hide among")
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "privacy_audit.json"))
    return p.parse_args()


def base_records(n: int) -> tuple[list, str]:
    """The first ``n`` HH train pairs, or synthetic polite-vs-rude pairs without the data."""
    from fedrlhf.feedback import Preference

    if HH_DEV.is_file():
        return hh_split()[0][:n], "hh"
    rng = random.Random(0)
    good, bad = ["Sure, here is a clear answer.", "Happy to help."], ["No.", "Figure it out yourself."]
    pairs = [Preference(f"Human: question {i}", rng.choice(good), rng.choice(bad)) for i in range(n)]
    return pairs, "synthetic"


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON: the non-private run's infinite claimed epsilon becomes null."""
    return {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in row.items()}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | claimed epsilon | empirical lower bound | correct / guesses | train s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        claimed = "inf" if math.isinf(r["claimed_epsilon"]) else f"{r['claimed_epsilon']:.2f}"
        lines.append(
            f"| {r['setting']} | {claimed} | {r['empirical_epsilon_lower_bound']:.2f} "
            f"| {r['correct']} / {r['guesses']} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
    from fedrlhf.models import save_tiny_backbone
    from fedrlhf.training.canary import run_canary_audit

    records, source = base_records(args.base)
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone
        if backbone == "tiny":
            backbone = str(save_tiny_backbone(Path(tmp) / "tiny-bert", kind="bert", hidden=64))
        model_cfg = ModelConfig(backbone=backbone, max_length=args.max_length)
        for epsilon in [None, *(float(e) for e in args.epsilons.split(",") if e.strip())]:
            privacy = (
                None
                if epsilon is None
                else PrivacyConfig(
                    enabled=True, target_epsilon=epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm
                )
            )
            name = "no DP" if epsilon is None else f"DP eps {epsilon:g}"
            result = run_canary_audit(
                model_cfg,
                train_cfg,
                privacy,
                records,
                num_canaries=args.canaries,
                seed=args.seed,
                ledger_path=Path(tmp) / f"ledger-{epsilon}.json",
            )
            rows.append({"setting": name, **result})
            print(json.dumps(jsonable(rows[-1])), flush=True)
    print(
        f"\n{args.backbone}: m = {args.canaries} canaries among {len(records)} {source} pairs, "
        f"{args.epochs:g} epochs, lr {args.lr:g}, C {args.max_grad_norm:g}, delta {args.delta:g}, "
        "beta 0.05\n"
    )
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = [jsonable(r) for r in rows]
    out.write_text(json.dumps({"settings": vars(args), "base": source, "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
