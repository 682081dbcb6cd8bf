"""A device's round of record-level distributed DP (``secagg.record_dp``): DP-FedSGD.

Instead of training locally, the device computes, at the global model, the sum over its
records of each record's gradient clipped to ``privacy.max_grad_norm`` (Opacus computes the
per-record gradients and clips them: :class:`~opacus.GradSampleModule` and
:meth:`~opacus.optimizers.DPOptimizer.clip_and_accumulate`, noise 0), and returns minus that
sum as its update. The secure ClientApp then adds the device's share of the group's noise
before masking (:mod:`fedrlhf.privacy.distributed`), so the server only ever sees group sums
of such gradients, each one step of full-batch DP-GD with noise multiplier sigma.

The round is recorded in the device's own ledger as ``(sigma, sample rate 1, 1 step)`` under
its lock before anything leaves the device; a round its lifetime budget cannot take is
refused (:class:`~fedrlhf.privacy.ledger.PrivacyBudgetExceeded`) before any work.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from opacus import GradSampleModule  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs
from opacus.optimizers import DPOptimizer  # type: ignore[import-untyped]

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import DataError
from fedrlhf.models.reward import RewardModel
from fedrlhf.models.state import set_trainable_state, state_layout
from fedrlhf.privacy.policy import DevicePrivacyPolicy
from fedrlhf.training.data import EncodedFeedback
from fedrlhf.training.device import (
    DeviceDir,
    RoundSpec,
    bind_privacy,
    check_device_settings,
    settle_round,
    worker_model,
)
from fedrlhf.training.evaluate import evaluate
from fedrlhf.training.features import training_view
from fedrlhf.training.local import TrainResult, unit_losses
from fedrlhf.training.private import open_ledger

CHUNK = 256
"""Records per backward pass: per-record gradients take memory per record, the sum does not."""


def clip_and_sum(
    module: torch.nn.Module,
    tensors: Sequence[torch.Tensor],
    losses_of: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    *,
    max_grad_norm: float,
) -> tuple[list[torch.Tensor], float]:
    """Sum over the units (rows of ``tensors``) of each unit's loss gradient at ``module``'s
    trainable parameters, clipped to L2 norm ``max_grad_norm``, in ``module.parameters()`` order;
    and the units' summed loss. ``losses_of(batch)`` returns the per-unit losses [B] of a batch
    (it may call ``module`` or any model that runs it: Opacus's hooks sit on its layers).

    Opacus computes the per-unit gradients (:class:`~opacus.GradSampleModule`) and clips and sums
    them (:meth:`~opacus.optimizers.DPOptimizer.clip_and_accumulate`, noise 0), :data:`CHUNK`
    units per backward pass. No weight changes.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    with warnings.catch_warnings():  # frozen inputs: Opacus' hooks still see every LoRA layer
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")  # noise 0: none drawn
        gsm = GradSampleModule(module, loss_reduction="sum")
        clipper = DPOptimizer(
            torch.optim.SGD(params, lr=1.0),
            noise_multiplier=0.0,
            max_grad_norm=max_grad_norm,
            expected_batch_size=1,
            loss_reduction="sum",
        )
        total, units = 0.0, int(tensors[0].shape[0])
        try:
            for start in range(0, units, CHUNK):
                losses = losses_of([t[start : start + CHUNK] for t in tensors])
                losses.sum().backward()
                total += float(losses.detach().sum())
                clipper.clip_and_accumulate()  # adds this chunk's clipped per-unit gradients
                for p in params:
                    p.grad_sample, p.grad = None, None  # type: ignore[attr-defined]  # Opacus's attributes
            sums = [p.summed_grad.detach().clone() for p in params]  # type: ignore[attr-defined]
        finally:
            for p in params:
                p.summed_grad, p.grad_sample, p.grad = None, None, None  # type: ignore[attr-defined]
            gsm._close()
    return sums, total


def clipped_gradient_sum(
    model: RewardModel, data: EncodedFeedback, *, max_grad_norm: float, rating_reference: float = 0.0
) -> tuple[dict[str, np.ndarray], float]:
    """Sum over ``data``'s records of their loss gradients at the model's trainable weights, each
    clipped to L2 norm ``max_grad_norm``; keyed as :func:`get_trainable_state`. And the mean loss.

    The model's weights are never changed.
    """
    module, tensors = training_view(model, data)  # the top on cached features, or the whole model
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    name_of = {id(p): n for n, p in model.named_parameters() if model.part_of(n) == "global"}
    update = {n: np.zeros(shape, np.float32) for n, shape in state_layout(model).items()}
    sums, total = clip_and_sum(
        module,
        tensors,
        lambda batch: unit_losses(module, *batch, rating_reference=rating_reference),
        max_grad_norm=max_grad_norm,
    )
    for p, g in zip(params, sums, strict=True):  # minus the sum: the descent direction, in the state's names
        update[name_of[id(p)]] = (-g).cpu().numpy().astype(np.float32)
    return update, total / max(int(tensors[0].shape[0]), 1)


class RecordedStep:
    """One full-batch step of record-level distributed DP, reserved in the device's ledger.

    Entering reserves ``(sigma, sample rate 1, 1 step)`` under the ledger's lock, which refuses a
    round the lifetime budget cannot take before any work; leaving records the step if
    :attr:`ran` was set (the gradient sum was computed, so its release follows), else drops it.
    """

    def __init__(
        self, privacy: PrivacyConfig, ledger_path: Path, *, round: int, noise_multiplier: float
    ) -> None:
        self.ledger = open_ledger(privacy, ledger_path)
        self.label, self.noise_multiplier = f"round-{round} (distributed DP-FedSGD)", noise_multiplier
        self.max_grad_norm = privacy.max_grad_norm
        self.ran = False

    def __enter__(self) -> RecordedStep:
        self._held = self.ledger.reserve(
            sample_rate=1.0,
            steps=1,
            label=self.label,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.ledger.settle(self._held, steps=int(self.ran))

    def finish(
        self,
        device: DeviceDir,
        own_policy: DevicePrivacyPolicy | None,
        *,
        spec: RoundSpec,
        global_state: dict[str, np.ndarray],
        update: dict[str, np.ndarray],
        mean_loss: float,
        units: int,
        used_ids: list[int],
        metrics: dict[str, float],
        start: float,
    ) -> dict[str, float]:
        """After the step: settle the round on the device (:func:`settle_round`, with the ledger's
        epsilon) and return ``metrics`` with its figures and the round's seconds."""
        result = TrainResult(
            steps=1, units_seen=units, mean_loss=mean_loss, seconds=time.perf_counter() - start
        )
        _, settled = settle_round(
            device,
            own_policy,
            spec=spec,
            result=result,
            privacy_report={"epsilon": self.ledger.spent()},
            before=global_state,
            after={name: global_state[name] + update[name] for name in update},
            used_ids=used_ids,
            units=units,
        )
        metrics.update(settled)
        metrics["seconds"] = time.perf_counter() - start
        return metrics


def gradient_round(
    device: DeviceDir,
    global_state: dict[str, np.ndarray],
    spec: RoundSpec,
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
    noise_multiplier: float,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The device's update for a record-level distributed-DP round: minus its clipped gradient sum
    (before its noise share, which the secure ClientApp adds), and the round's metrics.

    Raises:
        ConfigError: the round's model settings are not the device's.
        PrivacyPolicyError, PrivacyBudgetExceeded: the device's policy refuses the round.
        DataError: the device has no training feedback.
    """
    start = time.perf_counter()
    check_device_settings(device, model_cfg)
    privacy, policy = bind_privacy(device, privacy)
    model, _ = worker_model(model_cfg)
    records, used_ids = device.records("train")
    if not records:
        raise DataError("the device has no training feedback", path=str(device.root / "train.jsonl"))
    path = str(device.root / "train.jsonl")
    with RecordedStep(privacy, device.ledger, round=spec.round, noise_multiplier=noise_multiplier) as step:
        train = device.data("train", model)
        if train is None or len(train) == 0:
            raise DataError("the device has no usable training feedback", path=path)
        set_trainable_state(model, global_state)
        model.set_trainable("global")
        model.use_personal(False)
        metrics: dict[str, float] = {}
        test = device.data("test", model) if spec.evaluate else None
        if test is not None and test.num_pairs:
            metrics["global_accuracy"] = evaluate(model, test).accuracy
        update, loss = clipped_gradient_sum(
            model, train, max_grad_norm=privacy.max_grad_norm, rating_reference=train_cfg.rating_reference
        )
        step.ran = True
    return update, step.finish(
        device,
        policy,
        spec=spec,
        global_state=global_state,
        update=update,
        mean_loss=loss,
        units=len(train),
        used_ids=used_ids,
        metrics=metrics,
        start=start,
    )
