"""The device's own privacy policy: what it allows, whatever a server asks.

A real device states its policy in ``DEVICE_DIR/client.json`` (written by
``fedrlhf-client init``); the keys read here are::

    "lifetime_epsilon": 8.0       # total budget at "delta"; 0 = nothing may be spent;
                                  # "none" = no limit (the explicit word; null is refused)
    "delta": 1e-05                # the delta of every epsilon the device states
    "accountant": "rdp"           # "rdp" or "prv"

The policy binds every round (:meth:`DevicePrivacyPolicy.bind`): the device's delta,
accountant and lifetime budget replace the server's, DP is required unless the device
set no limit, and a round over the budget is refused before training.

A directory without ``client.json`` (a simulated device) has no policy: the server's
privacy settings apply, and its ledger still composes every DP round on its data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrlhf.config import PrivacyConfig
from fedrlhf.errors import ConfigError, PrivacyBudgetExceeded, PrivacyPolicyError

SETTINGS_FILE = "client.json"
NO_LIMIT = "none"


def parse_lifetime(value: Any, *, where: str) -> float | None:
    """A stored ``lifetime_epsilon``: a number >= 0, or ``"none"`` (no limit) -> ``None``.

    ``null`` is refused: versions before 0.2 wrote it both for 0 and for no limit.
    """
    if isinstance(value, str) and value.strip().lower() == NO_LIMIT:
        return None
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    hint = " (older versions wrote null both for 0 and for no limit)" if value is None else ""
    raise ConfigError(
        f"{where}: lifetime_epsilon must be a number >= 0 (0: nothing may be spent) or "
        f'"{NO_LIMIT}" (no limit), got {json.dumps(value)}{hint}'
    )


@dataclass(frozen=True)
class DevicePrivacyPolicy:
    """What a device allows its data to be used for.

    Attributes:
        lifetime_epsilon: total epsilon (at ``delta``) over every run on this device's data;
            ``0`` allows nothing, ``None`` is an explicit "no limit" (then a non-private round
            is allowed too, and recorded in the ledger as epsilon = inf).
        delta: the delta of the device's guarantee (its ledger's delta).
        accountant: ``"rdp"`` or ``"prv"`` (its ledger's accountant).
        source: where the policy was read from (named in errors).
    """

    lifetime_epsilon: float | None
    delta: float = 1e-5
    accountant: str = "rdp"
    source: str = SETTINGS_FILE

    def __post_init__(self) -> None:
        parse_lifetime(
            NO_LIMIT if self.lifetime_epsilon is None else self.lifetime_epsilon, where=self.source
        )
        PrivacyConfig(delta=self.delta, accountant=self.accountant)  # validates both

    @property
    def requires_dp(self) -> bool:
        """A device with a budget never sends a non-private update (its epsilon would be inf)."""
        return self.lifetime_epsilon is not None

    @classmethod
    def load(cls, root: Path) -> DevicePrivacyPolicy | None:
        """The policy in ``root/client.json``, or ``None`` when the directory has none."""
        path = root / SETTINGS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        if "lifetime_epsilon" not in data:
            raise ConfigError(f'{path}: lifetime_epsilon is missing (a number, or "{NO_LIMIT}")')
        try:
            return cls(
                lifetime_epsilon=parse_lifetime(data["lifetime_epsilon"], where=str(path)),
                delta=data.get("delta", 1e-5),
                accountant=data.get("accountant", "rdp"),
                source=str(path),
            )
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from None

    def bind(self, requested: PrivacyConfig, *, spent: float) -> PrivacyConfig:
        """The privacy settings this device trains a round with, given the server's ``requested``.

        The device's delta, accountant and lifetime budget apply (the server's lifetime budget
        too, if it is smaller); the noise or target epsilon the server asks for is kept.

        Args:
            requested: the server's privacy settings for the round.
            spent: epsilon already spent on this device (its ledger), for the messages.

        Raises:
            PrivacyPolicyError: the server asks for a round without DP on a device with a budget.
            PrivacyBudgetExceeded: the device allows no spending at all (``lifetime_epsilon`` 0).
        """
        if self.lifetime_epsilon == 0:
            raise PrivacyBudgetExceeded(
                f"this device allows no privacy spending (lifetime_epsilon 0 in {self.source}); "
                "it refuses every training round",
                spent=spent,
                projected=math.inf,
                budget=0.0,
            )
        if not requested.enabled:
            if self.requires_dp:
                raise PrivacyPolicyError(
                    f"this device requires differential privacy (lifetime_epsilon "
                    f"{self.lifetime_epsilon:g} in {self.source}), but the server asked for a round "
                    "with privacy.enabled = false; enable privacy in the federation's config"
                )
            return requested
        budgets = [b for b in (requested.lifetime_epsilon, self.lifetime_epsilon) if b is not None]
        return dataclasses.replace(
            requested,
            delta=self.delta,
            accountant=self.accountant,
            lifetime_epsilon=min(budgets) if budgets else None,
        )
