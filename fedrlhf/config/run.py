"""The whole run config and the checks that span its sections."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fedrlhf.config.aggregation import RobustConfig, SecAggConfig, UserDPConfig
from fedrlhf.config.federation import FederationConfig, PolicySettings, WarmStartConfig
from fedrlhf.config.simulation import AttackSettings, CohortConfig
from fedrlhf.config.training import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError


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
        if self.robust.drop_dissenters and not self.robust.num_malicious:
            raise ConfigError(
                "robust.drop_dissenters leaves out up to robust.num_malicious devices a round, which is 0; "
                "set num_malicious to the attackers to tolerate"
            )
        if self.user_dp.enabled and self.robust.drop_dissenters:
            raise ConfigError(
                "robust.drop_dissenters leaves out the devices that agree least with the others; user_dp "
                "runs DP-FedAvg over every clipped update, so turn one of them off"
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
        if cfg.cohort.responses == "policy":
            raise ConfigError(
                "cohort.responses = 'policy' pairs the policy's own answers: set federation.task to "
                "'dpo' or 'kto', or cohort.responses = 'rendered' for a reward model"
            )
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
