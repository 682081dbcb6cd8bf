"""Recording and forgetting feedback, and the training export that the Flower ClientApp reads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clients.device import EXPORT_FILE, MAX_TEXT, ClientDevice
from fedrlhf.errors import DataError
from fedrlhf.feedback import Feedback, Preference, split_records, write_jsonl
from fedrlhf.feedback.pii import scrub
from fedrlhf.feedback.quality import JudgeContext, RuleConfig, RuleJudge, filter_feedback
from fedrlhf.feedback.store import StoredFeedback
from fedrlhf.io import atomic_write_json

# --------------------------------------------------------------------------- recording and forgetting


def _check_length(record: Feedback) -> None:
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise DataError(f"is {len(value)} characters long; the limit is {MAX_TEXT}", field=f.name)


def record(client: ClientDevice, item: Feedback) -> int:
    """Scrub, encrypt and store one piece of feedback; returns its id."""
    _check_length(item)
    if isinstance(item, Preference) and item.chosen == item.rejected:
        raise DataError(
            "is identical to 'chosen'; an A/B choice needs two different responses", field="rejected"
        )
    with client.store() as store:
        return store.add(item)


def forget(
    client: ClientDevice, *, ids: Sequence[int] = (), since: datetime | None = None, everything: bool = False
) -> int:
    """Delete records (by id, since a time, or all) and every copy made of them on this device.

    The training export is re-made without them and tokenized caches are removed.
    Returns how many records were deleted; an unknown id is a :class:`DataError`.
    """
    with client.store() as store:
        live = set(store.ids()) if ids else set()  # corrupt rows too: forget needs no decryption
        missing = [i for i in ids if i not in live]
        if missing:
            raise DataError(f"no feedback records with ids {missing} (see 'fedrlhf-client list')")
        if everything:
            removed = store.forget_all()
        elif since is not None:
            removed = store.forget_since(since)
        else:
            removed = sum(store.forget(i) for i in ids)
    for cached in (client.root / "cache").glob("tokens-*"):
        cached.unlink(missing_ok=True)
    if (client.root / EXPORT_FILE).is_file() or (client.root / "train.jsonl").is_file():
        export_for_training(client, **_last_export(client), allow_empty=True)
    return removed


def _last_export(client: ClientDevice) -> dict[str, Any]:
    """The settings of the last training export (defaults if unknown)."""
    made: dict[str, Any] = {"test_fraction": 0.2, "seed": 0, "require_reason": False, "session": None}
    try:
        saved = json.loads((client.root / EXPORT_FILE).read_text(encoding="utf-8"))
        made.update({k: saved[k] for k in made if k in saved})
    except (OSError, ValueError, TypeError):
        pass
    return made


# --------------------------------------------------------------------------- training export


@dataclass(frozen=True)
class TrainingExport:
    """What :func:`export_for_training` wrote: record ids per split, dropped ``(id, why)``, corrupt ids."""

    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    dropped: tuple[tuple[int, str], ...]
    corrupt: tuple[int | str, ...] = ()  # rows that failed authentication, left out


def _rescrub(item: StoredFeedback) -> Feedback | str:
    """The record with every text field scrubbed again, or why it cannot train."""
    fields = {f.name: getattr(item.record, f.name) for f in dataclasses.fields(item.record)}
    changes = {k: scrub(v) for k, v in fields.items() if isinstance(v, str)}
    try:
        clean: Feedback = dataclasses.replace(item.record, **changes)  # type: ignore[arg-type]
    except DataError:
        return "only personal data differs between the responses"
    if isinstance(clean, Preference) and clean.chosen == clean.rejected:
        return "both responses are identical"
    return clean


def export_for_training(
    client: ClientDevice,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    require_reason: bool = False,
    allow_empty: bool = False,
    session: str | None = None,
) -> TrainingExport:
    """Write live, quality-filtered, scrubbed records to ``train.jsonl`` / ``test.jsonl`` (atomic, 0600).

    ``export.json`` records how, the store row id of every line (so that a federated round notes
    in the store which records it trained on) and ``join``'s ``session`` label (by default the
    last export's: re-exports by ``forget`` or ``train-personal`` keep a running session's).

    Raises:
        DataError: nothing is left to train on (unless ``allow_empty``).
    """
    with client.store() as store:
        items = store.training_records()
    result = filter_feedback(items, [RuleJudge(RuleConfig(require_reason=require_reason))], JudgeContext())
    dropped = [(d.item.id, d.reason) for d in result.dropped if isinstance(d.item, StoredFeedback)]
    usable: list[tuple[int, Feedback]] = []
    for item in (i for i in result.kept if isinstance(i, StoredFeedback)):  # all are; narrows the type
        clean = _rescrub(item)
        if isinstance(clean, str):
            dropped.append((item.id, clean))
        else:
            usable.append((item.id, clean))
    if not usable and not allow_empty:
        raise DataError("no feedback left to train on after the quality filter; record some first")
    train, test = split_records(usable, test_fraction=test_fraction, seed=seed)
    made: dict[str, Any] = {
        "test_fraction": test_fraction,
        "seed": seed,
        "require_reason": require_reason,
        "session": session if session is not None else _last_export(client)["session"],
    }
    for name, part in (("train", train), ("test", test)):
        path = write_jsonl(client.root / f"{name}.jsonl", [r for _, r in part])
        made[f"{name}_ids"] = [i for i, _ in part]
        made[f"{name}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    atomic_write_json(client.root / EXPORT_FILE, made)
    return TrainingExport(
        tuple(i for i, _ in train), tuple(i for i, _ in test), tuple(sorted(dropped)), items.corrupt
    )
