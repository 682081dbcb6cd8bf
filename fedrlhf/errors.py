"""Typed errors raised by fedrlhf.

Every error a user can cause by bad input is a subclass of :class:`FedRLHFError`;
those about values (configs, data) also subclass :class:`ValueError`, following
Opacus and PEFT.
"""

from __future__ import annotations


class FedRLHFError(Exception):
    """Base class of every error fedrlhf raises on purpose."""


class ConfigError(FedRLHFError, ValueError):
    """A configuration value is invalid, or two settings are incompatible.

    The message names the field and says what to do instead.
    """


class DataError(FedRLHFError, ValueError):
    """A feedback record or data file is malformed.

    Attributes name where: ``path`` (file), ``line`` (1-based) and ``field``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.path = path
        self.line = line
        self.field = field
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ModelError(FedRLHFError, ValueError):
    """A saved model directory or a trainable state is missing, corrupt or mismatched."""


class PrivacyBudgetExceeded(FedRLHFError):
    """Training would spend more privacy budget than the device allows."""

    def __init__(self, message: str, *, spent: float, projected: float, budget: float) -> None:
        self.spent = spent
        self.projected = projected
        self.budget = budget
        super().__init__(message)


class StoreError(FedRLHFError):
    """The on-device feedback store cannot be opened, decrypted or trusted."""


class OutputError(FedRLHFError):
    """An output path holds something fedrlhf did not write, or cannot be written; nothing is removed."""


class TrainingDiverged(FedRLHFError):
    """The loss or a trainable weight became non-finite (nan/inf); the model is not saved."""

    def __init__(self, message: str, *, step: int) -> None:
        self.step = step
        super().__init__(message)


class PrivacyPolicyError(ConfigError):
    """A server asked a device for a round its own privacy policy does not allow (e.g. no DP)."""
