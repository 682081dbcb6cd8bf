"""Feedback records: what a user gives, as plain frozen dataclasses.

- :class:`Preference`: the user picked ``chosen`` over ``rejected`` (A/B).
- :class:`Rating`: thumbs up (+1) or down (-1) on one response.
- :class:`Correction`: the user rewrote a response; it trains as the
  preference ``corrected`` > ``response`` (see :meth:`Correction.to_preference`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrlhf.errors import DataError


def _check_text(name: str, value: object, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", field=name)
    if not allow_empty and not value.strip():
        raise DataError("must not be empty", field=name)
    _check_unicode(name, value)


def _check_unicode(name: str, value: str) -> None:
    """Text must be valid Unicode: a lone surrogate (e.g. JSON ``"\\ud800"``) cannot be tokenized."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"holds a lone surrogate {value[exc.start]!r} at character {exc.start + 1} "
            "(not valid Unicode text)",
            field=name,
        ) from None


def _check_reason(reason: object) -> None:
    if reason is not None and not isinstance(reason, str):
        raise DataError(f"must be a string or null, got {type(reason).__name__}", field="reason")
    if reason is not None:
        _check_unicode("reason", reason)


@dataclass(frozen=True)
class Preference:
    """A pairwise preference: ``chosen`` is better than ``rejected`` for ``prompt``.

    ``prompt`` may be empty (a response judged on its own); responses may not.
    """

    prompt: str
    chosen: str
    rejected: str
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt, allow_empty=True)
        _check_text("chosen", self.chosen)
        _check_text("rejected", self.rejected)
        _check_reason(self.reason)


@dataclass(frozen=True)
class Rating:
    """An unpaired judgement: ``label`` is +1 (thumbs up) or -1 (thumbs down)."""

    prompt: str
    response: str
    label: int
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt, allow_empty=True)
        _check_text("response", self.response)
        if isinstance(self.label, bool) or self.label not in (1, -1):
            raise DataError(f"must be +1 or -1, got {self.label!r}", field="label")
        _check_reason(self.reason)


@dataclass(frozen=True)
class Correction:
    """The user replaced ``response`` with ``corrected``."""

    prompt: str
    response: str
    corrected: str
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt, allow_empty=True)
        _check_text("response", self.response)
        _check_text("corrected", self.corrected)
        _check_reason(self.reason)
        if self.corrected == self.response:
            raise DataError("is identical to 'response'", field="corrected")

    def to_preference(self) -> Preference:
        """The correction as a training pair: corrected > original."""
        return Preference(self.prompt, self.corrected, self.response, self.reason)


Feedback = Preference | Rating | Correction
