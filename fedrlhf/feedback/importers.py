"""Read and write feedback files (JSONL, optionally gzip-compressed).

One JSON object per line; blank lines are ignored. Four line formats are
understood, detected per line from the keys when ``format="auto"``:

- ``hh``: Anthropic HH-RLHF, ``{"chosen": dialogue, "rejected": dialogue}`` with
  full ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcripts and no ``prompt``.
  The shared dialogue up to the last common ``"\\n\\nAssistant:"`` marker becomes
  the prompt; what follows in each transcript (stripped) is the response (an
  empty final turn becomes :data:`HH_EMPTY_RESPONSE`).
- ``preference``: ``{"prompt", "chosen", "rejected"}`` where ``chosen`` and
  ``rejected`` are strings or lists of chat messages
  ``[{"role": "user"|"assistant"|"system", "content": str}, ...]`` ending with
  the assistant's response (UltraFeedback-binarized / TRL style).
- ``rating``: ``{"prompt", "completion" (or "response"), "label"}`` (KTO style);
  ``label`` is ``true``/``false`` or ``1``/``0``/``-1`` (``0`` and ``false`` mean -1).
- ``correction``: ``{"prompt", "response", "corrected"}``.

Every record may carry an optional string ``reason``. A ``prompt`` may also be a
list of messages; it is rendered as HH-style text ending in ``"\\n\\nAssistant:"``.
Unknown keys are ignored. Every problem is a :class:`~fedrlhf.errors.DataError`
naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback.importers_formats import (  # noqa: F401 (HH_*: re-exported for fedrlhf.rerank)
    _PARSERS,
    HH_ASSISTANT,
    HH_EMPTY_RESPONSE,
    _json_type,
    _short,
)
from fedrlhf.feedback.importers_writer import write_jsonl
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating

__all__ = [
    "FORMATS",
    "ImportResult",
    "read_feedback",
    "read_preferences",
    "split_records",
    "write_jsonl",
]

FORMATS = ("auto", "hh", "preference", "rating", "correction")
"""Values accepted by ``read_feedback(format=...)``."""

_GZIP_MAGIC = b"\x1f\x8b"
_JSON_SPACE = " \t\r\n"

T = TypeVar("T")


@dataclass
class ImportResult:
    """What :func:`read_feedback` found in one file.

    Attributes:
        records: the valid records, in file order.
        skipped: ``(line, reason)`` of each invalid line skipped (``skip_invalid=True``).
        path: the file read.
        lines: the 1-based line of each record in ``records`` (same order).
    """

    records: list[Feedback]
    skipped: list[tuple[int, str]]
    path: str
    lines: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def read_feedback(
    path: str | os.PathLike[str], *, format: str = "auto", skip_invalid: bool = False
) -> ImportResult:
    """Read feedback records from a JSONL or gzip-compressed JSONL file.

    Args:
        path: the file; gzip is detected from its first bytes, not its name.
        format: one of :data:`FORMATS`; ``"auto"`` detects each line's format from its keys.
        skip_invalid: skip bad lines (listed in ``ImportResult.skipped``) instead of raising.

    Raises:
        ConfigError: ``format`` is not one of :data:`FORMATS`.
        DataError: the file is missing, unreadable or corrupt, a line is invalid (unless
            ``skip_invalid``), or the file holds no valid record at all.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {_short(format)}")
    where = os.fsdecode(path)
    result = ImportResult(records=[], skipped=[], path=where)
    for lineno, raw in _iter_lines(where):
        try:
            record = _parse_line(raw, lineno, format)
        except DataError as err:
            if not skip_invalid:
                raise DataError(err.reason, path=where, line=lineno, field=err.field) from None
            result.skipped.append((lineno, _describe(err)))
            continue
        if record is not None:
            result.records.append(record)
            result.lines.append(lineno)
    if not result.records:
        raise DataError(_no_records_message(result.skipped), path=where)
    return result


def read_preferences(path: str | os.PathLike[str], **kwargs: Any) -> list[Preference]:
    """Read a file of pairwise feedback as :class:`Preference` records.

    Corrections become preferences (``corrected`` > ``response``). Keyword arguments
    go to :func:`read_feedback`.

    Raises:
        DataError: as :func:`read_feedback`, or a line holds a rating (unpaired
            feedback cannot be a preference); the error names that line.
    """
    result = read_feedback(path, **kwargs)
    out: list[Preference] = []
    for record, lineno in zip(result.records, result.lines, strict=True):
        if isinstance(record, Rating):
            raise DataError(
                "is a rating (unpaired feedback), expected a preference or a correction; "
                "use read_feedback() for mixed feedback",
                path=result.path,
                line=lineno,
                field="label",
            )
        out.append(record.to_preference() if isinstance(record, Correction) else record)
    return out


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, raw bytes)`` of a plain or gzip file; I/O errors are DataErrors."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot open file: {_os_reason(exc)}", path=path) from None
    with handle:
        try:
            compressed = handle.read(2) == _GZIP_MAGIC
            handle.seek(0)
        except OSError as exc:
            raise DataError(f"cannot read file: {_os_reason(exc)}", path=path) from None
        stream = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
        lines = iter(stream)
        lineno = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:
                kind = "corrupt or truncated gzip data" if compressed else "cannot read file"
                raise DataError(f"{kind}: {_os_reason(exc)}", path=path, line=lineno + 1) from None
            lineno += 1
            yield lineno, raw


def _parse_line(raw: bytes, lineno: int, format: str) -> Feedback | None:
    """One line as a record, ``None`` for a blank line; DataErrors carry only the field."""
    try:
        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte {exc.start + 1} of the line)") from None
    if not text.strip(_JSON_SPACE):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise DataError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {_json_type(obj)}")
    kind = _detect(obj) if format == "auto" else format
    return _PARSERS[kind](obj)


def _detect(obj: dict[str, Any]) -> str:
    """The format of one JSON object, from its keys."""
    if "chosen" in obj or "rejected" in obj:
        texts = isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str)
        return "hh" if obj.get("prompt") is None and texts else "preference"
    if "corrected" in obj:
        return "correction"
    if "label" in obj:
        return "rating"
    keys = _short(sorted(obj), limit=120)
    raise DataError(
        "cannot tell the record type; expected keys chosen/rejected (preference), "
        f"prompt/completion/label (rating) or prompt/response/corrected (correction), got keys {keys}"
    )


def _describe(err: DataError) -> str:
    """A skipped line's reason: the message with its field, without path and line."""
    return f"field {err.field!r}: {err.reason}" if err.field is not None else err.reason


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _no_records_message(skipped: list[tuple[int, str]]) -> str:
    if not skipped:
        return "no feedback records (the file is empty or holds only blank lines)"
    line, reason = skipped[0]
    return (
        f"no feedback records: all {len(skipped)} non-blank line(s) were invalid and skipped "
        f"(first, line {line}: {reason})"
    )


# --------------------------------------------------------------------------- splitting


def split_records(records: Sequence[T], *, test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle ``records`` with ``random.Random(seed)`` and split off a test set.

    The test set has ``round(len(records) * test_fraction)`` records, but at least one
    (and at least one training record) when ``0 < test_fraction < 1`` and there are two
    or more records. The same records and seed always give the same split; the input
    is not modified.

    Raises:
        ConfigError: ``test_fraction`` is not a number in [0, 1] or ``seed`` not an int.
    """
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not (0 <= test_fraction <= 1)
    ):
        raise ConfigError(f"test_fraction must be a number in [0, 1], got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    n = len(records)
    n_test = round(n * test_fraction)
    if 0 < test_fraction < 1 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test = [records[i] for i in order[:n_test]]
    train = [records[i] for i in order[n_test:]]
    return train, test
