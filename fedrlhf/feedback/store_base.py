"""Reading, forgetting and round bookkeeping of an open feedback store.

:class:`FeedbackStoreBase` holds the methods of :class:`~fedrlhf.feedback.store.FeedbackStore`
that work on rows already written (records and pending items); opening and writing
(scrubbed, sealed) are in :mod:`fedrlhf.feedback.store`.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedrlhf.errors import ConfigError, DataError, StoreError
from fedrlhf.feedback.store_crypto import _aad, _pending_aad
from fedrlhf.feedback.store_db import _KIND_OF, _KINDS, _PENDING_ROW, _ROW, _TS_FORMAT, _transaction, _ts
from fedrlhf.feedback.store_types import PendingItem, RecordNotFound, Rows, StoredFeedback, TamperedRecord


class FeedbackStoreBase:
    """The row methods of :class:`~fedrlhf.feedback.store.FeedbackStore`; use that class."""

    def __init__(self, conn: sqlite3.Connection, aead: AESGCM, *, path: Path, scrub: bool) -> None:
        self._conn, self._aead, self.path, self.scrub = conn, aead, path, scrub

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
