"""The default ledger is found by the records' content: a copy, rename or superset spends the same budget."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from fedrlhf.commands import default_ledger
from fedrlhf.errors import ConfigError
from fedrlhf.feedback import Preference, read_feedback, write_jsonl
from fedrlhf.privacy.registry import ledger_for_records, record_key


def synthetic_pairs(n: int, seed: int = 0) -> list:
    """``n`` distinct pairs; different seeds never share one (tests.helpers' do, by design)."""
    return [Preference(f"question {seed}/{i}", f"a helpful answer {i}", "No.") for i in range(n)]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDRLHF_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _file(path: Path, records: list) -> tuple[Path, list]:
    write_jsonl(path, records)
    return path, read_feedback(path).records


def test_copy_rename_reorder_gzip_and_superset_share_one_ledger(home: Path, tmp_path: Path) -> None:
    records = synthetic_pairs(10, seed=1)
    mine = default_ledger(*_file(tmp_path / "mine.jsonl", records))
    copy = default_ledger(*_file(tmp_path / "elsewhere" / "copy.jsonl", list(reversed(records))))
    zipped = tmp_path / "mine.jsonl.gz"
    zipped.write_bytes(gzip.compress((tmp_path / "mine.jsonl").read_bytes()))
    superset = default_ledger(*_file(tmp_path / "more.jsonl", records + synthetic_pairs(5, seed=9)))
    subset = default_ledger(*_file(tmp_path / "less.jsonl", records[:3]))
    assert mine == copy == default_ledger(zipped, read_feedback(zipped).records) == superset == subset
    assert mine.parent == home / "ledgers"
    other = default_ledger(*_file(tmp_path / "other.jsonl", synthetic_pairs(4, seed=50)))
    assert other != mine


def test_records_over_two_ledgers_are_refused(home: Path, tmp_path: Path) -> None:
    a, b = synthetic_pairs(4, seed=1), synthetic_pairs(4, seed=2)
    assert default_ledger(*_file(tmp_path / "a.jsonl", a)) != default_ledger(*_file(tmp_path / "b.jsonl", b))
    with pytest.raises(ConfigError, match="overlap 2 privacy ledgers.*--ledger"):
        default_ledger(*_file(tmp_path / "ab.jsonl", a + b))


def test_a_path_keyed_ledger_of_an_older_version_is_adopted(home: Path, tmp_path: Path) -> None:
    import hashlib

    data, records = _file(tmp_path / "mine.jsonl", synthetic_pairs(6, seed=3))
    key = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    legacy = home / "ledgers" / f"mine.jsonl-{key}.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"version": 1, "accountant": "rdp", "delta": 1e-5, "entries": []}))
    assert default_ledger(data, records) == legacy
    assert default_ledger(*_file(tmp_path / "copy.jsonl", records)) == legacy


def test_record_key_depends_on_content_only() -> None:
    a, b = synthetic_pairs(2, seed=1)
    assert record_key(a) == record_key(type(a)(**vars(a))) and record_key(a) != record_key(b)
    assert len(record_key(a)) == 32


def test_a_corrupt_index_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "x.records").write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"x.records is corrupt"):
        ledger_for_records(tmp_path, ["0" * 32])
