"""Composition of DP-SGD runs with Opacus's accountants: mechanism parameters in, epsilon out."""

from __future__ import annotations

import math
from collections.abc import Sequence

from opacus.accountants import (  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs
    IAccountant,
    PRVAccountant,
    RDPAccountant,
)

from fedrlhf.errors import ConfigError

ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}


def compose_epsilon(history: Sequence[tuple[float, float, int]], *, accountant: str, delta: float) -> float:
    """Epsilon of the composition of ``history`` [(noise_multiplier, sample_rate, steps)].

    An empty history is 0; any entry with noise 0 is ``inf`` (no privacy), handled here
    because Opacus's PRV accountant cannot take sigma = 0. A history the accountant
    cannot evaluate (overflow, memory) is a :class:`ConfigError`, never a traceback.
    """
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    acc = make_accountant(history, accountant=accountant)
    try:
        return float(acc.get_epsilon(delta=delta))
    except (ArithmeticError, MemoryError, ValueError) as exc:
        raise ConfigError(
            f"the {accountant!r} accountant cannot compute epsilon for {len(history)} run(s) "
            f"totalling {sum(s for _, _, s in history)} steps ({type(exc).__name__}: {exc})"
        ) from None


def make_accountant(history: Sequence[tuple[float, float, int]], *, accountant: str) -> IAccountant:
    """A fresh Opacus accountant whose ``history`` is ``history``.

    Consecutive entries with the same (noise, sample rate) are merged, exactly as
    Opacus's ``step()`` would have merged them, so the result equals one accountant
    stepped through every run.
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
    merged: list[tuple[float, float, int]] = []
    for sigma, q, steps in history:
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1] = (sigma, q, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(q), int(steps)))
    acc = ACCOUNTANTS[accountant]()
    acc.history = merged
    return acc
