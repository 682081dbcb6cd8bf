"""The ``dpo`` / ``kto`` task of a federation, without Flower: a device's round and evaluation,
and the server's first global LoRA, held-out evaluation and saved policy.

A device is the reward task's directory (:class:`~fedrlhf.training.device.DeviceDir`): its
feedback, its privacy ledger and, when a person set it up, ``client.json``, whose privacy
policy binds a policy round exactly as a reward round (:func:`~fedrlhf.training.device.bind_privacy`).
What travels is the flat LoRA delta of the policy (:func:`~fedrlhf.training.dpo.policy_state`
names), nothing else.

Units (:mod:`fedrlhf.training.dpo`): ``dpo`` trains on the device's preference pairs (and
corrections; its ratings are not pairs and stay unused); ``kto`` trains on its thumbs up / down
ratings and reads each pair as two ratings, chosen = up and rejected = down, in one DP sample.
The reference log-probs (the base, adapters disabled) never change, so they are computed once
and cached with the tokens in ``DIR/cache/policy-<key>.safetensors``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedrlhf.config import PolicySettings, PrivacyConfig, TrainConfig
from fedrlhf.errors import DataError
from fedrlhf.feedback import read_feedback
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating
from fedrlhf.io import write_with
from fedrlhf.models.policy import PolicyConfig, PolicyModel, resolve_policy
from fedrlhf.privacy.policy import DevicePrivacyPolicy
from fedrlhf.training.device import DeviceDir, RoundSpec, bind_privacy, check_max_length, settle_round
from fedrlhf.training.dpo import (
    PolicyData,
    encode_policy,
    implicit_reward_accuracy,
    policy_state,
    reference_logps,
    set_policy_state,
    train_policy,
    unit_losses,
)

CACHE_FORMAT = 1
"""Bumped whenever the cached tensors' meaning changes (old cache files are then ignored)."""


def policy_config(settings: PolicySettings) -> PolicyConfig:
    """The model-side config of the run's ``[policy]`` section."""
    return PolicyConfig(
        base=settings.model,
        lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_target_modules=settings.lora_target_modules,
        max_length=settings.max_length,
        lora_layers=settings.lora_layers,
    )


@lru_cache(maxsize=1)
def worker_policy(settings: PolicySettings) -> PolicyModel:
    """The process-wide policy for ``settings`` (the base is loaded once; each round sets the
    global LoRA into it)."""
    return PolicyModel.build(policy_config(settings), seed=0)


def training_units(records: Sequence[Feedback], task: str) -> list[Feedback]:
    """The records a ``task`` trains on: pairs (and corrections) for dpo; ratings and pairs for kto."""
    if task == "dpo":
        return [r for r in records if isinstance(r, (Preference, Correction))]
    return [r for r in records if isinstance(r, (Preference, Correction, Rating))]


def _base_identity(base: str) -> list[object]:
    """What the reference log-probs depend on besides the data: the base model's files."""
    path = Path(resolve_policy(base))
    if not path.is_dir():
        return [base]
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return [str(path.resolve()), *[(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def cache_key(records: Sequence[Feedback], policy: PolicyModel, pairs_as: str) -> str:
    """Hash of the data, the base model, the tokenizer, its chat template and the max length."""
    tok = policy.tokenizer
    h = hashlib.sha256()
    head = [CACHE_FORMAT, pairs_as, policy.config.max_length, _base_identity(policy.config.base)]
    head += [type(tok).__name__, tok.vocab_size, getattr(tok, "chat_template", None)]
    h.update(json.dumps(head, default=str).encode())
    for r in records:
        h.update(repr(r).encode())
    return h.hexdigest()[:24]


def encode_with_reference(
    records: Sequence[Feedback], policy: PolicyModel, cache_dir: Path | None, *, pairs_as: str = "pairs"
) -> PolicyData:
    """Tokens and reference log-probs of ``records`` (:func:`encode_policy`, :func:`reference_logps`),
    reused from ``cache_dir`` when they were computed before."""
    path = (
        None
        if cache_dir is None
        else cache_dir / f"policy-{cache_key(records, policy, pairs_as)}.safetensors"
    )
    if path is not None and path.is_file():
        try:
            return PolicyData(**load_file(str(path)))
        except Exception:  # a corrupt cache is only a cache: rebuild it
            path.unlink(missing_ok=True)
    data = reference_logps(policy, encode_policy(records, policy, pairs_as=pairs_as))
    if path is not None:
        tensors = {f.name: getattr(data, f.name).contiguous() for f in dataclasses.fields(data)}
        write_with(path, lambda tmp: save_file(tensors, str(tmp)))
    return data


def _units(device: DeviceDir, task: str) -> tuple[list[Feedback], list[int]]:
    """The device's training records ``task`` trains on and the ids of all its training records."""
    records, used_ids = device.records("train")
    units = training_units(records, task)
    if not units:
        what = "preference pairs" if task == "dpo" else "ratings or preference pairs"
        raise DataError(f"the device has no {what} to train {task} on", path=str(device.root / "train.jsonl"))
    return units, used_ids


def _pairs_as(task: str) -> str:
    return "pairs" if task == "dpo" else "ratings"


def _test_pairs(device: DeviceDir, policy: PolicyModel) -> PolicyData | None:
    pairs = [r for r in device.records("test")[0] if isinstance(r, (Preference, Correction))]
    return encode_with_reference(pairs, policy, device.root / "cache") if pairs else None


def _open_round(
    device: DeviceDir, task: str, settings: PolicySettings, privacy: PrivacyConfig
) -> tuple[PrivacyConfig, DevicePrivacyPolicy | None, PolicyModel, list[Feedback], list[int]]:
    """What both rounds check and load first: the device's settings and privacy policy (the
    bound privacy config and the policy), the worker's policy model, the units and used ids."""
    check_max_length(device, settings.max_length, "policy.max_length")
    privacy, own_policy = bind_privacy(device, privacy)
    policy = worker_policy(settings)
    units, used_ids = _units(device, task)
    return privacy, own_policy, policy, units, used_ids


def _received(
    device: DeviceDir,
    policy: PolicyModel,
    global_state: dict[str, np.ndarray],
    spec: RoundSpec,
    settings: PolicySettings,
) -> dict[str, float]:
    """Set the received global LoRA; its accuracy on the device's test pairs when the round evaluates."""
    set_policy_state(policy, global_state)
    test = _test_pairs(device, policy) if spec.evaluate else None
    if test is None:
        return {}
    return {"global_accuracy": implicit_reward_accuracy(policy, test, beta=settings.beta)}


def policy_round(
    device: DeviceDir,
    global_state: dict[str, np.ndarray],
    spec: RoundSpec,
    *,
    task: str,
    settings: PolicySettings,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train the policy's LoRA on the device's data from ``global_state`` with DPO or KTO
    (``task``); return (LoRA delta, metrics), as :func:`~fedrlhf.training.device.client_round`
    does for the reward model, under the same device privacy policy and ledger.

    Raises:
        ConfigError: the round's ``policy.max_length`` is not the device's.
        PrivacyPolicyError, PrivacyBudgetExceeded: the device's policy refuses the round.
        DataError: the device holds nothing this task trains on.
    """
    start = time.perf_counter()
    privacy, own_policy, policy, units, used_ids = _open_round(device, task, settings, privacy)
    train = encode_with_reference(units, policy, device.root / "cache", pairs_as=_pairs_as(task))
    metrics = _received(device, policy, global_state, spec, settings)
    cfg = dataclasses.replace(train_cfg, epochs=spec.local_epochs, seed=spec.seed)
    torch.manual_seed(spec.seed)
    result, report = train_policy(
        policy,
        train,
        cfg,
        beta=settings.beta,
        rpo_alpha=settings.rpo_alpha,
        privacy=privacy,
        ledger_path=device.ledger,
        label=f"round-{spec.round}",
        runs=max(1, spec.rounds - spec.round + 1),  # this round and the ones left share the target
    )
    delta, settled = settle_round(
        device,
        own_policy,
        spec=spec,
        result=result,
        privacy_report=report,
        before=global_state,
        after=policy_state(policy),
        used_ids=used_ids,
        units=len(train),
    )
    metrics.update(settled)
    metrics["seconds"] = time.perf_counter() - start
    return delta, metrics


def policy_gradient_round(
    device: DeviceDir,
    global_state: dict[str, np.ndarray],
    spec: RoundSpec,
    *,
    task: str,
    settings: PolicySettings,
    privacy: PrivacyConfig,
    noise_multiplier: float,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Record-level distributed DP (``secagg.record_dp``) for the policy: minus the sum over the
    device's units (a pair, or a rating) of their DPO / KTO gradients at the global LoRA, each
    clipped to ``privacy.max_grad_norm`` (:func:`~fedrlhf.training.fedsgd.clip_and_sum`), and the
    round's metrics. The secure ClientApp adds the device's noise share before masking, so the
    server only sees group sums: one step of full-batch DP-GD on all the group's pairs, recorded
    as ``(sigma, 1, 1)`` in the device's own ledger before anything leaves it.

    Raises what :func:`policy_round` raises, for the same reasons.
    """
    from fedrlhf.training.fedsgd import RecordedStep, clip_and_sum

    start = time.perf_counter()
    privacy, own_policy, policy, units, used_ids = _open_round(device, task, settings, privacy)
    with RecordedStep(privacy, device.ledger, round=spec.round, noise_multiplier=noise_multiplier) as step:
        train = encode_with_reference(units, policy, device.root / "cache", pairs_as=_pairs_as(task))
        metrics = _received(device, policy, global_state, spec, settings)
        policy.train()
        try:
            sums, total = clip_and_sum(
                policy,
                train.tensors(),
                lambda batch: unit_losses(policy, batch, beta=settings.beta, rpo_alpha=settings.rpo_alpha),
                max_grad_norm=privacy.max_grad_norm,
            )
        finally:
            policy.eval()
        step.ran = True
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    update = {n: (-g).cpu().numpy().astype(np.float32) for n, g in zip(names, sums, strict=True)}
    return update, step.finish(
        device,
        own_policy,
        spec=spec,
        global_state=global_state,
        update=update,
        mean_loss=total / len(train),
        units=len(train),
        used_ids=used_ids,
        metrics=metrics,
        start=start,
    )


def policy_evaluate(
    device: DeviceDir, global_state: dict[str, np.ndarray], *, settings: PolicySettings
) -> dict[str, float]:
    """Implicit-reward accuracy of the global policy on the device's own held-out pairs."""
    check_max_length(device, settings.max_length, "policy.max_length")
    policy = worker_policy(settings)
    test = _test_pairs(device, policy)
    if test is None:
        return {"num-examples": 0.0}
    set_policy_state(policy, global_state)
    return {
        "global_accuracy": implicit_reward_accuracy(policy, test, beta=settings.beta),
        "num-examples": float(len(test)),
    }


# ---------------------------------------------------------------- the server's side


def initial_policy_state(settings: PolicySettings, *, seed: int) -> dict[str, np.ndarray]:
    """The first global LoRA: seeded A, B = 0, so the round-0 policy is its base."""
    policy = worker_policy(settings)
    policy.reset_adapter(seed)
    return policy_state(policy)


def heldout_accuracy(settings: PolicySettings, global_state: dict[str, np.ndarray], path: Path) -> float:
    """Implicit-reward accuracy of the global policy on the preference pairs of ``path`` (the
    operator's held-out file; its tokens and reference log-probs are cached beside it)."""
    pairs = [r for r in read_feedback(path).records if isinstance(r, (Preference, Correction))]
    if not pairs:
        raise DataError("no preference pairs to evaluate the policy on", path=str(path))
    policy = worker_policy(settings)
    data = encode_with_reference(pairs, policy, path.parent / ".fedrlhf-cache")
    set_policy_state(policy, global_state)
    return implicit_reward_accuracy(policy, data, beta=settings.beta)


def save_policy(settings: PolicySettings, global_state: dict[str, np.ndarray], path: Path) -> None:
    """Write the global policy as a directory ``PolicyModel.from_pretrained`` (or plain peft) loads."""
    policy = worker_policy(settings)
    set_policy_state(policy, global_state)
    policy.save_pretrained(path)
