"""Which exported feedback rows trained which federated round, until the store notes it.

A device that trains on the client app's export (``train.jsonl`` with ``export.json``) knows
the store row id of every example but holds no key to the encrypted store: the store may be
protected by a passphrase only the person knows.  So the round appends one line to
``DIR/shared.jsonl``::

    {"label": "join:fl.example.org:9091:2025-06-01T14:00:00Z round-3", "ids": [4, 7, 9]}

and the client app, which opens the store, moves the lines into it (:func:`take_usage`
with ``FeedbackStore.mark_used``).  Ids only, no text: the file says nothing the store's own
row ids would not.  Appends and takes hold an exclusive ``flock`` on the file (POSIX), so a
round finishing while the app folds is never lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends are single writes, takes may race
    fcntl = None  # type: ignore[assignment]

USAGE_FILE = "shared.jsonl"


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    """``path`` opened for append and read (created 0600), under an exclusive lock."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def append_usage(root: Path, label: str, ids: list[int]) -> None:
    """Note that round ``label`` trained on store rows ``ids`` of the device in ``root``."""
    line = json.dumps({"label": label, "ids": [int(i) for i in ids]}) + "\n"
    with _locked(root / USAGE_FILE) as fd:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut short by a crash: start afresh
            line = "\n" + line
        os.write(fd, line.encode())


def take_usage(root: Path, note: Callable[[str, list[int]], None]) -> list[tuple[str, list[int]]]:
    """Hand every noted ``(label, ids)`` to ``note`` (e.g. the store's ``mark_used``), then empty the file.

    Lines that are not a noted round (a torn write after a crash) are skipped. If ``note``
    raises, the file is kept as it was, so nothing is lost. Returns what was handed over.
    """
    path = root / USAGE_FILE
    if not path.is_file():
        return []
    taken: list[tuple[str, list[int]]] = []
    with _locked(path) as fd:
        with open(fd, encoding="utf-8", closefd=False) as f:
            f.seek(0)
            lines = f.read().splitlines()
        for line in lines:
            try:
                entry = json.loads(line)
                label, ids = str(entry["label"]), [int(i) for i in entry["ids"]]
            except (ValueError, TypeError, KeyError):
                continue
            note(label, ids)
            taken.append((label, ids))
        os.ftruncate(fd, 0)
    return taken
