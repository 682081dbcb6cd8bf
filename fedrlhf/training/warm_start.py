"""A public warm start: the global model trained on public data before any device trains.

Public pretraining is DP's biggest lever (Ganesh et al. 2023); Gboard trains on public data
before private federated rounds. Nothing here is private and nothing needs to be: the data are
public and the server holds them. The trainer is the one ``fedrlhf train`` runs without DP
(:func:`fedrlhf.training.session.fit`) on the federation's own ``[model]``, so the trained state
has exactly the names and shapes the devices exchange. No Flower here: the server calls
:func:`warm_start` and starts round 1 from its state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrlhf.config import ModelConfig, TrainConfig, WarmStartConfig
from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback import read_feedback, split_records
from fedrlhf.feedback.records import Feedback
from fedrlhf.models.reward import RewardModel
from fedrlhf.models.state import get_trainable_state
from fedrlhf.training.data import encode_cached
from fedrlhf.training.evaluate import evaluate
from fedrlhf.training.session import fit

PRIVACY_NOTE = "non-private: trained by the server on public data"
"""What the run report says of a warm start's privacy."""


@dataclass
class WarmStart:
    """The warm-started model, its trainable state (the first global model) and what was done."""

    model: RewardModel
    state: dict[str, np.ndarray]
    record: dict[str, Any]


def read_public(paths: Sequence[str], *, skip_invalid: bool = False) -> tuple[list[Feedback], int]:
    """The records of every ``warm_start.data`` file, in order, and how many invalid lines were
    skipped (``skip_invalid``); else an invalid line is an error naming the key, file and line."""
    if not paths:
        raise ConfigError("warm_start.data is empty: give the public feedback file(s) to train on")
    records: list[Feedback] = []
    skipped = 0
    for path in paths:
        try:
            result = read_feedback(path, skip_invalid=skip_invalid)
        except DataError as exc:
            hint = (
                ""
                if exc.line is None or skip_invalid
                else " (warm_start.skip_invalid = true skips such lines)"
            )
            reason = f"warm_start.data: {exc.reason}{hint}"
            raise DataError(reason, path=exc.path, line=exc.line, field=exc.field) from None
        records += result.records
        skipped += len(result.skipped)
    return records, skipped


def public_split(records: Sequence[Feedback], cfg: WarmStartConfig) -> tuple[list[Feedback], list[Feedback]]:
    """(training records, held-out records): at most ``max_pairs`` sampled, then ``holdout`` held out.

    Both draws are seeded by ``cfg.seed``, so the same files and settings give the same split.
    """
    chosen = list(records)
    if cfg.max_pairs and len(chosen) > cfg.max_pairs:
        chosen = random.Random(cfg.seed).sample(chosen, cfg.max_pairs)
    return split_records(chosen, test_fraction=cfg.holdout, seed=cfg.seed)


def train_config(cfg: WarmStartConfig, *, threads: int = 0) -> TrainConfig:
    """The central trainer's settings for the warm start."""
    return TrainConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, threads=threads
    )


def warm_start(
    cfg: WarmStartConfig,
    model_cfg: ModelConfig,
    *,
    threads: int = 0,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> WarmStart:
    """Train a reward model of ``model_cfg`` on the public data of ``cfg``, without DP.

    ``cache_dir`` keeps the tokens and, for ``model.trainable = "head"`` or ``model.lora_layers``,
    the frozen part's output, so the next run on the same data skips them. ``say`` gets a line
    before and after training (progress for the operator).

    Raises:
        ConfigError: ``warm_start.data`` is empty, or every record is held out.
        DataError: a data file is missing or malformed (the message names ``warm_start.data``).
    """
    start = time.perf_counter()
    records, skipped = read_public(cfg.data, skip_invalid=cfg.skip_invalid)
    train, held = public_split(records, cfg)
    if not train:
        raise ConfigError(
            f"warm_start: no record left to train on ({len(held)} held out); "
            "give more data or lower warm_start.holdout"
        )
    say(
        f"warm start ({PRIVACY_NOTE}): {len(train)} pairs from {', '.join(cfg.data)}, "
        f"{len(held)} held out, {cfg.epochs:g} epoch(s)"
        + (f"; {skipped} invalid line(s) skipped" if skipped else "")
    )
    fitted = fit(train, model_cfg, train_config(cfg, threads=threads), cache_dir=cache_dir, progress=False)
    accuracy = None
    if held:
        data = encode_cached(held, fitted.model.tokenizer, model_cfg.max_length, cache_dir)
        accuracy = evaluate(fitted.model, data).accuracy if data.num_pairs else None
    seconds = time.perf_counter() - start
    record = {
        "data": list(cfg.data),
        "pairs": len(train),
        "held_out_pairs": len(held),
        "skipped_lines": skipped,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "steps": fitted.train.steps,
        "train_loss": fitted.train.mean_loss,
        "seconds": seconds,
        "accuracy": accuracy,
        "privacy": PRIVACY_NOTE,
    }
    acc = (
        "no held-out pairs" if accuracy is None else f"accuracy {accuracy:.3f} on {len(held)} held-out pairs"
    )
    say(f"warm start done in {seconds:.0f} s: {fitted.train.steps} steps, {acc}")
    return WarmStart(fitted.model, get_trainable_state(fitted.model), record)
