"""Per-device privacy ledger: every DP mechanism a device has run, composed for life.

The ledger never sees a tensor. It stores the mechanism parameters of each
DP-SGD run (``noise_multiplier``, ``sample_rate``, ``steps``) and asks a fresh
Opacus accountant, whose ``history`` it fills from the file, for epsilon. A
second training run on the same data is therefore charged on top of the first,
unlike a ``PrivacyEngine`` created anew each round.

A run is *reserved* before it trains (:meth:`PrivacyLedger.reserve`, under the
file's lock: the budget check and the reservation are one step, so two runs at
once cannot both spend what is left) and *settled* afterwards with the steps
that actually ran (:meth:`PrivacyLedger.settle`). A reservation counts as spent
until then; one left behind by a crashed run stays counted.

The file format is in :mod:`fedrlhf.privacy.ledger_file`. ``delta`` and
``accountant`` are fixed for the life of a ledger: the device's guarantee is
stated at one delta, so a ledger written with another is refused.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from opacus.accountants import IAccountant  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]  # as above

from fedrlhf.errors import ConfigError, PrivacyBudgetExceeded
from fedrlhf.privacy import ledger_file
from fedrlhf.privacy.accounting import ACCOUNTANTS, compose_epsilon, make_accountant
from fedrlhf.privacy.ledger_file import (
    LEDGER_VERSION,
    MAX_SIGMA,
    LedgerEntry,
    LedgerError,
    LedgerFile,
    Reservation,
    validate_clip,
    validate_mechanism,
)

__all__ = [
    "ACCOUNTANTS",
    "LEDGER_VERSION",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "Reservation",
    "compose_epsilon",
    "make_accountant",
    "validate_mechanism",
]


def _check_budget(lifetime_epsilon: float | None) -> None:
    if lifetime_epsilon is None:
        return
    if isinstance(lifetime_epsilon, bool) or not isinstance(lifetime_epsilon, (int, float)):
        raise ConfigError(f"privacy.lifetime_epsilon must be a number >= 0, got {lifetime_epsilon!r}")
    if not (math.isfinite(lifetime_epsilon) and lifetime_epsilon >= 0):
        raise ConfigError(
            f"privacy.lifetime_epsilon must be finite and >= 0 (0: nothing may be spent; None: no "
            f"limit), got {lifetime_epsilon!r}"
        )


class PrivacyLedger:
    """The privacy a device has spent over all runs, persisted at ``path``.

    Training calls :meth:`reserve` before it starts (refused if over budget) and
    :meth:`settle` with the steps that ran; :meth:`report` gives the ``privacy.json`` fields.

    Args:
        path: the JSON file (e.g. ``DEVICE_DIR / "privacy_ledger.json"``); created on
            the first :meth:`record` or :meth:`reserve`.
        accountant: ``"rdp"`` or ``"prv"`` (Opacus accountants).
        delta: the delta of every epsilon this ledger reports.
        lifetime_epsilon: the device's total budget (``0``: nothing may be spent), or
            ``None`` for no limit.

    Raises:
        LedgerError: the file exists but is not exactly a valid ledger (one line, naming it).
        ConfigError: the file was written with another accountant or delta.
    """

    def __init__(
        self, path: Path | str, *, accountant: str = "rdp", delta: float, lifetime_epsilon: float | None
    ) -> None:
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy.accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {delta!r}")
        _check_budget(lifetime_epsilon)
        self.path = Path(path)
        self.accountant = accountant
        self.delta = float(delta)
        self.lifetime_epsilon = lifetime_epsilon
        self._content = self._load()

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        lifetime_epsilon: float | None,
        accountant: str = "rdp",
        delta: float = 1e-5,
    ) -> PrivacyLedger:
        """The ledger at ``path`` with the accountant and delta it was written with.

        ``accountant`` and ``delta`` apply only when the file does not exist yet. A file
        that is not exactly a valid ledger is a :class:`LedgerError` naming it.
        """
        written = ledger_file.read(Path(path))
        if written is not None:
            accountant, delta = written.accountant, written.delta
        return cls(path, accountant=accountant, delta=delta, lifetime_epsilon=lifetime_epsilon)

    # ---------------------------------------------------------------- reading
    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every recorded run, oldest first (re-read from the file)."""
        return self._refresh().entries

    @property
    def reserved(self) -> tuple[Reservation, ...]:
        """Runs reserved and not yet settled (in progress, or left by a crashed run)."""
        return self._refresh().reserved

    def history(self) -> list[tuple[float, float, int]]:
        """The Opacus-style history [(noise_multiplier, sample_rate, steps), ...], reservations last.

        Re-read from the file on every call, so a run another process recorded or reserved
        since this ledger was opened is never missed. Reservations count as spent.
        """
        content = self._refresh()
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in (*content.entries, *content.reserved)]

    def _refresh(self) -> LedgerFile:
        self._content = self._load()
        return self._content

    def to_accountant(self) -> IAccountant:
        """A fresh Opacus accountant loaded with the whole history (reservations included)."""
        return make_accountant(self.history(), accountant=self.accountant)

    def spent(self) -> float:
        """Epsilon (at ``delta``) over every recorded and reserved run; ``inf`` if any had no noise."""
        return compose_epsilon(self.history(), accountant=self.accountant, delta=self.delta)

    def project(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon the ledger would show if a run with these parameters were added."""
        validate_mechanism(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        planned = self.history() + [(noise_multiplier, sample_rate, steps)]
        return compose_epsilon(planned, accountant=self.accountant, delta=self.delta)

    def remaining(self) -> float | None:
        """Budget left (``lifetime_epsilon - spent``, never below 0); ``None`` without a budget."""
        if self.lifetime_epsilon is None:
            return None
        return max(0.0, self.lifetime_epsilon - self.spent())

    def check(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Return the projected epsilon, or raise :class:`PrivacyBudgetExceeded` if over budget."""
        projected = self.project(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        budget = self.lifetime_epsilon
        if budget is None or projected <= budget:
            return projected
        spent = self.spent()
        raise PrivacyBudgetExceeded(
            f"privacy budget exceeded ({self.path}): this run (noise_multiplier={noise_multiplier}, "
            f"sample_rate={sample_rate}, steps={steps}) would raise the device's epsilon from "
            f"{spent:.4g} to {projected:.4g} (delta={self.delta:g}), over its lifetime budget "
            f"{budget:.4g}. Train with more noise, fewer steps or a smaller sample rate, or raise "
            "privacy.lifetime_epsilon.",
            spent=spent,
            projected=projected,
            budget=budget,
        )

    def noise_for_target(self, *, target_epsilon: float, sample_rate: float, steps: int) -> float:
        """Smallest noise multiplier (within Opacus's 0.01 tolerance) such that the ledger
        *after* this run is at most ``target_epsilon``.

        With an empty ledger this is exactly ``opacus.accountants.utils.get_noise_multiplier``;
        otherwise the same doubling-then-bisection search runs over history + this run.

        Raises:
            PrivacyBudgetExceeded: the runs already recorded spend ``target_epsilon`` or more,
                so no amount of noise can meet it.
        """
        validate_mechanism(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps)
        if not target_epsilon > 0:
            raise ConfigError(f"target_epsilon must be > 0, got {target_epsilon!r}")
        if not self.history():
            try:
                return float(
                    get_noise_multiplier(
                        target_epsilon=target_epsilon,
                        target_delta=self.delta,
                        sample_rate=sample_rate,
                        steps=steps,
                        accountant=self.accountant,
                    )
                )
            except ValueError as exc:  # Opacus: "The privacy budget is too low."
                raise ConfigError(
                    f"privacy.target_epsilon={target_epsilon:g} cannot be reached with the "
                    f"{self.accountant!r} accountant at delta={self.delta:g} ({exc}); raise the target, "
                    "or use privacy.accountant = 'prv', whose bound is tighter at small epsilon"
                ) from None
        spent = self.spent()
        if spent >= target_epsilon:
            raise PrivacyBudgetExceeded(
                f"privacy budget exceeded ({self.path}): the device has already spent epsilon "
                f"{spent:.4g} (delta={self.delta:g}), at or over the target {target_epsilon:.4g}; "
                "no noise level can meet it. Raise the target or train on new data with a new ledger.",
                spent=spent,
                projected=math.inf,
                budget=target_epsilon,
            )
        return self._bisect_noise(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=steps)

    def _bisect_noise(
        self, *, target_epsilon: float, sample_rate: float, steps: int, tolerance: float = 0.01
    ) -> float:
        """Opacus's ``get_noise_multiplier`` search, with the recorded history prepended."""
        prior = self.history()

        def eps(sigma: float) -> float:
            planned = prior + [(sigma, sample_rate, steps)]
            return compose_epsilon(planned, accountant=self.accountant, delta=self.delta)

        sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
        while eps_high > target_epsilon:
            sigma_high *= 2
            if sigma_high > MAX_SIGMA:
                raise ConfigError(f"target_epsilon {target_epsilon} is too low for sample_rate and steps")
            eps_high = eps(sigma_high)
        while target_epsilon - eps_high > tolerance:
            sigma = (sigma_low + sigma_high) / 2
            eps_mid = eps(sigma)
            if eps_mid < target_epsilon:
                sigma_high, eps_high = sigma, eps_mid
            else:
                sigma_low = sigma
        return sigma_high

    def report(self) -> dict[str, Any]:
        """The ledger for ``privacy.json``.

        Reservations (runs in progress, or left by a crashed run) count as runs here.
        ``noise_multiplier``, ``sample_rate`` and ``max_grad_norm`` describe the composed
        mechanism when every run used the same values (``steps`` is then the total), else
        they are ``None``. ``epsilon`` is ``math.inf`` if any run had no noise.
        """
        content = self._refresh()
        runs = (*content.entries, *content.reserved)
        homogeneous = len({(e.noise_multiplier, e.sample_rate, e.max_grad_norm) for e in runs}) == 1
        first = runs[0] if homogeneous else None
        return {
            "epsilon": self.spent(),
            "delta": self.delta,
            "lifetime_epsilon": self.lifetime_epsilon,
            "remaining": self.remaining(),
            "accountant": self.accountant,
            "noise_multiplier": first.noise_multiplier if first else None,
            "sample_rate": first.sample_rate if first else None,
            "max_grad_norm": first.max_grad_norm if first else None,
            "steps": sum(e.steps for e in runs) if homogeneous else None,
            "entries": [asdict(e) for e in content.entries],
            "reserved": [asdict(r) for r in content.reserved],
        }

    # ---------------------------------------------------------------- writing
    def record(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        label: str,
        max_grad_norm: float | None = None,
    ) -> LedgerEntry:
        """Append one run and save the ledger atomically; returns the new entry.

        The file is re-read under a lock first, so a run recorded by another process
        since this ledger was opened is kept, never overwritten.
        """
        entry = _entry(LedgerEntry, noise_multiplier, sample_rate, steps, label, max_grad_norm)
        with ledger_file.locked(self.path):
            content = self._load()
            self._save(dataclasses.replace(content, entries=(*content.entries, entry)))
        return entry

    def reserve(
        self,
        *,
        sample_rate: float,
        steps: int,
        label: str,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        max_grad_norm: float | None = None,
        runs: int = 1,
    ) -> Reservation:
        """Plan a run under the lock: check the budget against everything recorded or reserved, then
        write the reservation. Returns it (its ``noise_multiplier`` is the one to train with).

        Give ``noise_multiplier``, or ``target_epsilon`` to pick the noise so the ledger after this
        run is at most the target (:meth:`noise_for_target`, counting other runs' reservations).
        ``runs``: this run is the first of ``runs`` identical ones (a federation's remaining
        rounds): the noise is the one at which all of them together meet the target; only this
        run is reserved. Asked again before each later run, the same noise comes out.

        Raises:
            PrivacyBudgetExceeded: over the lifetime budget (nothing is written).
        """
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ConfigError("reserve: give exactly one of noise_multiplier or target_epsilon")
        with ledger_file.locked(self.path):
            if target_epsilon is not None:
                if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
                    raise ConfigError(f"reserve: runs must be an integer >= 1, got {runs!r}")
                noise_multiplier = self.noise_for_target(
                    target_epsilon=float(target_epsilon), sample_rate=sample_rate, steps=steps * runs
                )
            noise_multiplier = cast(float, noise_multiplier)  # exactly one was given (checked above)
            self.check(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
            held = _entry(Reservation, noise_multiplier, sample_rate, steps, label, max_grad_norm)
            held = dataclasses.replace(held, id=secrets.token_hex(8))
            content = self._load()
            self._save(dataclasses.replace(content, reserved=(*content.reserved, held)))
        return held

    def settle(self, reservation: Reservation, *, steps: int) -> LedgerEntry | None:
        """Replace ``reservation`` by the run that happened: ``steps`` steps (0: drop it).

        The recorded entry keeps the reservation's mechanism and label. Returns it, or
        ``None`` when no step ran.
        """
        entry = None
        if steps:
            entry = _entry(
                LedgerEntry,
                reservation.noise_multiplier,
                reservation.sample_rate,
                steps,
                reservation.label,
                reservation.max_grad_norm,
            )
        with ledger_file.locked(self.path):
            content = self._load()
            left = tuple(r for r in content.reserved if r.id != reservation.id)
            self._save(
                LedgerFile(
                    content.accountant, content.delta, (*content.entries, *([entry] if entry else [])), left
                )
            )
        return entry

    def _save(self, content: LedgerFile) -> None:
        ledger_file.write(self.path, content)
        self._content = content

    def _load(self) -> LedgerFile:
        """Read and validate the file; a missing file is an empty ledger with this one's settings."""
        content = ledger_file.read(self.path)
        if content is None:
            return LedgerFile(self.accountant, self.delta)
        if content.accountant != self.accountant or content.delta != self.delta:
            raise ConfigError(
                f"privacy ledger {self.path} was written with accountant={content.accountant!r}, "
                f"delta={content.delta!r}, but this run uses accountant={self.accountant!r}, "
                f"delta={self.delta!r}. A device's lifetime guarantee is stated with one accountant "
                f"and one delta: set privacy.accountant = {content.accountant!r} and privacy.delta = "
                f"{content.delta!r}."
            )
        return content


def _entry(
    cls: type[LedgerEntry],
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    label: str,
    max_grad_norm: float | None,
) -> Any:
    """A validated entry (or reservation) timestamped now."""
    validate_mechanism(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    validate_clip(max_grad_norm)
    return cls(
        noise_multiplier=float(noise_multiplier),
        sample_rate=float(sample_rate),
        steps=int(steps),
        label=str(label),
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
    )
