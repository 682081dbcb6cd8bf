"""Write feedback records as JSONL files (optionally gzip-compressed), readable by the importers."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedrlhf.errors import DataError
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating
from fedrlhf.io import atomic_write_bytes

# --------------------------------------------------------------------------- writing


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Feedback]) -> Path:
    """Write records as JSONL (gzip if ``path`` ends with ``.gz``), atomically.

    Preferences are written as ``{"prompt", "chosen", "rejected"}``, ratings as
    ``{"prompt", "completion", "label"}`` and corrections as
    ``{"prompt", "response", "corrected"}`` (``reason`` only when set), so
    ``read_feedback(write_jsonl(p, rs)).records == list(rs)``. The data goes to a
    temporary file in the same directory (mode 0600), then replaces ``path``.

    Returns:
        The path written.

    Raises:
        TypeError: an item is not a Preference, Rating or Correction.
        DataError: a preference's ``chosen`` equals its ``rejected`` (it could not be read back).
        OSError: the file cannot be written.
    """
    target = Path(os.fsdecode(path))
    data = b"".join(_encode_line(_to_json(record, i)) for i, record in enumerate(records))
    if target.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(target, data)
    return target


def _to_json(record: Feedback, index: int) -> dict[str, Any]:
    if isinstance(record, Preference):
        if record.chosen == record.rejected:
            raise DataError(f"record {index}: is identical to 'chosen'", field="rejected")
        obj: dict[str, Any] = {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}
    elif isinstance(record, Rating):
        obj = {"prompt": record.prompt, "completion": record.response, "label": int(record.label)}
    elif isinstance(record, Correction):
        obj = {"prompt": record.prompt, "response": record.response, "corrected": record.corrected}
    else:
        raise TypeError(f"record {index}: not a feedback record: {type(record).__name__}")
    if record.reason is not None:
        obj["reason"] = record.reason
    return obj


def _encode_line(obj: dict[str, Any]) -> bytes:
    try:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them so the line stays valid UTF-8
        return (json.dumps(obj) + "\n").encode("ascii")
