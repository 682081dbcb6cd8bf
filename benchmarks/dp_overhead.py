"""DP-SGD overhead: time per optimizer step and peak memory, plain AdamW vs Opacus (hooks).

    python benchmarks/dp_overhead.py                      # MiniLM, all-linear LoRA r=8, 16 pairs x 128
    python benchmarks/dp_overhead.py --backbone PATH --pairs 8 --max-length 64 --steps 5

Both sides train the same model on the same fixed batch (HH pairs when ../shared/data
is present, else synthetic text of the same length), each in a fresh subprocess so
that ``ru_maxrss`` is that side's own peak. Warm-up steps are excluded from the times.
The DP side is what ``train_private`` runs: per-pair gradients through two encoder
calls, clipping, Gaussian noise (sigma 1, C 1). Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import HH_DEV, hh_split, peak_rss_mb  # noqa: E402

MODES = ("plain", "dp")


def fixed_batch(tokenizer: object, pairs: int, max_length: int) -> tuple[object, str]:
    """``pairs`` HH train pairs that fill ``max_length`` tokens (else synthetic ones), encoded."""
    import random

    from fedrlhf.feedback import Preference
    from fedrlhf.training import encode

    if HH_DEV.is_file():
        records, _ = hh_split()
        data = encode(records[: 20 * pairs], tokenizer, max_length)
        full = (data.lengths.min(dim=1).values == max_length).nonzero().flatten()[:pairs]
        if len(full) == pairs:
            return data.subset(full), "hh"
    rng = random.Random(0)
    words = ["the", "model", "answer", "question", "please", "helpful", "data", "reward", "user", "text"]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(2 * max_length))

    records = [Preference(text(), text(), text()) for _ in range(pairs)]
    return encode(records, tokenizer, max_length), "synthetic"


def worker(args: argparse.Namespace) -> dict:
    """One side of the comparison, in this (fresh) process; returns its measurements."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from fedrlhf.config import ModelConfig, TrainConfig
    from fedrlhf.models import RewardModel
    from fedrlhf.training.local import make_optimizer, unit_losses

    torch.manual_seed(0)
    model = RewardModel.build(
        ModelConfig(
            backbone=args.backbone, max_length=args.max_length, lora_r=8, lora_target_modules=("all-linear",)
        ),
        seed=0,
    )
    data, source = fixed_batch(model.tokenizer, args.pairs, args.max_length)
    batch = (data.input_ids, data.lengths, data.kind, data.label)
    optimizer = make_optimizer(model, TrainConfig(lr=5e-4))
    forward: torch.nn.Module = model
    if args.worker == "dp":
        forward, optimizer = make_private(model, optimizer, batch)
    model.train()
    rss_before = peak_rss_mb()
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        unit_losses(forward, *batch).mean().backward()
        optimizer.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {
        "mode": args.worker,
        "data": source,
        "pairs": args.pairs,
        "tokens": int(data.lengths.max()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_s_mean": statistics.mean(times),
        "step_s_median": statistics.median(times),
        "step_s_stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_training_mb": rss_before,
    }


def make_private(model: object, optimizer: object, batch: tuple) -> tuple:
    """Opacus model and optimizer as ``train_private`` builds them (hooks, Poisson, sigma 1, C 1)."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    loader = DataLoader(TensorDataset(*batch), batch_size=len(batch[0]))
    dp_model, dp_optimizer, _ = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
        grad_sample_mode="hooks",
    )
    return dp_model, dp_optimizer


def run_side(mode: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--backbone",
        args.backbone,
        "--pairs",
        str(args.pairs),
        "--max-length",
        str(args.max_length),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{mode} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="measured steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per side (alternating); best kept")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "dp_overhead.json"))
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):  # alternate the sides, so a burst of load hits both alike
        for mode in MODES:
            runs[mode].append(run_side(mode, args))
    load.append(os.getloadavg()[0])
    sides = {mode: min(rs, key=lambda r: r["step_s_median"]) for mode, rs in runs.items()}
    ratio = report(sides, args, load)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"settings": vars(args), "sides": sides, "runs": runs, "loadavg_1min": load, "ratio": ratio},
            indent=2,
        )
    )


def report(sides: dict[str, dict], args: argparse.Namespace, load: list[float]) -> dict[str, float]:
    """Print the table and the DP / plain ratios (of the best repeat per side); returns the ratios."""
    plain, dp = sides["plain"], sides["dp"]
    print(
        f"{args.backbone}, all-linear LoRA r=8 ({plain['trainable_params']} trainable), "
        f"{plain['pairs']} pairs x {plain['tokens']} tokens ({plain['data']}), {args.threads} threads, "
        f"{args.steps} steps after {args.warmup} warm-up, best of {args.repeats}; "
        f"1-min load {load[0]:.1f} -> {load[1]:.1f}\n"
    )
    print("| side | s/step (mean) | s/step (median) | stdev | peak RSS MB |")
    print("|---|---|---|---|---|")
    for mode, r in sides.items():
        print(
            f"| {mode} | {r['step_s_mean']:.3f} | {r['step_s_median']:.3f} | {r['step_s_stdev']:.3f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    ratio = {
        "time": dp["step_s_median"] / plain["step_s_median"],
        "peak_rss": dp["peak_rss_mb"] / plain["peak_rss_mb"],
    }
    print(f"\nDP / plain: {ratio['time']:.2f}x time per step (median), {ratio['peak_rss']:.2f}x peak RSS")
    return ratio


if __name__ == "__main__":
    main()
