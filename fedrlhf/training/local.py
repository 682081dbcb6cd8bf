"""The local training loop a device runs (also used for central training).

One unit (a preference pair or a rating) is one sample.  The loop never
mentions epsilon: with DP, :mod:`fedrlhf.training.private` hands it an Opacus
optimizer and data loader and this loop runs unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # types-tqdm is not a dependency

from fedrlhf.config import TrainConfig
from fedrlhf.errors import ConfigError, TrainingDiverged
from fedrlhf.models.losses import bradley_terry, rating_logistic
from fedrlhf.models.reward import RewardModel
from fedrlhf.training.data import PAIR, EncodedFeedback, batch_tensors
from fedrlhf.training.features import training_view


@dataclass
class TrainResult:
    """What a training run did (no privacy figures: the ledger owns those)."""

    steps: int
    units_seen: int
    mean_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)


def unit_losses(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    kind: torch.Tensor,
    label: torch.Tensor,
    *,
    rating_reference: float = 0.0,
) -> torch.Tensor:
    """Per-unit losses [B]: Bradley-Terry for pairs, the logistic rating loss for ratings."""
    ids, mask = batch_tensors(input_ids, lengths)
    first = model(ids[:, 0], mask[:, 0])
    if bool((kind == PAIR).any()):
        margin = first - model(ids[:, 1], mask[:, 1])  # second encoder call: the pair stays one sample
    else:
        margin = torch.zeros_like(first)
    return torch.where(
        kind == PAIR, bradley_terry(margin), rating_logistic(first, label, reference=rating_reference)
    )


def make_loader(tensors: list[torch.Tensor], batch_size: int, seed: int) -> DataLoader:
    """Shuffled mini-batches of units (Opacus replaces this with Poisson sampling under DP)."""
    dataset = TensorDataset(*tensors)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; ``config.lr`` must fit in float32."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if not config.lr < torch.finfo(torch.float32).max:  # torch cannot even apply it
        raise ConfigError(f"train.lr (--lr) is {config.lr:g}, too large for float32; use e.g. 5e-4")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def batch_units(num_units: int, config: TrainConfig) -> int:
    """Units per batch: ``config.batch_size``, or all of them when it is 0 (full batch)."""
    return max(1, num_units) if config.batch_size == 0 else config.batch_size


def planned_steps(num_units: int, config: TrainConfig) -> int:
    """Optimizer steps for ``config.epochs`` passes (fractional epochs allowed)."""
    per_epoch = math.ceil(num_units / batch_units(num_units, config)) / config.grad_accumulation
    return max(1, math.ceil(config.epochs * per_epoch))


def _empty_per_sample_grads(optimizer: torch.optim.Optimizer) -> None:
    """Give a DP optimizer zero per-sample gradients for an empty batch.

    Opacus then clips nothing, adds its Gaussian noise and counts the step, which is
    what DP-SGD with Poisson sampling prescribes (an empty batch is not skipped).
    """
    for p in getattr(optimizer, "params", []):
        p.grad_sample = p.new_zeros((0, *p.shape))


def _diverged(step: int, what: str, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    raise TrainingDiverged(
        f"training diverged at step {step}: {what}; lower the learning rate (--lr) "
        "or check the data; nothing was saved",
        step=step,
    )


def check_finite_weights(optimizer: torch.optim.Optimizer, step: int) -> None:
    """Raise :class:`TrainingDiverged` if a trainable weight is nan or inf after ``step``."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not bool(torch.isfinite(p).all()):
                _diverged(step, "a trainable weight is nan or inf", optimizer)


def run_loop(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    steps: int,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Run ``steps`` optimizer steps over ``loader`` (cycled), with gradient accumulation.

    Raises:
        TrainingDiverged: the loss or a trainable weight became nan or inf; training stops
            there (the caller must not save the model).
    """
    model.train()
    start, losses, units, step, micro = time.perf_counter(), [], 0, 0, 0
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step", leave=False)
    try:
        while step < steps:
            for input_ids, lengths, kind, label in loader:
                if kind.numel() == 0:  # Poisson sampling can draw an empty batch: still a (noise-only) step
                    optimizer.zero_grad(set_to_none=True)
                    _empty_per_sample_grads(optimizer)
                    optimizer.step()
                    check_finite_weights(optimizer, step + 1)
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update(1)
                else:
                    loss = unit_losses(
                        model, input_ids, lengths, kind, label, rating_reference=config.rating_reference
                    ).mean()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        _diverged(step + 1, f"loss is {value}", optimizer)
                    (loss / config.grad_accumulation).backward()
                    losses.append(value)
                    units += int(kind.numel())
                    micro += 1
                    if micro % config.grad_accumulation == 0:
                        optimizer.step()
                        check_finite_weights(optimizer, step + 1)
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                        bar.update(1)
                        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
                if step >= steps:
                    break
    finally:
        bar.close()
    model.eval()
    mean = sum(losses) / len(losses) if losses else float("nan")
    return TrainResult(
        steps=step, units_seen=units, mean_loss=mean, seconds=time.perf_counter() - start, losses=losses
    )


def train(
    model: RewardModel, data: EncodedFeedback, config: TrainConfig, *, progress: bool = True
) -> TrainResult:
    """Plain (non-private) local training of the model's currently trainable part."""
    if len(data) == 0:
        raise ValueError("no training data")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    module, tensors = training_view(model, data)  # the top layers on cached states, or the whole model
    loader = make_loader(tensors, batch_units(len(data), config), config.seed)
    optimizer = make_optimizer(module, config)
    return run_loop(
        module, loader, optimizer, config, steps=planned_steps(len(data), config), progress=progress
    )
