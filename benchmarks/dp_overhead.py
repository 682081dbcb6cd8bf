"""DP overhead: time per optimizer step and peak memory, plain AdamW vs Opacus (hooks), for the
DP recipe (``fedrlhf.config.DP_RECIPE``) and for LoRA DP-SGD.

    python benchmarks/dp_overhead.py                      # both models, MiniLM
    python benchmarks/dp_overhead.py --models lora --backbone PATH --pairs 8 --max-length 64 --steps 5
    python benchmarks/dp_overhead.py --quick --backbone PATH --out FILE   # a smoke run

``recipe``: what ``fedrlhf train --dp-epsilon E`` runs: the head alone on the frozen backbone's
last 4 mean-pooled layers, full-batch steps over every HH train pair (1,315; --recipe-pairs), 100
steps (--recipe-steps), Adam lr 0.02. The pooled features are computed once, in a process of
their own (its time and peak memory are reported), and cached on disk; both sides load them.
``lora``: all-linear LoRA r=8 + head, a fixed batch of --pairs pairs x --max-length tokens.

Both sides train the same model on the same data (HH pairs when ../shared/data is present,
else synthetic text of the same length), each in a fresh subprocess so that ``ru_maxrss`` is
that side's own peak. Warm-up steps are excluded from the times. The DP side is what
``train_private`` runs: per-pair gradients (two encoder calls per pair for LoRA), clipping,
Gaussian noise (sigma 1, C 1). Prints both and the ratio per model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import HH_DEV, hh_split, machine, peak_rss_mb, write_json  # noqa: E402

MODES = ("plain", "dp")
MODELS = ("recipe", "lora")


def fixed_batch(tokenizer: Any, pairs: int, max_length: int) -> tuple[Any, str]:
    """``pairs`` HH train pairs that fill ``max_length`` tokens (else synthetic ones), encoded."""
    from fedrlhf.training import encode

    if HH_DEV.is_file():
        records, _ = hh_split()
        data = encode(records[: 20 * pairs], tokenizer, max_length)
        full = (data.lengths.min(dim=1).values == max_length).nonzero().flatten()[:pairs]
        if len(full) == pairs:
            return data.subset(full), "hh"
    return encode(synthetic_records(pairs, max_length), tokenizer, max_length), "synthetic"


def synthetic_records(pairs: int, max_length: int) -> list:
    """``pairs`` preference pairs of random words, each text longer than ``max_length`` tokens."""
    import random

    from fedrlhf.feedback import Preference

    rng = random.Random(0)
    words = ["the", "model", "answer", "question", "please", "helpful", "data", "reward", "user", "text"]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(2 * max_length))

    return [Preference(text(), text(), text()) for _ in range(pairs)]


def recipe_data(tokenizer: Any, pairs: int, max_length: int, cache_dir: str) -> tuple[Any, str]:
    """The first ``pairs`` HH train pairs (else synthetic ones), encoded, cached in ``cache_dir``."""
    from fedrlhf.training import encode_cached

    if HH_DEV.is_file():
        records, source = hh_split()[0][:pairs], "hh"
    else:
        records, source = synthetic_records(pairs, max_length), "synthetic"
    return encode_cached(records, tokenizer, max_length, cache_dir), source


def build(args: argparse.Namespace) -> tuple[Any, Any, tuple, str, float]:
    """(reward model, module the loop trains, its batch, data source, seconds to get the inputs).

    ``recipe``: the head on cached pooled features (the ``features`` worker computes and caches
    them, the others load them); ``lora``: the whole model on a fixed batch of tokens.
    """
    import torch

    from fedrlhf.config import DP_RECIPE, ModelConfig
    from fedrlhf.models import RewardModel
    from fedrlhf.training.features import training_view

    torch.manual_seed(0)
    if args.model == "recipe":
        layout = {k.split(".", 1)[1]: v for k, v in DP_RECIPE.items() if k.startswith("model.")}
        cfg = ModelConfig(backbone=args.backbone, max_length=args.max_length, **layout)
    else:
        cfg = ModelConfig(backbone=args.backbone, max_length=args.max_length, lora_r=8)
    model = RewardModel.build(cfg, seed=0)
    start = time.perf_counter()
    if args.model == "recipe":
        data, source = recipe_data(model.tokenizer, args.recipe_pairs, args.max_length, args.cache_dir)
        module, tensors = training_view(model, data)  # computes the features, or loads them
        return model, module, tuple(tensors), source, time.perf_counter() - start
    data, source = fixed_batch(model.tokenizer, args.pairs, args.max_length)
    batch = (data.input_ids, data.lengths, data.kind, data.label)
    return model, model, batch, source, time.perf_counter() - start


def worker(args: argparse.Namespace) -> dict:
    """One side of the comparison (or the recipe's feature pass), in this fresh process."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    from fedrlhf.config import DP_RECIPE, TrainConfig
    from fedrlhf.training.local import make_optimizer, unit_losses

    model, module, batch, source, input_seconds = build(args)
    base = {
        "model": args.model,
        "mode": args.worker,
        "data": source,
        "pairs": int(batch[2].shape[0]),
        "tokens": int(batch[1].max()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "input_seconds": input_seconds,
    }
    if args.worker == "features":
        return {**base, "peak_rss_mb": peak_rss_mb()}
    lr = DP_RECIPE["train.lr"] if args.model == "recipe" else 5e-4
    optimizer = make_optimizer(module, TrainConfig(lr=lr))
    forward = module
    if args.worker == "dp":
        forward, optimizer = make_private(module, optimizer, batch)
    forward.train()
    rss_before = peak_rss_mb()
    steps = args.recipe_steps if args.model == "recipe" else args.steps
    times = []
    for i in range(args.warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        unit_losses(forward, *batch).mean().backward()
        optimizer.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {
        **base,
        "steps": steps,
        "step_s_mean": statistics.mean(times),
        "step_s_median": statistics.median(times),
        "step_s_stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_training_mb": rss_before,
    }


def make_private(model: Any, optimizer: Any, batch: tuple) -> tuple:
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


def run_side(mode: str, args: argparse.Namespace, model: str, cache_dir: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--model", model]
    cmd += ["--cache-dir", cache_dir]
    for flag in (
        "backbone",
        "pairs",
        "max_length",
        "steps",
        "warmup",
        "threads",
        "recipe_pairs",
        "recipe_steps",
    ):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{model} {mode} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(model: str, args: argparse.Namespace) -> dict:
    """Both sides of one model, alternating over --repeats (a burst of load hits both alike)."""
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as cache_dir:
        features = run_side("features", args, model, cache_dir) if model == "recipe" else None
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                runs[mode].append(run_side(mode, args, model, cache_dir))
    load.append(os.getloadavg()[0])
    sides = {mode: min(rs, key=lambda r: r["step_s_median"]) for mode, rs in runs.items()}
    ratio = report(model, sides, args, load, features)
    return {"sides": sides, "runs": runs, "features": features, "loadavg_1min": load, "ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma list of recipe, lora")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--pairs", type=int, default=16, help="lora: pairs per batch")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="lora: measured steps (after --warmup)")
    p.add_argument("--recipe-pairs", type=int, default=1315, help="recipe: pairs in the full batch")
    p.add_argument("--recipe-steps", type=int, default=100, help="recipe: measured steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per side (alternating); best kept")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "dp_overhead.json"))
    p.add_argument("--worker", choices=("features", *MODES), help=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or [m for m in models if m not in MODELS]:
        sys.exit(f"--models: expected a comma list of {list(MODELS)}, got {args.models!r}")
    if args.quick:
        args.pairs, args.max_length, args.steps, args.recipe_pairs, args.recipe_steps = 4, 32, 2, 16, 3
        args.warmup = 1
    info = machine()
    results = {model: compare(model, args) for model in models}
    info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    write_json(args.out, {"settings": vars(args), "machine": info, "models": results})
    print(f"\nwrote {args.out}")


def report(
    model: str, sides: dict[str, dict], args: argparse.Namespace, load: list[float], features: dict | None
) -> dict[str, float]:
    """Print the table and the DP / plain ratios (of the best repeat per side); returns the ratios."""
    plain, dp = sides["plain"], sides["dp"]
    what = (
        f"DP recipe: head on 4 pooled layers ({plain['trainable_params']} trainable), full batch of "
        f"{plain['pairs']} pairs x <= {plain['tokens']} tokens ({plain['data']}), {plain['steps']} steps"
        if model == "recipe"
        else f"all-linear LoRA r=8 ({plain['trainable_params']} trainable), {plain['pairs']} pairs x "
        f"{plain['tokens']} tokens ({plain['data']}), {plain['steps']} steps"
    )
    print(
        f"\n{args.backbone}, {what} after {args.warmup} warm-up, {args.threads} threads, best of "
        f"{args.repeats}; 1-min load {load[0]:.1f} -> {load[1]:.1f}\n"
    )
    if features is not None:
        print(
            f"features computed once: {features['input_seconds']:.1f} s, peak RSS "
            f"{features['peak_rss_mb']:.0f} MB (each side below loads them: "
            f"{plain['input_seconds']:.2f} s)\n"
        )
    print("| side | s/step (mean) | s/step (median) | stdev | peak RSS MB |")
    print("|---|---|---|---|---|")
    for mode, r in sides.items():
        print(
            f"| {mode} | {r['step_s_mean']:.4f} | {r['step_s_median']:.4f} | {r['step_s_stdev']:.4f} "
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
