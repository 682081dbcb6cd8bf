"""Local DPO / KTO training of a policy's LoRA, plain or DP-SGD (Opacus).

One unit is one DP sample: a preference pair (DPO; slot 0 = chosen, slot 1 =
rejected, two forward calls of ``[B, L]`` so the pair stays one sample), a rated
answer (KTO; slot 1 is an empty placeholder), or a pair read as two ratings (KTO
over chosen = up and rejected = down, both in the one sample the pair is).  The reference policy is the base
with adapters disabled; its log-probs are computed once, before training, and
travel with the unit.  Under DP the run is reserved in and settled with the
device's privacy ledger exactly as the reward model's (:mod:`fedrlhf.training.private`);
this loop never sees epsilon.

Tensors of :class:`PolicyData`: ``input_ids`` [N, 2, L] (right-padded), ``lengths``
[N, 2], ``prompt_lengths`` [N, 2] (response tokens start there), ``ref_logps`` [N, 2],
``kind`` [N] (0 = pair, 1 = rating, 2 = pair as two ratings), ``label`` [N] (+1 / -1 for ratings).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs
from torch.utils.data import DataLoader, TensorDataset

from fedrlhf.config import PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError, ModelError
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating
from fedrlhf.models.losses import dpo, kto
from fedrlhf.models.policy import PolicyModel
from fedrlhf.training.data import PAIR, RATING
from fedrlhf.training.local import (
    TrainResult,
    _diverged,
    _empty_per_sample_grads,
    batch_units,
    check_finite_weights,
    make_loader,
    make_optimizer,
    planned_steps,
)
from fedrlhf.training.private import _warn_secure_mode, open_ledger, plan

TASKS = ("dpo", "kto")
PAIR_AS_RATINGS = 2
"""Unit kind of a pair trained with KTO: chosen rated up, rejected rated down, one DP sample."""


@dataclass
class PolicyData:
    """Tokenized pairs / ratings for policy training; see the module docstring for shapes."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    prompt_lengths: torch.Tensor
    ref_logps: torch.Tensor
    kind: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def tensors(self) -> list[torch.Tensor]:
        return [self.input_ids, self.lengths, self.prompt_lengths, self.ref_logps, self.kind, self.label]


def _tokens(policy: PolicyModel, prompt: str, response: str | None) -> tuple[list[int], int]:
    """Token ids of chat(prompt) + response + end-of-text, left-truncated; and the prompt's length."""
    tok = policy.tokenizer
    templated = bool(getattr(tok, "chat_template", None))
    prompt_ids = tok(policy.chat_text(prompt), add_special_tokens=not templated)["input_ids"]
    if response is None:  # a rating's placeholder slot: no response tokens
        return prompt_ids[-1:], 1
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + eos
    ids = (prompt_ids + response_ids)[-policy.config.max_length :]
    return ids, max(0, len(ids) - len(response_ids))


def encode_policy(records: Sequence[Feedback], policy: PolicyModel, *, pairs_as: str = "pairs") -> PolicyData:
    """Tokenize preferences (and corrections) as DPO pairs and ratings as KTO units.

    ``pairs_as = "ratings"`` makes each pair a KTO unit instead: chosen rated up, rejected
    rated down, both answers in one unit (one DP sample, as the pair is one record).
    """
    if pairs_as not in ("pairs", "ratings"):
        raise ConfigError(f"pairs_as must be 'pairs' or 'ratings', got {pairs_as!r}")
    pair_kind = PAIR if pairs_as == "pairs" else PAIR_AS_RATINGS
    rows: list[tuple[tuple[list[int], int], tuple[list[int], int], int, float]] = []
    for r in records:
        if isinstance(r, Correction):
            r = r.to_preference()
        if isinstance(r, Preference):
            rows.append(
                (_tokens(policy, r.prompt, r.chosen), _tokens(policy, r.prompt, r.rejected), pair_kind, 1.0)
            )
        elif isinstance(r, Rating):
            rows.append(
                (_tokens(policy, r.prompt, r.response), _tokens(policy, r.prompt, None), RATING, r.label)
            )
        else:
            raise TypeError(f"not a feedback record: {type(r).__name__}")
    if not rows:
        raise ValueError("no feedback records to encode")
    width = max(max(len(r[0][0]), len(r[1][0])) for r in rows)
    n = len(rows)
    ids = torch.full((n, 2, width), int(policy.tokenizer.pad_token_id), dtype=torch.long)
    lengths, prompt_lengths = torch.zeros((n, 2), dtype=torch.long), torch.zeros((n, 2), dtype=torch.long)
    for i, row in enumerate(rows):
        for slot, (seq, plen) in enumerate(row[:2]):
            ids[i, slot, : len(seq)] = torch.tensor(seq)
            lengths[i, slot], prompt_lengths[i, slot] = len(seq), plen
    kind = torch.tensor([row[2] for row in rows], dtype=torch.long)
    label = torch.tensor([row[3] for row in rows], dtype=torch.float32)
    return PolicyData(ids, lengths, prompt_lengths, torch.zeros((n, 2)), kind, label)


def _masks(
    lengths: torch.Tensor, prompt_lengths: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and response masks [B, width] of one slot."""
    pos = torch.arange(width).view(1, -1)
    return (pos < lengths.view(-1, 1)).long(), (
        (pos >= prompt_lengths.view(-1, 1)) & (pos < lengths.view(-1, 1))
    ).long()


def slot_logps(
    policy: PolicyModel, input_ids: torch.Tensor, lengths: torch.Tensor, prompt_lengths: torch.Tensor
) -> torch.Tensor:
    """Response log-probs [B, 2] of both slots: two forward calls (the unit stays one sample)."""
    width = max(int(lengths.max()), 2)
    out = []
    for slot in (0, 1):
        mask, response = _masks(lengths[:, slot], prompt_lengths[:, slot], width)
        out.append(policy.sequence_logps(input_ids[:, slot, :width], mask, response))
    return torch.stack(out, dim=1)


@torch.no_grad()
def reference_logps(policy: PolicyModel, data: PolicyData, *, batch_size: int = 16) -> PolicyData:
    """Fill ``data.ref_logps`` with the base policy's (adapters disabled) log-probs; returns ``data``."""
    policy.eval()
    with policy.reference():
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            data.ref_logps[sl] = slot_logps(
                policy, data.input_ids[sl], data.lengths[sl], data.prompt_lengths[sl]
            )
    return data


def unit_losses(
    policy: PolicyModel,
    batch: Sequence[torch.Tensor],
    *,
    beta: float,
    kto_reference: float = 0.0,
    rpo_alpha: float = 0.0,
) -> torch.Tensor:
    """Per-unit losses [B]: DPO for pairs, KTO for ratings, mean KTO of up and down for a pair
    read as two ratings.

    ``rpo_alpha`` > 0 adds the chosen answer's mean token negative log-likelihood, times
    ``rpo_alpha``, to each pair's DPO loss (RPO: Pang et al. 2024, Liu et al. 2024; TRL's
    ``DPOConfig.rpo_alpha``): DPO alone may lower both answers' likelihood and drift into text
    no one wrote; the NLL term holds on to the preferred answer. Still one pair, one sample."""
    input_ids, lengths, prompt_lengths, ref, kind, label = batch
    logps = slot_logps(policy, input_ids, lengths, prompt_lengths)
    pair = dpo(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=beta)
    if rpo_alpha:
        tokens = (lengths[:, 0] - prompt_lengths[:, 0]).clamp(min=1).to(logps.dtype)
        pair = pair - rpo_alpha * logps[:, 0] / tokens
    rating = kto(logps[:, 0], ref[:, 0], label, beta=beta, reference=kto_reference)
    up = torch.ones_like(label)
    both = 0.5 * (
        kto(logps[:, 0], ref[:, 0], up, beta=beta, reference=kto_reference)
        + kto(logps[:, 1], ref[:, 1], -up, beta=beta, reference=kto_reference)
    )
    return torch.where(kind == PAIR, pair, torch.where(kind == PAIR_AS_RATINGS, both, rating))


def implicit_reward_accuracy(policy: PolicyModel, data: PolicyData, *, beta: float = 0.1) -> float:
    """Share of pairs where the implicit reward beta * (log pi - log pi_ref) ranks chosen first (ties 1/2)."""
    margins = implicit_margins(policy, data, beta=beta)
    return float(((margins > 0) + 0.5 * (margins == 0)).mean()) if margins.size else float("nan")


@torch.no_grad()
def implicit_margins(
    policy: PolicyModel, data: PolicyData, *, beta: float = 0.1, batch_size: int = 16
) -> np.ndarray:
    """Implicit-reward margins r(chosen) - r(rejected) of the pairs in ``data``, in order."""
    policy.eval()
    pairs = torch.nonzero(data.kind != RATING).flatten()
    out = []
    for start in range(0, len(pairs), batch_size):
        idx = pairs[start : start + batch_size]
        logps = slot_logps(policy, data.input_ids[idx], data.lengths[idx], data.prompt_lengths[idx])
        ratio = logps - data.ref_logps[idx]
        out.append((beta * (ratio[:, 0] - ratio[:, 1])).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _loop(
    policy: PolicyModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    beta: float,
    kto_reference: float,
    rpo_alpha: float = 0.0,
) -> TrainResult:
    """``steps`` optimizer steps over ``loader`` (cycled); an empty Poisson batch is a noise-only step."""
    policy.train()
    start, losses, units, step = time.perf_counter(), [], 0, 0
    while step < steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            if batch[4].numel() == 0:
                _empty_per_sample_grads(optimizer)
            else:
                losses_ = unit_losses(
                    policy, batch, beta=beta, kto_reference=kto_reference, rpo_alpha=rpo_alpha
                )
                loss = losses_.mean()
                value = float(loss.detach())
                if not math.isfinite(value):
                    _diverged(step + 1, f"loss is {value}", optimizer)
                loss.backward()
                losses.append(value)
                units += int(batch[4].numel())
            optimizer.step()
            step += 1
            check_finite_weights(optimizer, step)
            if step >= steps:
                break
    optimizer.zero_grad(set_to_none=True)
    policy.eval()
    mean = sum(losses) / len(losses) if losses else float("nan")
    return TrainResult(step, units, mean, time.perf_counter() - start, losses)


def train_policy(
    policy: PolicyModel,
    data: PolicyData,
    train_cfg: TrainConfig,
    *,
    beta: float = 0.1,
    kto_reference: float = 0.0,
    rpo_alpha: float = 0.0,
    privacy: PrivacyConfig | None = None,
    ledger_path: Path | None = None,
    label: str = "dpo",
    runs: int = 1,
) -> tuple[TrainResult, dict[str, Any] | None]:
    """Train the policy's LoRA with DPO (pairs) / KTO (ratings); DP-SGD when ``privacy.enabled``.
    ``rpo_alpha`` weights the NLL of each pair's chosen answer (:func:`unit_losses`).

    ``data.ref_logps`` must hold the reference log-probs (:func:`reference_logps`).  Returns the
    result and, under DP, the ledger's report (the contents of ``privacy.json``), else None.
    """
    if len(data) == 0:
        raise ValueError("no training data")
    if not beta > 0:
        raise ConfigError(f"beta must be > 0, got {beta!r}")
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    cfg = dataclasses.replace(train_cfg, grad_accumulation=1)
    optimizer = make_optimizer(policy, cfg)
    if privacy is None or not privacy.enabled:
        loader = make_loader(data.tensors(), batch_units(len(data), cfg), cfg.seed)
        steps = planned_steps(len(data), cfg)
        looped = _loop(
            policy,
            loader,
            optimizer,
            steps=steps,
            beta=beta,
            kto_reference=kto_reference,
            rpo_alpha=rpo_alpha,
        )
        return looped, None
    if ledger_path is None:
        raise ConfigError("DP training needs a privacy ledger file (ledger_path)")
    ledger = open_ledger(privacy, ledger_path)
    held = plan(privacy, ledger, num_units=len(data), train_cfg=cfg, label=label, runs=runs)
    _warn_secure_mode(privacy)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=privacy.secure_mode)
    loader = DataLoader(
        TensorDataset(*data.tensors()),
        batch_size=batch_units(len(data), cfg),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    policy.train()
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=policy,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=held.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            result = _loop(
                policy,
                dp_loader,
                dp_optimizer,
                steps=held.steps,
                beta=beta,
                kto_reference=kto_reference,
                rpo_alpha=rpo_alpha,
            )
    finally:  # what Opacus actually noised replaces the reservation
        dp_model._close()
        ledger.settle(held, steps=sum(int(s) for _, _, s in engine.accountant.history))
    report = {k: v for k, v in ledger.report().items() if k not in ("entries", "reserved")}
    report["max_grad_norm"] = report.get("max_grad_norm") or privacy.max_grad_norm
    return result, report


# --------------------------------------------------------------------------- federated payload


def policy_state(policy: PolicyModel) -> dict[str, np.ndarray]:
    """The LoRA weights as float32 arrays, sorted by name: the federated payload (it flattens
    with :func:`fedrlhf.models.state.flatten_state`)."""
    return {
        n: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for n, p in sorted(policy.named_parameters())
        if p.requires_grad
    }


def set_policy_state(policy: PolicyModel, state: dict[str, np.ndarray]) -> None:
    """Load LoRA weights; names, shapes and finiteness must match (else :class:`ModelError`)."""
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ModelError(f"policy state does not match: missing {missing[:1]}, unexpected {extra[:1]}")
    with torch.no_grad():
        for name, param in params.items():
            value = np.asarray(state[name], dtype=np.float32)
            if value.shape != tuple(param.shape) or not np.all(np.isfinite(value)):
                raise ModelError(f"policy state {name!r}: wrong shape {value.shape} or non-finite values")
            param.copy_(torch.from_numpy(value))


def local_update(
    policy: PolicyModel,
    global_state: dict[str, np.ndarray],
    data: PolicyData,
    train_cfg: TrainConfig,
    **train: Any,
) -> tuple[np.ndarray, TrainResult, dict[str, Any] | None]:
    """One device's round: start from the global LoRA, train on its own units, return the update.

    The update is the flat float32 LoRA delta (sorted names), the only thing a device sends;
    ``data.ref_logps`` must be filled (the reference is the base, the same every round).
    ``train`` goes to :func:`train_policy` (beta, privacy, ledger_path, runs, ...).
    """
    set_policy_state(policy, global_state)
    result, report = train_policy(policy, data, train_cfg, **train)
    after = policy_state(policy)
    delta = np.concatenate([(after[n] - global_state[n]).ravel() for n in sorted(after)]).astype(np.float32)
    return delta, result, report
