"""What both sides of a secure round share: its FitIns config keys, the distributed-DP noise parameters
derived from the run config, and what the server learns from a round (:class:`SecureRoundResult`).

See :mod:`fedrlhf.federation.secure` for the protocol.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedrlhf.config import RunConfig
from fedrlhf.privacy.distributed import record_noise_multiplier

SURVIVORS_KEY = "dp-survivors"
"""FitIns config key: the group's reconstruction threshold (distributed DP's noise share)."""
PARAM_NAMES_KEY = "param-names"
"""FitIns config key: the comma-joined names of the flat parameter list, in layout order."""


@dataclasses.dataclass
class SecureRoundResult:
    """What the server learns from one secure round.

    Attributes:
        group_means: one flat float32 vector (layout order) per usable group: the
            mean of its surviving members' clipped updates.
        group_sizes: clients behind each group mean.
        metrics: per usable group: masked metrics' group means, the largest plaintext
            epsilon, ``group``, ``clients``, ``seconds``.
        failures: counts by reason: ``error`` (members that dropped out of a completed
            group); ``group_halted`` (groups that lost too many members for SecAgg+ to
            finish); ``group_error`` (groups whose protocol raised, e.g. on a malformed
            masked vector); ``lost_clients`` (members of halted or failed groups);
            ``weight`` (clients that reported a weight other than 1); ``group_rejected``
            (groups discarded for a wrong weight or for a mean that no clipped updates can
            have); ``grouping`` (sampled clients that could not be grouped).
        bytes_up, bytes_down: serialized message contents of the whole protocol.
        members: devices behind each group mean.
        flagged: devices that reported a weight other than 1.
        rejected: the members of the groups counted as ``group_rejected``.
        epsilons: device -> the record-level epsilon it reported in plaintext (its ledger's
            total after this round), for the devices of usable groups that reported one.
    """

    group_means: list[np.ndarray] = dataclasses.field(default_factory=list)
    group_sizes: list[int] = dataclasses.field(default_factory=list)
    metrics: list[dict[str, float]] = dataclasses.field(default_factory=list)
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    members: list[list[str]] = dataclasses.field(default_factory=list)
    flagged: list[str] = dataclasses.field(default_factory=list)
    rejected: list[str] = dataclasses.field(default_factory=list)
    epsilons: dict[str, float] = dataclasses.field(default_factory=dict)

    def count(self, reason: str, n: int = 1) -> None:
        """Add ``n`` to failure counter ``reason`` (absent while zero)."""
        if n:
            self.failures[reason] = self.failures.get(reason, 0) + n


def noise_parameters(cfg: RunConfig) -> tuple[float, float]:
    """(noise multiplier, clip norm it scales) of the run's distributed DP; (0, 0) without one.

    User level: ``secagg.dp_noise_multiplier`` on updates clipped to ``secagg.clip_norm``.
    Record level (``secagg.record_dp``): sigma (:func:`record_noise_multiplier`) on records'
    gradients clipped to ``privacy.max_grad_norm``.
    """
    if cfg.secagg.record_dp:
        return record_noise_multiplier(cfg.privacy, cfg.federation.rounds), cfg.privacy.max_grad_norm
    if cfg.secagg.dp_noise_multiplier:
        return cfg.secagg.dp_noise_multiplier, cfg.secagg.clip_norm
    return 0.0, 0.0
