"""Errors and result types of the encrypted feedback store (:mod:`fedrlhf.feedback.store`)."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fedrlhf.errors import StoreError
from fedrlhf.feedback.records import Feedback

_T = TypeVar("_T")


class TamperedRecord(StoreError):
    """A row failed authentication: it was modified, moved or swapped."""

    def __init__(self, row_id: int | str, *, table: str = "feedback") -> None:
        self.row_id = row_id
        fix = f"forget({row_id})" if table == "feedback" else f"remove_pending({row_id!r})"
        super().__init__(
            f"{table} row {row_id} failed authentication (modified, moved or swapped) and was not "
            f"used; verify() lists every bad row and {fix} removes it"
        )


class RecordNotFound(StoreError, LookupError):
    """No live record has this id (never added, or forgotten)."""


class StoreMissing(StoreError):
    """``create=False`` and the store file is missing or empty (no tables at all)."""


class Rows(builtins.list[_T]):
    """Records that authenticated, in order; ``corrupt`` holds the ids of rows that did not (skipped)."""

    def __init__(self, items: Iterable[_T] = (), corrupt: Iterable[int | str] = ()) -> None:
        super().__init__(items)
        self.corrupt: tuple[int | str, ...] = tuple(corrupt)


@dataclass(frozen=True)
class ExportResult:
    """What :meth:`FeedbackStore.export_jsonl` wrote: the file, how many records, skipped corrupt ids."""

    path: Path
    count: int
    corrupt: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class PendingItem:
    """A prompt and one response (thumbs up/down) or two (A/B) waiting for the user's judgement."""

    id: str
    prompt: str
    responses: tuple[str, ...]
    scores: tuple[float, ...] = ()  # a reward model's score of each response, when it ranked them

    def to_json(self) -> dict[str, Any]:
        """The item as the web page shows it."""
        out = {"id": self.id, "prompt": self.prompt, "responses": builtins.list(self.responses)}
        return {**out, "scores": builtins.list(self.scores)} if self.scores else out


@dataclass(frozen=True)
class StoredFeedback:
    """A decrypted record with its row id and UTC creation time."""

    id: int
    created_at: datetime
    record: Feedback
