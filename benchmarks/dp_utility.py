"""Utility of record-level DP: held-out accuracy on HH harmless at several epsilons vs non-private.

    python benchmarks/dp_utility.py                            # full: ~1 h of CPU with 2 threads
    python benchmarks/dp_utility.py --limit 64 --epochs 0.2    # smoke run (a minute or two)
    python benchmarks/dp_utility.py --epsilons 1,8 --epochs 1 --max-length 64 --lr 1e-3

Central training on the fixed 80/20 split of the HH harmless dev pairs
(``common.hh_split``), the same model and loop as ``fedrlhf train``; DP runs use
``train_private`` (Poisson sampling, one pair = one sample) with the noise Opacus
picks for each target epsilon at ``--delta``. Each setting starts from the same
seeded model and a fresh privacy ledger. Prints a Markdown table and writes JSON
(updated after every setting, so an interrupted run keeps what it finished).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import hh_split, peak_rss_mb  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epsilons", default="1,3,8", help="comma-separated target epsilons")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--no-baseline", action="store_true", help="skip the non-private run")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-targets", default="all-linear")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="use only the first N train pairs (N/4 test)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "dp_utility.json"))
    return p.parse_args()


def run_setting(
    epsilon: float | None, train_records: list, test_records: list, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Train one model (non-private when ``epsilon`` is None) and evaluate it on the test pairs."""
    from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
    from fedrlhf.training import encode, evaluate
    from fedrlhf.training.session import fit

    model_cfg = ModelConfig(
        backbone=args.backbone,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_target_modules=tuple(args.lora_targets.split(",")),
    )
    train_cfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, threads=args.threads
    )
    privacy = (
        None
        if epsilon is None
        else PrivacyConfig(
            enabled=True, target_epsilon=epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm
        )
    )
    name = "non-private" if epsilon is None else f"eps-{epsilon:g}"
    start = time.perf_counter()
    result = fit(
        train_records,
        model_cfg,
        train_cfg,
        privacy=privacy,
        ledger_path=workdir / f"{name}.json",
        cache_dir=workdir / "cache",
        progress=False,
    )
    seconds = time.perf_counter() - start
    metrics = evaluate(result.model, encode(test_records, result.model.tokenizer, args.max_length)).to_dict()
    report = result.privacy or {}
    return {
        "setting": name,
        "target_epsilon": epsilon,
        "epsilon": report.get("epsilon"),
        "noise_multiplier": report.get("noise_multiplier"),
        "sample_rate": report.get("sample_rate"),
        "steps": result.train.steps,
        **metrics,
        "train_loss": result.train.mean_loss,
        "train_seconds": round(seconds, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| setting | epsilon | sigma | steps | accuracy | mean margin | ECE | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {fmt(r['epsilon'], '.2f')} | {fmt(r['noise_multiplier'], '.3f')} "
            f"| {r['steps']} | {r['accuracy']:.3f} | {r['mean_margin']:.3f} | {r['ece']:.3f} "
            f"| {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    train_records, test_records = hh_split()
    if args.limit:
        train_records, test_records = train_records[: args.limit], test_records[: max(8, args.limit // 4)]
    settings: list[float | None] = [] if args.no_baseline else [None]
    settings += [float(e) for e in args.epsilons.split(",") if e.strip()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for epsilon in settings:
            rows.append(run_setting(epsilon, train_records, test_records, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(
                json.dumps(
                    {
                        "train_pairs": len(train_records),
                        "test_pairs": len(test_records),
                        "delta": args.delta,
                        "settings": vars(args),
                        "results": rows,
                        "peak_rss_mb": round(peak_rss_mb(), 1),
                    },
                    indent=2,
                )
            )
    print(
        f"\nHH harmless: {len(train_records)} train / {len(test_records)} test pairs, "
        f"delta {args.delta:g}, {args.epochs:g} epochs, max length {args.max_length}\n"
    )
    print(table(rows))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
