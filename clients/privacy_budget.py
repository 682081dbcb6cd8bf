"""The device's privacy budget: epsilon spent so far (from its ledger) against its lifetime budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clients.device import ClientDevice

# --------------------------------------------------------------------------- privacy budget


@dataclass(frozen=True)
class Budget:
    """The device's privacy spent so far (from its ledger) against its lifetime budget."""

    spent: float
    lifetime: float | None
    remaining: float | None
    delta: float
    accountant: str
    runs: int

    def to_json(self) -> dict[str, Any]:
        """JSON-safe fields (an infinite epsilon, from a run without noise, becomes ``null``)."""

        def finite(x: float | None) -> float | None:
            return None if x is None or math.isinf(x) else x

        return {
            "spent": finite(self.spent),
            "unbounded": math.isinf(self.spent),
            "lifetime": self.lifetime,
            "remaining": finite(self.remaining),
            "delta": self.delta,
            "accountant": self.accountant,
            "runs": self.runs,
        }

    def describe(self) -> str:
        """One line for people, e.g. ``epsilon spent 0.52 of 8 (7.48 left), delta 1e-05, 1 run``."""
        spent = "unbounded (a run without noise)" if math.isinf(self.spent) else f"{self.spent:.3g}"
        of = " (no limit)"
        if self.lifetime is not None:
            of = f" of {self.lifetime:g} ({self.remaining or 0.0:.3g} left)"
        runs = f"{self.runs} training run{'s' if self.runs != 1 else ''}"
        return f"epsilon spent {spent}{of}, delta {self.delta:g}, {runs}"


def budget(client: ClientDevice) -> Budget:
    """Privacy spent by every DP run recorded in ``privacy_ledger.json``, at the ledger's own delta."""
    path, s = client.root / "privacy_ledger.json", client.settings  # DeviceDir.ledger, without torch
    if not path.exists():  # nothing spent; skip importing Opacus (and torch)
        return Budget(0.0, s.lifetime_epsilon, s.lifetime_epsilon, s.delta, s.accountant, 0)
    from fedrlhf.privacy.ledger import PrivacyLedger

    # a federation's ledger shows at the delta it was written with; a corrupt one is a one-line LedgerError
    ledger = PrivacyLedger.open(
        path, lifetime_epsilon=s.lifetime_epsilon, accountant=s.accountant, delta=s.delta
    )
    accountant, delta = ledger.accountant, ledger.delta
    return Budget(
        ledger.spent(), s.lifetime_epsilon, ledger.remaining(), delta, accountant, len(ledger.entries)
    )
