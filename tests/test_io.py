"""atomic_directory replaces only what fedrlhf wrote: never a user's directory or file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrlhf.errors import OutputError
from fedrlhf.io import MARKER, atomic_directory, check_replaceable


def _write(path: Path, **files: str) -> None:
    with atomic_directory(path, legacy=("legacy.json",)) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_foreign_directory_is_refused_and_kept(tmp_path: Path) -> None:
    v = tmp_path / "v"
    (v / "sub").mkdir(parents=True)
    (v / "notes.txt").write_text("x")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match=r"did not create \(it holds notes.txt, sub/\)") as info:
        _write(v, model="new")
    assert "\n" not in str(info.value) and str(v) in str(info.value)
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_a_file_is_refused_not_renamed(tmp_path: Path) -> None:
    f = tmp_path / "v"
    f.write_text("precious")
    with pytest.raises(OutputError, match="is a file"):
        _write(f, model="new")
    assert f.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["v"]


def test_missing_and_empty_directories_are_written(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name in ("new", "empty"):
        _write(tmp_path / name, model=name)
        assert (tmp_path / name / "model").read_text() == name
        assert json.loads((tmp_path / name / MARKER).read_text())["files"] == ["model"]


def test_fedrlhf_directory_is_replaced_as_a_whole(tmp_path: Path) -> None:
    v = tmp_path / "v"
    _write(v, a="1", b="2")
    _write(v, a="3")
    assert _snapshot(v).keys() == {"a", MARKER} and (v / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no temp or .old left behind


def test_fedrlhf_directory_with_a_users_file_is_refused(tmp_path: Path) -> None:
    v = tmp_path / "v"
    _write(v, a="1")
    (v / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match=r"files fedrlhf did not write \(mine.txt\)"):
        _write(v, a="2")
    assert (v / "mine.txt").read_text() == "keep" and (v / "a").read_text() == "1"


def test_legacy_directory_without_marker_is_replaced(tmp_path: Path) -> None:
    v = tmp_path / "v"
    v.mkdir()
    (v / "legacy.json").write_text("{}")
    (v / "weights").write_text("old")
    _write(v, weights="new")
    assert _snapshot(v).keys() == {"weights", MARKER}


def test_a_forged_or_broken_marker_does_not_make_a_directory_fedrlhf_s(tmp_path: Path) -> None:
    v = tmp_path / "v"
    v.mkdir()
    (v / "data.csv").write_text("1,2")
    for marker in ("not json", '{"files": ["data.csv"]}', '{"written_by": "fedrlhf", "files": 3}'):
        (v / MARKER).write_text(marker)
        with pytest.raises(OutputError):
            _write(v, model="new")
    assert (v / "data.csv").read_text() == "1,2"


def test_a_users_dot_old_directory_is_not_removed(tmp_path: Path) -> None:
    v, old = tmp_path / "v", tmp_path / ".v.old"
    old.mkdir()
    (old / "thesis.tex").write_text("keep")
    with pytest.raises(OutputError, match="thesis.tex"):
        _write(v, model="new")
    assert (old / "thesis.tex").read_text() == "keep" and not v.exists()


def test_a_failing_body_leaves_the_old_directory(tmp_path: Path) -> None:
    v = tmp_path / "v"
    _write(v, a="1")
    with pytest.raises(RuntimeError), atomic_directory(v) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash")
    assert (v / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_check_replaceable_names_the_flag_and_a_file_parent(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"^--out .*f/sub: .*f is a file"):
        check_replaceable(tmp_path / "f" / "sub", label="--out")
    check_replaceable(tmp_path / "a" / "b", label="--out")  # missing parents are fine
    assert not (tmp_path / "a").exists()
