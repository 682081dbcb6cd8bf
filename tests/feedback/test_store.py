"""Encrypted feedback store: round trips, keys, tampering, forgetting, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedrlhf.errors import ConfigError, DataError, StoreError
from fedrlhf.feedback import store as store_mod
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating
from fedrlhf.feedback.store import FeedbackStore, PendingItem, RecordNotFound, StoreMissing, TamperedRecord

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RECORDS: list[Feedback] = [
    Preference("What is 2+2?", "4", "5", reason="correct"),
    Rating("Tell me a joke", "Why did the chicken...", -1),
    Correction("Capital of France?", "Lyon", "Paris", reason=None),
]


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap scrypt for tests (the real n=2**15 is exercised by one test)."""
    monkeypatch.setattr(store_mod, "SCRYPT_N", 2**10)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return FeedbackStore.create_key_file(tmp_path / "store.key")


def open_store(path: Path, key_file: Path, **kwargs: object) -> FeedbackStore:
    return FeedbackStore.open(path, key_file=key_file, **kwargs)  # type: ignore[arg-type]


def test_round_trip_of_all_kinds_with_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    with FeedbackStore.open(path, passphrase="correct horse") as store:
        ids = [store.add(r, created_at=T0 + timedelta(minutes=i)) for i, r in enumerate(RECORDS)]
    with FeedbackStore.open(path, passphrase="correct horse", create=False) as store:
        got = store.list()
        assert [g.record for g in got] == RECORDS
        assert [g.id for g in got] == ids == sorted(ids)
        assert got[1].created_at == T0 + timedelta(minutes=1)
        assert store.get(ids[2]).record == RECORDS[2]
        assert store.count() == 3 and store.verify() == []
        assert [s.record for s in store.training_records()] == RECORDS


def test_content_is_not_stored_in_plain_text(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        store.add(Preference("secret prompt xyzzy", "chosen plugh", "rejected"))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("fb.db*"))
    assert b"xyzzy" not in raw and b"plugh" not in raw
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_real_scrypt_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "SCRYPT_N", 2**15)
    with FeedbackStore.open(tmp_path / "fb.db", passphrase="pw"):
        pass
    meta = dict(sqlite3.connect(tmp_path / "fb.db").execute("SELECT key, value FROM meta"))
    assert (meta["kdf"], meta["scrypt_n"], meta["scrypt_r"], meta["scrypt_p"]) == (
        "scrypt",
        "32768",
        "8",
        "1",
    )
    assert len(meta["salt"]) == 16


def test_wrong_passphrase_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    with FeedbackStore.open(path, passphrase="right") as store:
        store.add(RECORDS[0])
    with pytest.raises(StoreError, match="cannot decrypt the store: wrong key or passphrase"):
        FeedbackStore.open(path, passphrase="wrong")


def test_wrong_key_file_and_wrong_key_type(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    open_store(path, key_file).close()
    other = FeedbackStore.create_key_file(tmp_path / "other.key")
    with pytest.raises(StoreError, match="wrong key or passphrase"):
        open_store(path, other)
    with pytest.raises(StoreError, match="protected by a key file"):
        FeedbackStore.open(path, passphrase="pw")
    with pytest.raises(ConfigError, match="exactly one"):
        FeedbackStore.open(path)


def test_key_file_permissions(tmp_path: Path, key_file: Path) -> None:
    assert os.stat(key_file).st_mode & 0o777 == 0o600 and key_file.stat().st_size == 32
    key_file.chmod(0o644)
    with pytest.raises(StoreError, match="permissions 0644.*chmod 600"):
        open_store(tmp_path / "fb.db", key_file)
    with pytest.raises(StoreError, match="refusing to overwrite"):
        FeedbackStore.create_key_file(key_file)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(StoreError, match="exactly 32 bytes"):
        open_store(tmp_path / "fb.db", short)


def test_missing_store_and_newer_schema(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(StoreError, match="no feedback store"):
        open_store(tmp_path / "none.db", key_file, create=False)
    path = tmp_path / "fb.db"
    open_store(path, key_file).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 2, newer than this fedrlhf supports"):
        open_store(path, key_file)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a feedback store"):
        open_store(tmp_path / "junk.db", key_file)


def _raw(path: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def _flip(path: Path, row_id: int, column: str = "ciphertext") -> None:
    (blob,) = _raw(path, f"SELECT {column} FROM feedback WHERE id = ?", row_id)[0]
    _raw(path, f"UPDATE feedback SET {column} = ? WHERE id = ?", bytes([blob[0] ^ 0x01]) + blob[1:], row_id)


def test_flipped_ciphertext_byte_is_skipped_reported_and_forgettable(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        ids = [store.add(r) for r in RECORDS]
    _flip(path, ids[1])
    with open_store(path, key_file) as store:
        assert store.verify() == [ids[1]]
        got = store.list()
        assert [s.id for s in got] == [ids[0], ids[2]] and got.corrupt == (ids[1],)
        assert store.training_records().corrupt == (ids[1],)
        assert store.list(kinds=["preference"]).corrupt == ()  # the filter did not select it
        with pytest.raises(TamperedRecord, match=f"row {ids[1]}") as info:
            store.get(ids[1])
        assert info.value.row_id == ids[1]
        assert store.get(ids[0]).record == RECORDS[0]
        assert store.ids() == ids and store.count() == 3
        assert store.forget(ids[1]) is True  # without decrypting it
        assert store.verify() == [] and len(store.list()) == 2 and store.list().corrupt == ()


def test_export_skips_and_reports_a_corrupt_row(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        ids = [store.add(r) for r in RECORDS]
    _flip(path, ids[0], "nonce")
    with open_store(path, key_file) as store:
        result = store.export_jsonl(tmp_path / "out.jsonl")
    assert (result.count, result.corrupt) == (2, (ids[0],))
    assert [json.loads(line)["id"] for line in result.path.read_text().splitlines()] == ids[1:]


def test_rows_of_another_key_are_a_hard_error_not_skipped(tmp_path: Path, key_file: Path) -> None:
    """The key check passes, but every row was sealed under another key: refuse, do not skip them all."""
    path, other = tmp_path / "fb.db", tmp_path / "other.db"
    open_store(path, key_file).close()
    with open_store(other, FeedbackStore.create_key_file(tmp_path / "other.key")) as store:
        for r in RECORDS:
            store.add(r, created_at=T0)
    rows = _raw(other, "SELECT id, created_at, kind, nonce, ciphertext FROM feedback")
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)", rows)
    with open_store(path, key_file) as store:
        assert store.verify() == [1, 2, 3]
        with pytest.raises(StoreError, match="none of the 3 records .* decrypts"):
            store.list()
        with pytest.raises(StoreError, match="none of the 3 records"):
            store.export_jsonl(tmp_path / "out.jsonl")
        assert store.list(kinds=["rating"]).corrupt == (2,)  # one row alone cannot tell


def test_swapped_and_moved_rows_are_detected(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        a, b, c = (store.add(r, created_at=T0) for r in [RECORDS[0], RECORDS[0], RECORDS[1]])
    rows = dict((r[0], r[1:]) for r in _raw(path, "SELECT id, nonce, ciphertext FROM feedback"))
    _raw(path, "UPDATE feedback SET nonce = ?, ciphertext = ? WHERE id = ?", *rows[b], a)
    _raw(path, "UPDATE feedback SET nonce = ?, ciphertext = ? WHERE id = ?", *rows[a], b)
    _raw(path, "UPDATE feedback SET id = 99 WHERE id = ?", c)
    with open_store(path, key_file) as store:
        assert store.verify() == [a, b, 99]


def test_plain_columns_are_authenticated(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        i, j = store.add(RECORDS[0], created_at=T0), store.add(RECORDS[1], created_at=T0)
    _raw(path, "UPDATE feedback SET created_at = '2030-01-01T00:00:00.000000Z' WHERE id = ?", i)
    _raw(path, "UPDATE feedback SET kind = 'correction' WHERE id = ?", j)
    with open_store(path, key_file) as store:
        assert store.verify() == [i, j]


def test_list_filters(tmp_path: Path, key_file: Path) -> None:
    with open_store(tmp_path / "fb.db", key_file) as store:
        ids = [store.add(r, created_at=T0 + timedelta(days=i)) for i, r in enumerate(RECORDS)]
        assert [s.id for s in store.list(since=T0 + timedelta(days=1))] == ids[1:]
        assert [s.id for s in store.list(until=T0 + timedelta(days=1))] == ids[:1]
        assert [s.id for s in store.list(kinds=["rating", Correction])] == ids[1:]
        with pytest.raises(ConfigError, match="unknown feedback kinds"):
            store.list(kinds=["thumbs"])
        with pytest.raises(DataError, match="timezone-aware"):
            store.list(since=datetime(2024, 1, 1))


def test_forget_variants(tmp_path: Path, key_file: Path) -> None:
    with open_store(tmp_path / "fb.db", key_file) as store:
        ids = [store.add(RECORDS[i % 3], created_at=T0 + timedelta(days=i)) for i in range(6)]
        assert store.forget(ids[0]) is True and store.forget(ids[0]) is False
        with pytest.raises(RecordNotFound):
            store.get(ids[0])
        assert store.forget_since(T0 + timedelta(days=4)) == 2
        assert [s.id for s in store.list()] == ids[1:4]
        assert store.forget_all() == 3 and store.count() == 0
        new_id = store.add(RECORDS[0])
        assert new_id > ids[-1]  # ids are never reused, so rounds_used stays unambiguous


def test_retention(tmp_path: Path, key_file: Path) -> None:
    now = T0 + timedelta(days=100)
    with open_store(tmp_path / "fb.db", key_file) as store:
        ids = [store.add(RECORDS[0], created_at=T0 + timedelta(days=10 * i)) for i in range(10)]
        assert store.apply_retention(max_age_days=35, now=now) == 7  # days 0..60 are before day 65
        assert [s.id for s in store.list()] == ids[7:]
        assert store.apply_retention(max_count=2, now=now) == 1
        assert [s.id for s in store.list()] == ids[8:]
        assert store.apply_retention(now=now) == 0
        with pytest.raises(ConfigError):
            store.apply_retention(max_count=-1)
        with pytest.raises(ConfigError):
            store.apply_retention(max_age_days=-1.0)


def test_rounds_used_survive_forget(tmp_path: Path, key_file: Path) -> None:
    with open_store(tmp_path / "fb.db", key_file) as store:
        a, b = store.add(RECORDS[0]), store.add(RECORDS[1])
        store.mark_used([a, b], "round-1")
        store.mark_used([a], "round-2")
        store.mark_used([a], "round-2")  # idempotent
        assert store.rounds_used(a) == ["round-1", "round-2"] and store.rounds_used(b) == ["round-1"]
        store.forget(a)
        assert store.rounds_used(a) == ["round-1", "round-2"]
        with pytest.raises(RecordNotFound, match=str(a)):
            store.mark_used([b, a], "round-3")
        assert store.rounds_used(b) == ["round-1"]  # the failed call changed nothing
        with pytest.raises(DataError):
            store.mark_used([b], " ")
    rows = _raw(tmp_path / "fb.db", "SELECT * FROM rounds_used")
    assert all(len(r) == 2 for r in rows)  # only the id and the round id are kept


def test_scrubbing_before_encryption_and_export(tmp_path: Path, key_file: Path) -> None:
    pref = Preference("my mail is ann@example.com", "ok", "call (212) 555-0123", reason="ann@example.com")
    with open_store(tmp_path / "fb.db", key_file) as store:
        i = store.add(pref)
        assert store.get(i).record == Preference("my mail is <EMAIL>", "ok", "call <PHONE>", "<EMAIL>")
        with pytest.raises(DataError, match="only in personal data"):
            store.add(Correction("", "mail a@b.com", "mail c@d.com"))
    with open_store(tmp_path / "raw.db", key_file, scrub=False) as store:
        store.add(pref, created_at=T0)
        store.add(Rating("p", "reach me at 4111 1111 1111 1111", 1))
        assert store.list()[0].record == pref
        out = store.export_jsonl(tmp_path / "export.jsonl").path
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {
        "id": 1,
        "created_at": "2024-05-01T12:00:00.000000Z",
        "kind": "preference",
        "prompt": "my mail is <EMAIL>",
        "chosen": "ok",
        "rejected": "call <PHONE>",
        "reason": "<EMAIL>",
    }
    assert lines[1]["completion"] == "reach me at <CREDIT_CARD>" and lines[1]["label"] == 1
    assert os.stat(out).st_mode & 0o777 == 0o600


def test_missing_empty_and_directory_stores(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(StoreMissing, match="no feedback store"):
        open_store(tmp_path / "none.db", key_file, create=False)
    assert not (tmp_path / "none.db").exists()
    (tmp_path / "empty.db").touch()
    with pytest.raises(StoreMissing, match="empty.db is empty"):
        open_store(tmp_path / "empty.db", key_file, create=False)
    assert (tmp_path / "empty.db").stat().st_size == 0  # refusing wrote nothing into it
    (tmp_path / "dir.db").mkdir()
    for create in (True, False):
        with pytest.raises(StoreError, match="dir.db is a directory"):
            open_store(tmp_path / "dir.db", key_file, create=create)
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a feedback store") as info:
        open_store(tmp_path / "other.db", key_file)
    assert not isinstance(info.value, StoreMissing)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("schema_version", "one", "schema_version 'one'"),
        ("key_check", "text", r"damaged store metadata \(key_check\)"),
        ("scrypt_n", "1000", r"scrypt_n is missing or invalid"),
        ("scrypt_n", str(2**40), r"scrypt_n is missing or invalid"),
        ("scrypt_r", "x", r"scrypt_r is missing or invalid"),
        ("salt", "text", r"salt is missing or invalid"),
        ("kdf", "rot13", "unknown key derivation 'rot13'"),
    ],
)
def test_damaged_metadata_is_one_clear_error(tmp_path: Path, key: str, value: str, message: str) -> None:
    path = tmp_path / "fb.db"
    FeedbackStore.open(path, passphrase="pw").close()
    _raw(path, "UPDATE meta SET value = ? WHERE key = ?", value, key)
    with pytest.raises(StoreError, match=message) as info:
        FeedbackStore.open(path, passphrase="pw")
    assert str(path) in str(info.value)


def test_a_deleted_meta_row_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    FeedbackStore.open(path, passphrase="pw").close()
    _raw(path, "DELETE FROM meta WHERE key = 'scrypt_p'")
    with pytest.raises(StoreError, match="scrypt_p is missing"):
        FeedbackStore.open(path, passphrase="pw")


def test_text_that_is_not_utf8_is_a_data_error_naming_the_field(tmp_path: Path, key_file: Path) -> None:
    bad = b"caf\xff".decode("utf-8", "surrogateescape")  # what sys.argv holds for a stray byte
    with open_store(tmp_path / "fb.db", key_file) as store:
        with pytest.raises(DataError, match="field 'prompt': holds bytes that are not UTF-8 text"):
            store.add_pending(bad, ["x"])
        with pytest.raises(DataError, match="field 'response B'"):
            store.add_pending("p", ["x", bad])
        assert store.count() == 0 and store.pending() == []


def test_pending_items_are_sealed_scrubbed_ordered_and_judged_atomically(
    tmp_path: Path, key_file: Path
) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        one = store.add_pending("card 4111 1111 1111 1111 please", ["mail me at ann@example.com"])
        two = store.add_pending("which?", ["A answer", "B answer"], item_id="legacy-1")
        assert store.add_pending("again", ["other"], item_id="legacy-1") == PendingItem(
            "legacy-1", "again", ("other",)
        )
        assert store.pending() == [one, two] and two.id == "legacy-1"
        assert one.prompt == "card <CREDIT_CARD> please" and one.responses == ("mail me at <EMAIL>",)
        with pytest.raises(DataError, match="identical"):
            store.add_pending("p", ["call ann@example.com", "call bob@example.com"])
        with pytest.raises(DataError, match="one response .* or two"):
            store.add_pending("p", ["a", "b", "c"])
        rid = store.add(Preference("which?", "B answer", "A answer"), pending_id=two.id)
        assert store.pending() == [one] and store.get(rid).record.chosen == "B answer"
        with pytest.raises(RecordNotFound, match="no waiting item 'legacy-1'"):
            store.add(Preference("which?", "B answer", "A answer"), pending_id=two.id)
        assert store.count() == 1  # the failed judgement stored nothing
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("fb.db*"))
    assert b"4111" not in raw and b"ann@example" not in raw and b"card" not in raw


def test_a_corrupt_pending_item_is_skipped_and_removable(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        a, b = store.add_pending("p", ["one"]), store.add_pending("q", ["two"])
    _raw(path, "UPDATE pending SET id = 'moved' WHERE id = ?", a.id)  # the id is authenticated
    with open_store(path, key_file) as store:
        got = store.pending()
        assert got == [b] and got.corrupt == ("moved",)
        with pytest.raises(TamperedRecord, match="pending row moved"):
            store.get_pending("moved")
        assert store.remove_pending("moved") is True and store.remove_pending("moved") is False
        assert store.pending().corrupt == ()


def test_a_store_made_before_the_pending_table_gains_it(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    with open_store(path, key_file) as store:
        store.add(RECORDS[0])
    _raw(path, "DROP TABLE pending")
    with open_store(path, key_file) as store:
        assert store.pending() == [] and store.add_pending("p", ["r"]).prompt == "p"
        assert [s.record for s in store.list()] == RECORDS[:1]


WRITER = """
import sys
from fedrlhf.feedback.records import Preference
from fedrlhf.feedback.store import FeedbackStore
store = FeedbackStore.open(sys.argv[1], key_file=sys.argv[2])
i = 0
while True:
    i += 1
    rid = store.add(Preference(f"prompt {i}", f"good {i} " * 50, f"bad {i} " * 50))
    print(rid, flush=True)
"""


def test_killed_writer_loses_nothing_committed(tmp_path: Path, key_file: Path) -> None:
    """SIGKILL a writer at random moments; every id it reported as committed survives."""
    path = tmp_path / "fb.db"
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(key_file)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # wait until the writer is running
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        committed = [int(first)] + [int(line) for line in proc.stdout.read().split()]
        proc.wait()
        with open_store(path, key_file) as store:
            assert store.verify() == []
            live = {s.id for s in store.list()}
        assert set(committed) <= live
        assert max(live) <= max(committed) + 1  # at most the record in flight beyond the last print


CONCURRENT_WRITER = """
import sys
from fedrlhf.feedback.records import Rating
from fedrlhf.feedback.store import FeedbackStore
with FeedbackStore.open(sys.argv[1], key_file=sys.argv[2]) as store:
    for i in range(25):
        store.add(Rating(f"prompt {sys.argv[3]}-{i}", f"response {i}", 1))
        if i % 5 == 0:
            store.add_pending(f"waiting {sys.argv[3]}-{i}", ["r"])
"""


def test_four_concurrent_writers_lose_nothing(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "fb.db"
    open_store(path, key_file).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(path), str(key_file), str(w)], env=env)
        for w in range(4)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    with open_store(path, key_file) as store:
        got, waiting = store.list(), store.pending()
        assert len(got) == 100 and got.corrupt == () and store.verify() == []
        assert {s.record.prompt for s in got} == {f"prompt {w}-{i}" for w in range(4) for i in range(25)}
        assert len(waiting) == 20 and waiting.corrupt == ()
