"""Encrypted on-device feedback store: SQLite (WAL) + AES-256-GCM.

Each row keeps only ``id``, ``created_at`` (UTC ISO 8601) and ``kind`` in plain
text. The record itself (kind, fields, reason as JSON) is sealed with AES-GCM
under a fresh 96-bit nonce, with ``store version, row id, kind, created_at`` as
associated data: a modified byte, a ciphertext swapped between rows or a row
moved to another id fails authentication. Reads skip such a row and name it in the
result's ``corrupt`` ids (:class:`Rows`); :meth:`FeedbackStore.get` raises
:class:`TamperedRecord`; :meth:`FeedbackStore.forget` deletes it without decrypting.
When the key check passes but no row of two or more decrypts, reads raise instead
(the rows belong to another key). Deleting whole rows, or rolling the file back to an
older copy, is not detected.

The ``pending`` table holds prompts waiting for the user's judgement (the client app's
queue), sealed and scrubbed the same way, with ``pending:<item id>`` as associated data.

The 256-bit key comes from either

- a passphrase through scrypt with n=2**15, r=8, p=1 (32 MiB, ~0.1 s per open): the
  memory-hard middle between the interactive-login (2**14) and file-encryption
  (2**20) settings of the scrypt paper, sized for phones; salt and parameters are
  kept in ``meta`` so a later version can raise them, or
- a 32-byte key file readable by its owner only (0600), see :meth:`FeedbackStore.create_key_file`.

A known plaintext sealed in ``meta`` tells a wrong key at open time. Writes are
SQLite transactions with ``journal_mode=WAL`` and ``synchronous=FULL``: a process
killed at any moment loses at most the record being written. Forgotten rows are
overwritten (``secure_delete``) and the WAL is checkpointed and truncated.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedrlhf.errors import ConfigError, DataError, StoreError
from fedrlhf.feedback.pii import scrub as scrub_text
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating

__all__ = [
    "SCHEMA_VERSION",
    "ExportResult",
    "FeedbackStore",
    "PendingItem",
    "RecordNotFound",
    "Rows",
    "StoreMissing",
    "StoredFeedback",
    "TamperedRecord",
]

SCHEMA_VERSION = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
KEY_BYTES, NONCE_BYTES = 32, 12
_KEY_CHECK = b"fedrlhf feedback store key check"
_KEY_CHECK_AAD = b"fedrlhf-store:key-check"
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
_SCRYPT_LIMITS = {"scrypt_n": 2**22, "scrypt_r": 64, "scrypt_p": 16}  # beyond: damaged meta, not a choice
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


def _ts(value: datetime, name: str) -> str:
    """``value`` as fixed-width UTC text; naive datetimes are refused."""
    if value.tzinfo is None:
        raise DataError("must be timezone-aware, e.g. datetime.now(timezone.utc)", field=name)
    return value.astimezone(UTC).strftime(_TS_FORMAT)


def _aad(row_id: int, kind: str, created_at: str) -> bytes:
    return f"fedrlhf-store:v{SCHEMA_VERSION}:{row_id}:{kind}:{created_at}".encode()


def _pending_aad(item_id: str) -> bytes:
    return f"fedrlhf-store:v{SCHEMA_VERSION}:pending:{item_id}".encode()


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


def _scrub_record(record: Feedback) -> Feedback:
    texts = {**_text_fields(record), "reason": record.reason}
    changes: dict[str, Any] = {k: scrub_text(v) for k, v in texts.items() if isinstance(v, str)}
    try:
        return dataclasses.replace(record, **changes)  # type: ignore[arg-type]
    except DataError as exc:
        raise DataError(
            "differs from 'response' only in personal data, which is scrubbed; nothing is left to learn",
            field="corrected",
        ) from exc


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


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StoreError(f"cannot read key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"key file {path} is not a regular file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise StoreError(
                f"key file {path} has permissions {stat.S_IMODE(st.st_mode):04o}; it must be readable "
                f"by its owner only: run chmod 600 {path}"
            )
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise StoreError(f"key file {path} must hold exactly {KEY_BYTES} bytes, found {len(key)}")
    return key


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


def _new_meta(passphrase: str | None, key_file: Path | None) -> tuple[dict[str, Any], bytes]:
    """Meta rows of a new store (salt, scrypt parameters, key check) and its key."""
    meta: dict[str, Any] = {"schema_version": str(SCHEMA_VERSION)}
    if key_file is not None:
        meta["kdf"] = "keyfile"
    else:
        meta.update(kdf="scrypt", salt=secrets.token_bytes(16), scrypt_n=str(SCRYPT_N))
        meta.update(scrypt_r=str(SCRYPT_R), scrypt_p=str(SCRYPT_P))
    key = _key(meta, passphrase, key_file)
    nonce = secrets.token_bytes(NONCE_BYTES)
    meta["key_check"] = nonce + AESGCM(key).encrypt(nonce, _KEY_CHECK, _KEY_CHECK_AAD)
    return meta, key


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


def _scrypt_params(meta: dict[str, Any]) -> tuple[bytes, int, int, int]:
    """Salt, n, r, p from ``meta``; ``ValueError`` naming the field when one is missing or absurd."""
    salt = meta.get("salt")
    if not isinstance(salt, bytes) or not 8 <= len(salt) <= 64:
        raise ValueError("salt")
    values = []
    for name, limit in _SCRYPT_LIMITS.items():
        try:
            value = int(meta[name])
        except (KeyError, TypeError, ValueError):
            raise ValueError(name) from None
        if not 1 <= value <= limit or (name == "scrypt_n" and (value < 2 or value & (value - 1))):
            raise ValueError(name)
        values.append(value)
    return salt, values[0], values[1], values[2]


def _key(
    meta: dict[str, Any], passphrase: str | None, key_file: Path | None, path: Path | None = None
) -> bytes:
    """The store key from a passphrase (scrypt with ``meta``'s parameters) or a key file."""
    where = f"{path}: " if path is not None else ""
    kdf = meta.get("kdf")
    if kdf == "scrypt":
        if passphrase is None:
            raise StoreError("this store is protected by a passphrase, not a key file")
        try:
            salt, n, r, p = _scrypt_params(meta)
        except ValueError as exc:
            raise StoreError(
                f"{where}damaged store metadata ({exc} is missing or invalid); restore the file from a backup"
            ) from None
        return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode())
    if kdf == "keyfile":
        if key_file is None:
            raise StoreError("this store is protected by a key file, not a passphrase")
        return _read_key_file(key_file)
    raise StoreError(f"{where}unknown key derivation {kdf!r} in the store metadata")


def _check_key(aead: AESGCM, blob: object, path: Path) -> None:
    """Decrypt the key check sealed in ``meta``: a wrong key fails here, before any row is read."""
    if not isinstance(blob, bytes) or len(blob) <= NONCE_BYTES:
        raise StoreError(f"{path}: damaged store metadata (key_check); restore the file from a backup")
    try:
        aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _KEY_CHECK_AAD)
    except InvalidTag:
        raise StoreError("cannot decrypt the store: wrong key or passphrase") from None


def _export_obj(item: StoredFeedback) -> dict[str, Any]:
    """One export line: id, created_at, kind, the importer's keys, reason; all text scrubbed."""
    obj: dict[str, Any] = {"id": item.id, "created_at": item.created_at.strftime(_TS_FORMAT)}
    obj["kind"] = _KIND_OF[type(item.record)]
    for name, value in _text_fields(item.record).items():
        key = "completion" if isinstance(item.record, Rating) and name == "response" else name
        obj[key] = scrub_text(value) if isinstance(value, str) else value
    if item.record.reason is not None:
        obj["reason"] = scrub_text(item.record.reason)
    return obj


class FeedbackStore:
    """A user's feedback, encrypted at rest; open with :meth:`open`, use as a context manager."""

    def __init__(self, conn: sqlite3.Connection, aead: AESGCM, *, path: Path, scrub: bool) -> None:
        self._conn, self._aead, self.path, self.scrub = conn, aead, path, scrub

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        create: bool = True,
        scrub: bool = True,
    ) -> FeedbackStore:
        """Open (or create) the store at ``path`` with a passphrase or a key file (exactly one).

        Raises:
            ConfigError: neither or both of ``passphrase`` and ``key_file``.
            StoreError: no store and ``create=False``; not a store; a newer schema;
                a key file with loose permissions; a wrong key or passphrase.
        """
        if (passphrase is None) == (key_file is None):
            raise ConfigError("pass exactly one of passphrase= or key_file= to FeedbackStore.open")
        path, key_path = Path(path), None if key_file is None else Path(key_file)
        conn = _connect(path, create=create)
        try:
            meta = _read_meta(conn, path)
            key = None
            if meta is None and not create:
                raise StoreMissing(f"{path} is empty, not an initialised feedback store (pass create=True)")
            _set_pragmas(conn)
            if meta is None:
                new_meta, key = _new_meta(passphrase, key_path)
                if not _initialise(conn, new_meta):
                    key = None  # another process initialised it first
                meta = _read_meta(conn, path) or {}
            _check_version(meta, path)
            aead = AESGCM(key or _key(meta, passphrase, key_path, path))
            _check_key(aead, meta.get("key_check"), path)
            _add_pending_table(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot use the feedback store {path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, aead, path=path, scrub=scrub)

    @staticmethod
    def create_key_file(path: str | os.PathLike[str]) -> Path:
        """Write a fresh random 32-byte key to ``path`` with mode 0600, atomically.

        Refuses to overwrite an existing file (its store would become unreadable).
        """
        try:
            return _atomic_write(Path(path), AESGCM.generate_key(bit_length=KEY_BYTES * 8), overwrite=False)
        except FileExistsError:
            raise StoreError(f"{path} exists; refusing to overwrite a key file") from None

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ rows

    def _open_row(self, row: tuple[int, str, str, bytes, bytes]) -> StoredFeedback:
        row_id, created_at, kind, nonce, ciphertext = row
        try:
            plain = self._aead.decrypt(nonce, ciphertext, _aad(row_id, kind, created_at))
        except (InvalidTag, ValueError, TypeError):
            raise TamperedRecord(row_id) from None
        obj = json.loads(plain)
        record = _KINDS[kind](**obj["fields"], reason=obj["reason"])
        when = datetime.strptime(created_at, _TS_FORMAT).replace(tzinfo=UTC)
        return StoredFeedback(row_id, when, record)

    def _open_rows(self, rows: Iterable[tuple[int, str, str, bytes, bytes]]) -> Rows[StoredFeedback]:
        """Decrypt ``rows``, skipping (and naming) those that fail authentication.

        Raises :class:`StoreError` when two or more rows fail and no row of the store decrypts:
        the key check passed, but the rows were sealed with another key (a replaced file or meta).
        """
        good, bad = Rows[StoredFeedback](), builtins.list[int]()
        for row in rows:
            try:
                good.append(self._open_row(row))
            except TamperedRecord:
                bad.append(row[0])
        if len(bad) > 1 and not good and not self._any_row_opens():
            raise StoreError(
                f"none of the {len(bad)} records in {self.path} decrypts although the key check "
                "passed: its rows were sealed with another key (a replaced file?); restore it from a backup"
            )
        good.corrupt = tuple(bad)
        return good

    def _any_row_opens(self) -> bool:
        for row in self._conn.execute(_ROW + " ORDER BY id"):
            try:
                self._open_row(row)
                return True
            except TamperedRecord:
                continue
        return False

    def add(
        self, record: Feedback, *, created_at: datetime | None = None, pending_id: str | None = None
    ) -> int:
        """Scrub (if enabled), encrypt and store ``record``; returns its new id.

        With ``pending_id``, that pending item is removed in the same transaction (the
        record is its judgement): both happen or neither.

        Raises:
            TypeError: not a Preference, Rating or Correction.
            DataError: ``created_at`` is naive, or scrubbing leaves a correction equal to its response.
            RecordNotFound: ``pending_id`` is not waiting.
        """
        kind = _KIND_OF.get(type(record))
        if kind is None:
            raise TypeError(f"not a feedback record: {type(record).__name__}")
        if self.scrub:
            record = _scrub_record(record)
        when = _ts(created_at or datetime.now(UTC), "created_at")
        body = {"kind": kind, "fields": _text_fields(record), "reason": record.reason}
        plain = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        with _transaction(self._conn) as c:
            if (
                pending_id is not None
                and not c.execute("DELETE FROM pending WHERE id = ?", (pending_id,)).rowcount
            ):
                raise RecordNotFound(f"no waiting item {pending_id!r} (already judged?)")
            cur = c.execute(
                "INSERT INTO feedback (created_at, kind, nonce, ciphertext) VALUES (?, ?, x'', x'')",
                (when, kind),
            )
            row_id = int(cur.lastrowid or 0)
            nonce = secrets.token_bytes(NONCE_BYTES)
            sealed = self._aead.encrypt(nonce, plain, _aad(row_id, kind, when))
            c.execute("UPDATE feedback SET nonce = ?, ciphertext = ? WHERE id = ?", (nonce, sealed, row_id))
        return row_id

    def get(self, record_id: int) -> StoredFeedback:
        """The live record ``record_id``.

        Raises :class:`RecordNotFound` if absent, :class:`TamperedRecord` if it fails authentication.
        """
        row = self._conn.execute(f"{_ROW} WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise RecordNotFound(f"no feedback record with id {record_id}")
        return self._open_row(row)

    def list(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        kinds: Iterable[str | type] | None = None,
    ) -> Rows[StoredFeedback]:
        """Live records with ``since <= created_at < until`` of the given kinds, in id order.

        ``kinds`` are names (``"preference"``, ``"rating"``, ``"correction"``) or record classes.
        Rows that fail authentication are skipped; their ids are in the result's ``corrupt``.
        """
        sql, args = f"{_ROW} WHERE 1 = 1", builtins.list[str]()
        if since is not None:
            sql, args = sql + " AND created_at >= ?", [*args, _ts(since, "since")]
        if until is not None:
            sql, args = sql + " AND created_at < ?", [*args, _ts(until, "until")]
        if kinds is not None:
            names = [k if isinstance(k, str) else _KIND_OF.get(k, repr(k)) for k in kinds]
            unknown = set(names) - set(_KINDS)
            if unknown:
                raise ConfigError(f"unknown feedback kinds {sorted(unknown)}; use {sorted(_KINDS)}")
            sql, args = sql + f" AND kind IN ({','.join('?' * len(names))})", [*args, *names]
        return self._open_rows(self._conn.execute(sql + " ORDER BY id", args).fetchall())

    def training_records(self) -> Rows[StoredFeedback]:
        """Every live record that authenticates, decrypted, in id order (``corrupt``: skipped ids)."""
        return self.list()

    def count(self) -> int:
        """Number of live records (corrupt ones included)."""
        return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def ids(self) -> builtins.list[int]:
        """Ids of every live record, corrupt ones included, without decrypting anything."""
        return [r[0] for r in self._conn.execute("SELECT id FROM feedback ORDER BY id")]

    def verify(self) -> builtins.list[int]:
        """Ids of rows that fail authentication (empty when the store is intact)."""
        bad = []
        for row in self._conn.execute(_ROW + " ORDER BY id").fetchall():
            try:
                self._open_row(row)
            except TamperedRecord:
                bad.append(row[0])
        return bad

    # ------------------------------------------------------------------ pending judgements

    def add_pending(
        self,
        prompt: str,
        responses: Sequence[str],
        *,
        item_id: str | None = None,
        scores: Sequence[float] = (),
    ) -> PendingItem:
        """Queue a prompt with one response (to rate) or two (to compare), scrubbed if enabled.

        ``item_id`` (default: random) keeps a known id; adding an id already there changes nothing.
        ``scores``: a reward model's score of each response (shown beside them), or none.

        Raises:
            DataError: not one or two responses, a text that is not UTF-8, or two responses
                that are identical (after scrubbing).
        """
        texts = [prompt, *responses]
        if not all(isinstance(t, str) for t in texts) or len(responses) not in (1, 2):
            raise DataError("give a prompt and one response (thumbs up/down) or two (A/B), as text")
        for name, text in zip(("prompt", "response A", "response B"), texts, strict=False):
            _check_utf8(name, text)
        if self.scrub:
            texts = [scrub_text(t) for t in texts]
        if len(texts) == 3 and texts[1] == texts[2]:
            raise DataError("the two responses are identical (or differ only in scrubbed personal data)")
        item_id = item_id or secrets.token_hex(8)
        if not isinstance(item_id, str) or not 0 < len(item_id) <= 64:
            raise DataError(f"must be a string of 1 to 64 characters, got {item_id!r}", field="id")
        scores = builtins.list(scores)
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in scores)
        if scores and (len(scores) != len(responses) or not numbers or not all(map(math.isfinite, scores))):
            raise DataError(f"must be one finite number per response, got {scores!r}", field="scores")
        obj: dict[str, Any] = {"prompt": texts[0], "responses": texts[1:]}
        if scores:
            obj["scores"] = [float(x) for x in scores]
        plain = json.dumps(obj, ensure_ascii=False).encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plain, _pending_aad(item_id))
        with _transaction(self._conn) as c:
            c.execute("INSERT OR IGNORE INTO pending VALUES (?, ?, ?)", (item_id, nonce, sealed))
        return PendingItem(item_id, texts[0], tuple(texts[1:]), tuple(float(x) for x in scores))

    def _open_pending(self, row: tuple[str, bytes, bytes]) -> PendingItem:
        item_id, nonce, ciphertext = row
        try:
            obj = json.loads(self._aead.decrypt(nonce, ciphertext, _pending_aad(item_id)))
        except (InvalidTag, ValueError, TypeError):
            raise TamperedRecord(item_id, table="pending") from None
        return PendingItem(item_id, obj["prompt"], tuple(obj["responses"]), tuple(obj.get("scores", ())))

    def pending(self) -> Rows[PendingItem]:
        """Items waiting for a judgement, oldest first; ``corrupt``: ids of items that fail authentication."""
        good, bad = Rows[PendingItem](), builtins.list[str]()
        for row in self._conn.execute(_PENDING_ROW + " ORDER BY rowid").fetchall():
            try:
                good.append(self._open_pending(row))
            except TamperedRecord:
                bad.append(row[0])
        good.corrupt = tuple(bad)
        return good

    def get_pending(self, item_id: str) -> PendingItem:
        """The waiting item ``item_id``.

        Raises :class:`RecordNotFound` if absent, :class:`TamperedRecord` if it fails authentication.
        """
        row = self._conn.execute(f"{_PENDING_ROW} WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise RecordNotFound(f"no waiting item {item_id!r} (already judged?)")
        return self._open_pending(row)

    def remove_pending(self, item_id: str) -> bool:
        """Drop a waiting item (corrupt or not) without decrypting it; True if it was there."""
        with _transaction(self._conn) as c:
            return bool(c.execute("DELETE FROM pending WHERE id = ?", (item_id,)).rowcount)

    # ------------------------------------------------------------------ forgetting

    def _delete(self, where: str, args: tuple[Any, ...] = ()) -> int:
        with _transaction(self._conn) as c:
            n = c.execute(f"DELETE FROM feedback {where}", args).rowcount
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # drop old page images
        return int(n)

    def forget(self, record_id: int) -> bool:
        """Delete one record; True if it existed. Its :meth:`rounds_used` history stays."""
        return self._delete("WHERE id = ?", (record_id,)) > 0

    def forget_since(self, since: datetime) -> int:
        """Delete records created at or after ``since``; returns how many."""
        return self._delete("WHERE created_at >= ?", (_ts(since, "since"),))

    def forget_all(self) -> int:
        """Delete every record; returns how many."""
        return self._delete("")

    def apply_retention(
        self, max_age_days: float | None = None, max_count: int | None = None, *, now: datetime | None = None
    ) -> int:
        """Delete records older than ``max_age_days``, then all but the newest ``max_count``."""
        if max_age_days is not None and max_age_days < 0:
            raise ConfigError(f"max_age_days must be >= 0, got {max_age_days}")
        if max_count is not None and (
            isinstance(max_count, bool) or int(max_count) != max_count or max_count < 0
        ):
            raise ConfigError(f"max_count must be a non-negative integer, got {max_count!r}")
        removed = 0
        if max_age_days is not None:
            cutoff = (now or datetime.now(UTC)) - timedelta(days=max_age_days)
            removed += self._delete("WHERE created_at < ?", (_ts(cutoff, "now"),))
        if max_count is not None:
            keep = "SELECT id FROM feedback ORDER BY created_at DESC, id DESC LIMIT ?"
            removed += self._delete(f"WHERE id NOT IN ({keep})", (int(max_count),))
        return removed

    # ------------------------------------------------------------------ training rounds

    def mark_used(self, ids: Iterable[int], round_id: str) -> None:
        """Record that training round ``round_id`` used these (live) records."""
        if not isinstance(round_id, str) or not round_id.strip():
            raise DataError("must be a non-empty string", field="round_id")
        ids = builtins.list(dict.fromkeys(int(i) for i in ids))
        with _transaction(self._conn) as c:
            marks = ",".join("?" * len(ids))
            live = {r[0] for r in c.execute(f"SELECT id FROM feedback WHERE id IN ({marks})", ids)}
            missing = [i for i in ids if i not in live]
            if missing:
                raise RecordNotFound(f"no live feedback records with ids {missing}")
            c.executemany("INSERT OR IGNORE INTO rounds_used VALUES (?, ?)", [(i, round_id) for i in ids])

    def rounds_used(self, record_id: int) -> builtins.list[str]:
        """Training rounds that used ``record_id``, oldest first (kept after forgetting)."""
        rows = self._conn.execute(
            "SELECT round_id FROM rounds_used WHERE feedback_id = ? ORDER BY rowid", (record_id,)
        )
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ export

    def export_jsonl(self, path: str | os.PathLike[str]) -> ExportResult:
        """Write every live record, PII-scrubbed, as JSONL (mode 0600, atomic replace).

        Lines use the importer keys (``prompt/chosen/rejected``, ``prompt/completion/label``,
        ``prompt/response/corrected``, optional ``reason``) plus ``id``, ``created_at``, ``kind``.
        Rows that fail authentication are left out and named in the result's ``corrupt``.
        """
        items = self.training_records()
        lines = [json.dumps(_export_obj(item), ensure_ascii=False) + "\n" for item in items]
        written = _atomic_write(Path(path), "".join(lines).encode(), overwrite=True)
        return ExportResult(written, len(items), items.corrupt)
