"""How the server combines updates: the robust rule, user-level DP and secure aggregation."""

from __future__ import annotations

from dataclasses import dataclass

from fedrlhf.config.base import _integer, _positive
from fedrlhf.errors import ConfigError


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
        remember_drops: a device whose update an earlier round rejected or left out is left out
            again, before the rule, and counts against ``num_malicious``. First go the updates a
            filtering rule flags when it scores the whole round, remembered ones included (their
            partners in a coalition stand out only beside them), then the remembered (those left
            out in the most rounds, then the most recently), at most ``num_malicious`` in all. The
            memory is the run's history, so it survives a resume. In secure mode it works by
            group testing: every member of a group mean left out is remembered, and a group mean
            with a remembered member is left out (an attacker is in every group dropped for it,
            an honest partner only by chance, so the attackers' counts grow fastest).
        remember_after: rounds in which the rule must have left a device out before
            ``remember_drops`` keeps it out (>= 1; a rejection before the rule, on proof such as
            an update above ``client_clip_norm`` or by ``max_norm_ratio``, counts at once). At 2
            an honest device the rule flags once (honest users with similar data look like a
            coalition now and then) is not kept out for the rest of the run, while a coalition
            the rule flags round after round is.
        drop_dissenters: each round, the devices whose update agrees least with the others
            (cosine to the mean of the other updates, all clipped to the median norm), averaged
            over every round each device took part in, are left out before the rule: as many as
            ``num_malicious`` leaves after the round's proven attackers, remembered devices and
            the rule's own drops (scored over the whole round). Label and sign flippers share no
            direction, so no coalition filter sees them, but each points a little against
            everyone else round after round. A clean round also loses that many honest devices
            (the ones that agree least). The scores are the run's history. In secure mode each
            member of a group is scored with its group mean, and a group mean ranks by its
            lowest member's average (its honest partners are left out with it).
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
    remember_after: int = 1
    drop_dissenters: bool = False
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
        _integer("robust.remember_after", self.remember_after, minimum=1)
        if not isinstance(self.drop_dissenters, bool):
            raise ConfigError(f"robust.drop_dissenters must be true or false, got {self.drop_dissenters!r}")
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
