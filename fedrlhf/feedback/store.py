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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedrlhf.errors import ConfigError, DataError, StoreError
from fedrlhf.feedback.pii import scrub as scrub_text
from fedrlhf.feedback.records import Feedback, Rating
from fedrlhf.feedback.store_base import FeedbackStoreBase
from fedrlhf.feedback.store_crypto import (
    _KEY_CHECK,
    _KEY_CHECK_AAD,
    KEY_BYTES,
    NONCE_BYTES,
    _aad,
    _check_key,
    _key,
    _pending_aad,
)
from fedrlhf.feedback.store_db import (
    _KIND_OF,
    _TS_FORMAT,
    SCHEMA_VERSION,
    _add_pending_table,
    _atomic_write,
    _check_utf8,
    _check_version,
    _connect,
    _initialise,
    _read_meta,
    _set_pragmas,
    _text_fields,
    _transaction,
    _ts,
)
from fedrlhf.feedback.store_types import (
    ExportResult,
    PendingItem,
    RecordNotFound,
    Rows,
    StoredFeedback,
    StoreMissing,
    TamperedRecord,
)

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

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


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


class FeedbackStore(FeedbackStoreBase):
    """A user's feedback, encrypted at rest; open with :meth:`open`, use as a context manager."""

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
