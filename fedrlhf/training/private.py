"""DP-SGD local training with Opacus: one unit (pair or rating) = one sample.

The mechanism (Opacus: per-sample clipping + Gaussian noise, Poisson sampling)
and the accounting (:class:`fedrlhf.privacy.PrivacyLedger`) meet only here, and
only through ``(noise_multiplier, sample_rate, steps)``.  The run's spend is
reserved in the ledger before training, under its lock (a device over budget
refuses; two runs at once cannot both spend what is left), and the reservation
is replaced by the steps that actually ran, taken from Opacus' own accountant,
even if training fails midway.  A process killed while training leaves its
reservation in the ledger, where it stays counted as spent.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from opacus import PrivacyEngine  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs
from torch.utils.data import DataLoader, TensorDataset

from fedrlhf.config import PrivacyConfig, TrainConfig
from fedrlhf.models.reward import RewardModel
from fedrlhf.privacy.ledger import PrivacyLedger, Reservation
from fedrlhf.training.data import EncodedFeedback
from fedrlhf.training.features import training_view
from fedrlhf.training.local import TrainResult, batch_units, make_optimizer, planned_steps, run_loop

_WARNED_SECURE_MODE = False


def _warn_secure_mode(privacy: PrivacyConfig) -> None:
    global _WARNED_SECURE_MODE
    if not privacy.secure_mode and not _WARNED_SECURE_MODE:
        _WARNED_SECURE_MODE = True
        warnings.warn(
            "DP-SGD runs with secure_mode=False: Opacus draws noise from torch's ordinary PRNG, which is "
            "fine for research but not cryptographically secure. secure_mode=True needs torchcsprng.",
            UserWarning,
            stacklevel=3,
        )


def open_ledger(privacy: PrivacyConfig, path: Path) -> PrivacyLedger:
    """The device's ledger for these settings (created on first record)."""
    return PrivacyLedger(
        path, accountant=privacy.accountant, delta=privacy.delta, lifetime_epsilon=privacy.lifetime_epsilon
    )


def plan(
    privacy: PrivacyConfig,
    ledger: PrivacyLedger,
    *,
    num_units: int,
    train_cfg: TrainConfig,
    label: str = "train",
    runs: int = 1,
) -> Reservation:
    """Reserve this run's spend in the ledger (its noise, sample rate and planned steps).

    The noise (for a target epsilon) and the budget check are computed under the ledger's
    lock, over every run recorded or reserved, so concurrent runs cannot overspend.

    Raises:
        PrivacyBudgetExceeded: the run would take the ledger over its lifetime budget.
    """
    # Opacus' Poisson loader samples each unit with q = 1 / (batches per epoch); account that exact q.
    sample_rate = 1.0 / math.ceil(num_units / batch_units(num_units, train_cfg))
    steps = planned_steps(num_units, dataclasses.replace(train_cfg, grad_accumulation=1))
    return ledger.reserve(
        sample_rate=sample_rate,
        steps=steps,
        label=label,
        noise_multiplier=None if privacy.noise_multiplier is None else float(privacy.noise_multiplier),
        target_epsilon=None if privacy.noise_multiplier is not None else privacy.target_epsilon,
        max_grad_norm=privacy.max_grad_norm,
        runs=runs,
    )


def train_private(
    model: RewardModel,
    data: EncodedFeedback,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
    *,
    ledger_path: Path,
    progress: bool = True,
    label: str = "train",
    runs: int = 1,
) -> tuple[TrainResult, dict[str, Any]]:
    """DP-SGD training of the model's trainable part; returns the result and privacy.json contents.

    ``runs``: with a target epsilon, this run is the first of that many identical ones (a
    federation's remaining rounds) that together meet the target (see ``PrivacyLedger.reserve``).
    """
    if len(data) == 0:
        raise ValueError("no training data")
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    ledger = open_ledger(privacy, ledger_path)
    held = plan(privacy, ledger, num_units=len(data), train_cfg=train_cfg, label=label, runs=runs)
    _warn_secure_mode(privacy)
    with warnings.catch_warnings():  # we warned once above, in our own words
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=privacy.secure_mode)
    try:
        result = _dp_loop(model, data, train_cfg, privacy, engine, held, progress=progress, label=label)
    finally:  # what Opacus actually noised replaces the reservation (none ran: it is dropped)
        ledger.settle(held, steps=sum(int(s) for _, _, s in engine.accountant.history))
    report = {k: v for k, v in ledger.report().items() if k not in ("entries", "reserved")}
    report["max_grad_norm"] = report.get("max_grad_norm") or privacy.max_grad_norm
    return result, report


def _dp_loop(
    model: RewardModel,
    data: EncodedFeedback,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
    engine: PrivacyEngine,
    held: Reservation,
    *,
    progress: bool,
    label: str,
) -> TrainResult:
    """The DP-SGD loop of a reserved run; ``engine``'s accountant keeps the steps that ran."""
    sigma, steps = held.noise_multiplier, held.steps
    torch.manual_seed(train_cfg.seed)
    module, tensors = training_view(model, data)  # the top layers on cached states, or the whole model
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_units(len(data), train_cfg),
        generator=torch.Generator().manual_seed(train_cfg.seed),
    )
    optimizer = make_optimizer(module, train_cfg)
    module.train()  # Opacus validates the module in training mode
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
    )
    try:
        with warnings.catch_warnings():  # frozen inputs: Opacus' hooks still see every LoRA layer
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            result = run_loop(
                dp_model,
                dp_loader,
                dp_optimizer,
                dataclasses.replace(train_cfg, grad_accumulation=1),
                steps=steps,
                progress=progress,
                desc=f"{label} (DP)",
            )
    finally:
        dp_model._close()  # remove Opacus hooks: the model is a plain module again
    return result
