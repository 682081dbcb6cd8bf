"""The feedback store's on-disk format: SQLite schema, meta, transactions, atomic files.

Also the row encoding shared by reading and writing: record kinds, fixed-width UTC
timestamps and the text fields of a record.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedrlhf.errors import DataError, StoreError
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating
from fedrlhf.feedback.store_types import StoreMissing

SCHEMA_VERSION = 1
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width: text order is time order
_KINDS: dict[str, type[Any]] = {"preference": Preference, "rating": Rating, "correction": Correction}
_KIND_OF = {cls: name for name, cls in _KINDS.items()}
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, kind TEXT NOT NULL,
    nonce BLOB NOT NULL, ciphertext BLOB NOT NULL);
CREATE INDEX feedback_created_at ON feedback (created_at);
CREATE TABLE rounds_used (feedback_id INTEGER NOT NULL, round_id TEXT NOT NULL,
    PRIMARY KEY (feedback_id, round_id));
"""
_PENDING_SCHEMA = "CREATE TABLE pending (id TEXT PRIMARY KEY, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL)"
_ROW = "SELECT id, created_at, kind, nonce, ciphertext FROM feedback"
_PENDING_ROW = "SELECT id, nonce, ciphertext FROM pending"


def _ts(value: datetime, name: str) -> str:
    """``value`` as fixed-width UTC text; naive datetimes are refused."""
    if value.tzinfo is None:
        raise DataError("must be timezone-aware, e.g. datetime.now(timezone.utc)", field=name)
    return value.astimezone(UTC).strftime(_TS_FORMAT)


def _text_fields(record: Feedback) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "reason"}


def _check_utf8(name: str, value: object) -> None:
    """A :class:`DataError` naming ``name`` when ``value`` holds text that is not valid UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"holds bytes that are not UTF-8 text (at character {exc.start + 1}); "
                "check the encoding of the terminal or the file it came from",
                field=name,
            ) from None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _atomic_write(path: Path, data: bytes, *, overwrite: bool) -> Path:
    """Write ``data`` to a 0600 temporary file, fsync, then move it to ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # raises FileExistsError instead of replacing
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection to the file at ``path``, made (0600) if missing and ``create``."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        what = "a directory" if path.is_dir() else "not a regular file"
        raise StoreError(f"{path} is {what}, not a feedback store; move it away or restore the store")
    if not path.exists():
        if not create:
            raise StoreMissing(f"no feedback store at {path} (pass create=True to make one)")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        return sqlite3.connect(path, isolation_level=None, timeout=30)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the feedback store {path}: {exc}") from None


def _set_pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any] | None:
    """The meta table as a dict, or None for a new (empty) database; reading writes nothing."""
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            if conn.execute("SELECT 1 FROM sqlite_master").fetchone():
                raise StoreError(f"{path} is an SQLite database but not a feedback store (no meta table)")
            return None
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a feedback store: {exc}") from None


def _add_pending_table(conn: sqlite3.Connection) -> None:
    """Stores made before the pending queue lack its table: add it (once, under a write lock)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pending'").fetchone():
        return
    with _transaction(conn):
        conn.execute(_PENDING_SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))


def _initialise(conn: sqlite3.Connection, meta: dict[str, Any]) -> bool:
    """Create the tables and meta in one transaction; False if already there."""
    with _transaction(conn):
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return False
        for statement in [*filter(str.strip, _SCHEMA.split(";")), _PENDING_SCHEMA]:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    return True


def _check_version(meta: dict[str, Any], path: Path) -> None:
    try:
        version = int(meta.get("schema_version", 0))
    except (TypeError, ValueError):
        raise StoreError(
            f"{path}: damaged store metadata (schema_version {meta.get('schema_version')!r}); "
            "restore the file from a backup"
        ) from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {version}, newer than this fedrlhf supports "
            f"({SCHEMA_VERSION}); upgrade fedrlhf to open it"
        )
    if version != SCHEMA_VERSION or "key_check" not in meta:
        raise StoreError(f"{path} is not a valid feedback store (schema version {version})")
