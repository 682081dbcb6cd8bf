"""Per-device privacy ledger: every DP mechanism a device has run, composed for life.

The ledger never sees a tensor. It stores the mechanism parameters of each
DP-SGD run (``noise_multiplier``, ``sample_rate``, ``steps``) and asks a fresh
Opacus accountant, whose ``history`` it fills from the file, for epsilon. A
second training run on the same data is therefore charged on top of the first,
unlike a ``PrivacyEngine`` created anew each round.

File format (JSON, written atomically)::

    {"version": 1, "accountant": "rdp", "delta": 1e-05,
     "entries": [{"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 1000,
                  "max_grad_norm": 1.0, "label": "round-3", "timestamp": "..."}]}

``delta`` and ``accountant`` are fixed for the life of a ledger: the device's
guarantee is stated at one delta, so a ledger written with another is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opacus.accountants import (  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs
    IAccountant,
    PRVAccountant,
    RDPAccountant,
)
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]  # as above

from fedrlhf.errors import ConfigError, FedRLHFError, PrivacyBudgetExceeded
from fedrlhf.io import atomic_write_bytes

try:  # POSIX advisory lock around read-modify-write; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LEDGER_VERSION = 1
ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
MAX_SIGMA = 1e6  # same cap as opacus.accountants.utils.get_noise_multiplier


class LedgerError(FedRLHFError, ValueError):
    """The privacy ledger file is unreadable or corrupt (the message names the file).

    A ledger written with another delta or accountant is a :class:`ConfigError` instead.
    """


@dataclass(frozen=True)
class LedgerEntry:
    """One DP run: ``steps`` Poisson-sampled Gaussian steps of one noise level.

    Attributes:
        noise_multiplier: Gaussian noise std / clipping norm (0 means no privacy).
        sample_rate: Poisson sampling probability of one record per step.
        steps: optimizer steps taken with these parameters.
        label: which run or round this was (free text, e.g. ``"run-7/round-3"``).
        timestamp: ISO-8601 UTC time of recording.
        max_grad_norm: the clipping bound C (reported only; epsilon does not depend on it).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    label: str
    timestamp: str
    max_grad_norm: float | None = None


def validate_mechanism(*, noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Raise :class:`ConfigError` unless the values describe a valid DP-SGD run."""
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise ConfigError(f"noise_multiplier must be a number, got {noise_multiplier!r}")
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise ConfigError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ConfigError(f"sample_rate must be a number, got {sample_rate!r}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")


def compose_epsilon(history: Sequence[tuple[float, float, int]], *, accountant: str, delta: float) -> float:
    """Epsilon of the composition of ``history`` [(noise_multiplier, sample_rate, steps)].

    An empty history is 0; any entry with noise 0 is ``inf`` (no privacy), handled here
    because Opacus's PRV accountant cannot take sigma = 0.
    """
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    acc = make_accountant(history, accountant=accountant)
    return float(acc.get_epsilon(delta=delta))


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


class PrivacyLedger:
    """The privacy a device has spent over all runs, persisted at ``path``.

    Call :meth:`check` before training and :meth:`record` before the trained
    weights leave the device; :meth:`report` gives the ``privacy.json`` fields.

    Args:
        path: the JSON file (e.g. ``DEVICE_DIR / "privacy_ledger.json"``); created on
            the first :meth:`record`.
        accountant: ``"rdp"`` or ``"prv"`` (Opacus accountants).
        delta: the delta of every epsilon this ledger reports.
        lifetime_epsilon: the device's total budget, or ``None`` for no limit.
    """

    def __init__(
        self, path: Path | str, *, accountant: str = "rdp", delta: float, lifetime_epsilon: float | None
    ) -> None:
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy.accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {delta!r}")
        if lifetime_epsilon is not None and not lifetime_epsilon > 0:
            raise ConfigError(f"privacy.lifetime_epsilon must be > 0, got {lifetime_epsilon!r}")
        self.path = Path(path)
        self.accountant = accountant
        self.delta = float(delta)
        self.lifetime_epsilon = lifetime_epsilon
        self._entries: list[LedgerEntry] = self._load()

    # ---------------------------------------------------------------- reading
    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every recorded run, oldest first (re-read from the file)."""
        return tuple(self._refresh())

    def history(self) -> list[tuple[float, float, int]]:
        """The Opacus-style history [(noise_multiplier, sample_rate, steps), ...].

        Re-read from the file on every call, so a run another process recorded since
        this ledger was opened is never missed.
        """
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self._refresh()]

    def _refresh(self) -> list[LedgerEntry]:
        self._entries = self._load()
        return self._entries

    def to_accountant(self) -> IAccountant:
        """A fresh Opacus accountant loaded with the whole history."""
        return make_accountant(self.history(), accountant=self.accountant)

    def spent(self) -> float:
        """Epsilon (at ``delta``) over every recorded run; ``inf`` if any run had no noise."""
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

        ``noise_multiplier``, ``sample_rate`` and ``max_grad_norm`` describe the composed
        mechanism when every run used the same values (``steps`` is then the total), else
        they are ``None``. ``epsilon`` is ``math.inf`` if any run had no noise.
        """
        entries = self._refresh()
        homogeneous = len({(e.noise_multiplier, e.sample_rate, e.max_grad_norm) for e in entries}) == 1
        first = entries[0] if homogeneous else None
        return {
            "epsilon": self.spent(),
            "delta": self.delta,
            "lifetime_epsilon": self.lifetime_epsilon,
            "remaining": self.remaining(),
            "accountant": self.accountant,
            "noise_multiplier": first.noise_multiplier if first else None,
            "sample_rate": first.sample_rate if first else None,
            "max_grad_norm": first.max_grad_norm if first else None,
            "steps": sum(e.steps for e in entries) if homogeneous else None,
            "entries": [asdict(e) for e in entries],
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
        validate_mechanism(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ConfigError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")
        entry = LedgerEntry(
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            steps=int(steps),
            label=str(label),
            timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
            max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
        )
        with self._locked():
            entries = self._load() + [entry]
            self._write(entries)
            self._entries = entries
        return entry

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, entries: list[LedgerEntry]) -> None:
        """Atomic replace: temp file in the same directory, fsync, ``os.replace``."""
        data = {
            "version": LEDGER_VERSION,
            "accountant": self.accountant,
            "delta": self.delta,
            "entries": [asdict(e) for e in entries],
        }
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode("utf-8"))

    def _load(self) -> list[LedgerEntry]:
        """Read and validate the file; a missing file is an empty ledger."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read privacy ledger {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            entries = _parse(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise LedgerError(
                f"privacy ledger {self.path} is corrupt ({exc}). It holds the privacy this device "
                "has already spent, so do not delete it: restore it from a backup. Only if the "
                "data it covers has been deleted, move it aside to start a new ledger."
            ) from exc
        self._refuse_other_settings(data)
        return entries

    def _refuse_other_settings(self, data: dict[str, Any]) -> None:
        if data["accountant"] != self.accountant or float(data["delta"]) != self.delta:
            raise ConfigError(
                f"privacy ledger {self.path} was written with accountant={data['accountant']!r}, "
                f"delta={data['delta']!r}, but this run uses accountant={self.accountant!r}, "
                f"delta={self.delta!r}. A device's lifetime guarantee is stated with one accountant "
                f"and one delta: set privacy.accountant = {data['accountant']!r} and privacy.delta = "
                f"{data['delta']!r}."
            )


def _parse(data: Any) -> list[LedgerEntry]:
    """Entries of a decoded ledger file; ValueError/KeyError/TypeError on anything malformed."""
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    if data.get("version") != LEDGER_VERSION:
        raise ValueError(f"unsupported version {data.get('version')!r} (expected {LEDGER_VERSION})")
    if data.get("accountant") not in ACCOUNTANTS or not isinstance(data.get("delta"), (int, float)):
        raise ValueError("missing or invalid 'accountant' or 'delta'")
    entries = []
    for i, raw in enumerate(data["entries"]):
        entry = LedgerEntry(**raw)
        try:
            validate_mechanism(
                noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate, steps=entry.steps
            )
        except ConfigError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        entries.append(entry)
    return entries
