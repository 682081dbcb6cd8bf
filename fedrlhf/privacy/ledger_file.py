"""The privacy ledger's file: strict parsing, atomic writes, the lock around read-modify-write.

File format (JSON, written atomically)::

    {"version": 1, "accountant": "rdp", "delta": 1e-05,
     "entries": [{"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 1000,
                  "max_grad_norm": 1.0, "label": "round-3", "timestamp": "..."}],
     "reserved": [{"id": "…", "noise_multiplier": 1.1, "sample_rate": 0.1, "steps": 40,
                   "max_grad_norm": 1.0, "label": "round-4", "timestamp": "..."}]}

``entries`` are runs that happened; ``reserved`` are runs in progress (planned before
training, under the lock, so two runs at once cannot both spend the same budget). A
reservation counts as spent until its run replaces it with the steps that ran; a run
that crashed leaves it behind, and it stays counted (the conservative reading).
``reserved`` may be absent (files written before reservations existed).

Anything else is refused: a file that is not exactly this shape is never read as an
empty ledger and never overwritten.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fedrlhf.errors import ConfigError, FedRLHFError
from fedrlhf.io import atomic_write_bytes

try:  # POSIX advisory lock around read-modify-write; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LEDGER_VERSION = 1
ACCOUNTANT_NAMES = ("prv", "rdp")
MAX_SIGMA = 1e6  # same cap as opacus.accountants.utils.get_noise_multiplier
MAX_STEPS = 10**9  # per run; far beyond any real training, small enough for the accountants' floats
_TOP_KEYS = {"version", "accountant", "delta", "entries"}


class LedgerError(FedRLHFError, ValueError):
    """The privacy ledger file is unreadable, corrupt or not writable (the message names the file).

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


@dataclass(frozen=True)
class Reservation(LedgerEntry):
    """A planned run, counted as spent from before it trains until it is settled.

    Attributes:
        id: random token naming this reservation in the file.
    """

    id: str = ""


@dataclass(frozen=True)
class LedgerFile:
    """The decoded contents of a ledger file."""

    accountant: str
    delta: float
    entries: tuple[LedgerEntry, ...] = ()
    reserved: tuple[Reservation, ...] = ()


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_mechanism(*, noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Raise :class:`ConfigError` unless the values describe a valid DP-SGD run."""
    if not _is_number(noise_multiplier):
        raise ConfigError(f"noise_multiplier must be a number, got {noise_multiplier!r}")
    if not (math.isfinite(noise_multiplier) and 0 <= noise_multiplier <= MAX_SIGMA):
        raise ConfigError(f"noise_multiplier must be in [0, {MAX_SIGMA:g}], got {noise_multiplier!r}")
    if not _is_number(sample_rate):
        raise ConfigError(f"sample_rate must be a number, got {sample_rate!r}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")


def validate_clip(max_grad_norm: float | None) -> None:
    """Raise :class:`ConfigError` unless ``max_grad_norm`` is ``None`` or finite and > 0."""
    if max_grad_norm is None:
        return
    if not _is_number(max_grad_norm) or not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")


def _run(raw: Any, cls: type[LedgerEntry], where: str) -> LedgerEntry:
    """One entry or reservation of the file; ValueError naming ``where`` if it is malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not a JSON object")
    names = {f.name for f in fields(cls)}
    required = names - {"max_grad_norm"}
    if set(raw) - names or required - set(raw):
        raise ValueError(f"{where} must have the fields {sorted(required)} (and max_grad_norm)")
    if not all(isinstance(raw[k], str) for k in ("label", "timestamp", *(["id"] if "id" in names else []))):
        raise ValueError(f"{where}: label, timestamp and id must be strings")
    try:
        validate_mechanism(
            noise_multiplier=raw["noise_multiplier"], sample_rate=raw["sample_rate"], steps=raw["steps"]
        )
        validate_clip(raw.get("max_grad_norm"))
    except ConfigError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return cls(
        **{
            **raw,
            "noise_multiplier": float(raw["noise_multiplier"]),
            "sample_rate": float(raw["sample_rate"]),
        }
    )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse(text: bytes) -> LedgerFile:
    """Decode a ledger file exactly; ValueError on anything but the documented shape."""
    data = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    if data.get("version") != LEDGER_VERSION or isinstance(data.get("version"), bool):
        raise ValueError(f"unsupported version {data.get('version')!r} (expected {LEDGER_VERSION})")
    if set(data) - _TOP_KEYS - {"reserved"} or _TOP_KEYS - set(data):
        raise ValueError(f"the keys must be {sorted(_TOP_KEYS)} (and 'reserved'), got {sorted(data)}")
    if data["accountant"] not in ACCOUNTANT_NAMES:
        raise ValueError(f"accountant must be one of {list(ACCOUNTANT_NAMES)}, got {data['accountant']!r}")
    if not _is_number(data["delta"]) or not 0 < data["delta"] < 1:
        raise ValueError(f"delta must be a number in (0, 1), got {data['delta']!r}")
    runs = {}
    for key, cls in (("entries", LedgerEntry), ("reserved", Reservation)):
        items = data.get(key, [])
        if not isinstance(items, list):
            raise ValueError(f"{key!r} must be a JSON list, got {type(items).__name__}")
        runs[key] = tuple(_run(raw, cls, f"{key}[{i}]") for i, raw in enumerate(items))
    return LedgerFile(data["accountant"], float(data["delta"]), runs["entries"], runs["reserved"])  # type: ignore[arg-type]


def corrupt(path: Path, why: object) -> LedgerError:
    """The error for a ledger that cannot be trusted (one line, naming the file)."""
    return LedgerError(
        f"privacy ledger {path} is corrupt ({why}). It holds the privacy this device has already "
        "spent, so do not delete it: restore it from a backup. Only if the data it covers has been "
        "deleted, move it aside to start a new ledger."
    )


def read(path: Path) -> LedgerFile | None:
    """The file's contents, ``None`` if it does not exist; :class:`LedgerError` if unusable."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"cannot read privacy ledger {path}: {exc.strerror or exc}") from None
    try:
        return parse(text)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise corrupt(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def write(path: Path, content: LedgerFile) -> None:
    """Atomic replace (temp file in the same directory, fsync, ``os.replace``)."""
    data: dict[str, Any] = {
        "version": LEDGER_VERSION,
        "accountant": content.accountant,
        "delta": content.delta,
        "entries": [asdict(e) for e in content.entries],
    }
    if content.reserved:
        data["reserved"] = [asdict(r) for r in content.reserved]
    if path.exists() and not os.access(path, os.W_OK):
        raise LedgerError(f"privacy ledger {path} is read-only: nothing was trained; make it writable")
    try:
        atomic_write_bytes(path, json.dumps(data, indent=1).encode("utf-8"))
    except OSError as exc:
        raise LedgerError(f"cannot write privacy ledger {path}: {exc.strerror or exc}") from exc


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (``PATH.lock``) around one read-modify-write of ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LedgerError(f"cannot lock privacy ledger {path}: {exc.strerror or exc}") from None
    with lock:
        if fcntl is None:  # pragma: no cover
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
