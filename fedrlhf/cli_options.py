"""Option groups and argument types shared by the ``fedrlhf`` subcommands' parsers."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default="minilm",
        metavar="NAME",
        help="the frozen language model under the reward head: a Hugging Face model id, a local "
        "directory, or 'minilm' for the all-MiniLM-L6-v2 copy installed with fedrlhf (default: minilm)",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=128,
        metavar="N",
        help="tokens kept of each prompt plus response; longer ones lose their beginning (default: 128)",
    )
    g.add_argument(
        "--lora-r",
        type=int,
        default=8,
        metavar="R",
        help="rank of the LoRA adapters, the only backbone weights that train (default: 8)",
    )
    g.add_argument(
        "--lora-alpha",
        type=int,
        default=16,
        metavar="A",
        help="LoRA scaling factor; the adapters' output is scaled by A/R (default: 16)",
    )
    g.add_argument(
        "--trainable",
        choices=["lora", "head"],
        default=None,
        help="what trains: lora (LoRA adapters + head) or head (the head alone on the frozen "
        "backbone's features, computed once) (default: lora; head with --dp-epsilon)",
    )
    g.add_argument(
        "--pool-layers",
        type=int,
        default=None,
        metavar="K",
        help="the head reads the mean-pooled states of the last K layers (default: 1; 4 with --dp-epsilon)",
    )
    g.add_argument(
        "--lora-layers",
        type=int,
        default=0,
        metavar="N",
        help="LoRA on the top N layers only; the layers below are computed once and cached "
        "(default: 0 = every layer)",
    )
    g.add_argument(
        "--lora-targets",
        default="all-linear",
        metavar="NAMES",
        help="layers that get an adapter: comma-separated module names, or all-linear for every "
        "linear layer (default: all-linear)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=float,
        default=None,
        metavar="E",
        help="passes over the data; fractions allowed (default: 2; 100 with --dp-epsilon)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="pairs per step; 0 = all pairs in every step (default: 16; 0 with --dp-epsilon)",
    )
    g.add_argument(
        "--grad-accumulation",
        type=int,
        default=1,
        metavar="K",
        help="add up K batches before each optimizer step; without DP only (default: 1)",
    )
    g.add_argument(
        "--lr", type=float, default=None, help="AdamW learning rate (default: 0.0005; 0.02 with --dp-epsilon)"
    )
    g.add_argument(
        "--seed", type=int, default=0, help="random seed of initialisation and shuffling (default: 0)"
    )
    g.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads torch may use; 0 lets torch choose (default: 0)",
    )
    d = p.add_argument_group(
        "differential privacy",
        "Train with DP-SGD (Opacus): each preference pair's influence is clipped and noised. "
        "Give --dp-epsilon or --dp-noise-multiplier to turn it on; without either, training is not private.",
    )
    d.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        metavar="EPS",
        help="privacy budget: train privately so that the total epsilon spent on this data, over "
        "every run recorded in its ledger, stays at most EPS (default: off)",
    )
    d.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        metavar="SIGMA",
        help="train privately with this much noise (relative to --max-grad-norm) instead of "
        "aiming at an epsilon; the epsilon spent is reported (default: off)",
    )
    d.add_argument(
        "--dp-delta",
        type=float,
        default=1e-5,
        metavar="DELTA",
        help="the delta of (epsilon, delta) privacy, a small chance that the epsilon bound fails; "
        "must be below 0.001 and below 1 / number of pairs (default: 1e-05)",
    )
    d.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        metavar="C",
        help="largest gradient norm one pair may contribute before noise is added (default: 1.0)",
    )
    d.add_argument(
        "--dp-accountant",
        choices=["rdp", "prv"],
        default="rdp",
        help="how epsilon is computed: rdp (Renyi DP) or prv (privacy random variables, tighter "
        "and slower) (default: rdp)",
    )
    d.add_argument(
        "--ledger",
        type=Path,
        default=None,
        metavar="FILE",
        help="file that records the privacy spent on this data across runs (default: one per data "
        "set, found by its content, under ~/.fedrlhf/ledgers/)",
    )


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value
