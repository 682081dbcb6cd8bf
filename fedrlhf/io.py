"""Atomic file and directory writes: a crash leaves the old version or the new one, never half."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedrlhf.errors import OutputError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


MARKER = ".fedrlhf"
"""File :func:`atomic_directory` writes into every directory it creates: the entries it wrote."""


def _entries(path: Path) -> list[str]:
    """Top-level entries of ``path``, directories with a trailing ``/``."""
    return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in path.iterdir())


def _listing(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _written_entries(path: Path, legacy: Sequence[str]) -> set[str] | None:
    """The entries fedrlhf wrote in ``path`` (from its marker), or None if fedrlhf did not create it.

    A directory without a marker counts as fedrlhf's as a whole when it holds one of the
    ``legacy`` files (written by fedrlhf versions before the marker).
    """
    marker = path / MARKER
    if marker.is_file():
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            files = meta["files"] if meta.get("written_by") == "fedrlhf" else None
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return None
        if not isinstance(files, list):
            return None
        return {str(f) for f in files} | {MARKER}
    if any((path / name).is_file() for name in legacy):
        return set(_entries(path))
    return None


def check_replaceable(path: str | os.PathLike[str], *, legacy: Sequence[str] = (), label: str = "") -> None:
    """Raise :class:`OutputError` unless :func:`atomic_directory` may replace ``path``.

    Allowed: a missing path (its nearest existing parent a writable directory), an empty
    directory, or a directory fedrlhf wrote that holds nothing else.  ``label`` (e.g.
    ``"--out"``) prefixes the path in the message.
    """
    path = Path(path)
    name = f"{label} {path}" if label else str(path)
    choose = "choose an empty or new directory"
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise OutputError(f"{name} is {kind}, not a directory fedrlhf created; {choose}")
    if not path.exists():
        parent = next(p for p in path.absolute().parents if p.exists())
        if not parent.is_dir():
            raise OutputError(f"{name}: {parent} is a file, not a directory; {choose}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{name}: {parent} is not writable; {choose}")
        return
    try:
        entries = _entries(path)
        ours = _written_entries(path, legacy) if entries else set()
    except OSError as exc:
        raise OutputError(f"{name}: cannot read the directory ({exc.strerror}); {choose}") from None
    if ours is None:
        raise OutputError(
            f"{name} is a directory that fedrlhf did not create (it holds {_listing(entries)}); {choose}"
        )
    foreign = [e for e in entries if e not in ours]
    if foreign:
        raise OutputError(
            f"{name} holds files fedrlhf did not write ({_listing(foreign)}); move them away or {choose}"
        )


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, legacy: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces ``path`` as a whole.

    Readers see either the complete previous directory or the complete new one
    (a crash between the two renames leaves the previous one as ``.<name>.old``,
    which :func:`recover_directory` puts back).  Only a missing path, an empty
    directory or one that fedrlhf wrote (see :func:`check_replaceable`) is replaced;
    anything else raises :class:`OutputError` before the body runs, and nothing is removed.
    """
    path = Path(path)
    check_replaceable(path, legacy=legacy)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        written = _entries(tmp)
        (tmp / MARKER).write_text(json.dumps({"written_by": "fedrlhf", "files": written}) + "\n")
        check_replaceable(path, legacy=legacy)  # again: something may have appeared meanwhile
        old = path.parent / f".{path.name}.old"
        if old.exists() or old.is_symlink():
            check_replaceable(old, legacy=legacy)  # a crash's leftover, never a user's directory
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Restore ``path`` from its ``.old`` copy if a crash interrupted :func:`atomic_directory`."""
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if not path.exists() and old.exists():
        os.replace(old, path)


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path`` (for library savers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
