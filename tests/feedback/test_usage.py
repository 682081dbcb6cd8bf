"""The journal of rounds that trained on exported store rows (fedrlhf.feedback.usage)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fedrlhf.feedback.usage import USAGE_FILE, append_usage, take_usage


def test_take_hands_over_every_round_once_and_skips_torn_lines(tmp_path: Path) -> None:
    append_usage(tmp_path, "s round-1", [3, 1])
    with open(tmp_path / USAGE_FILE, "a") as f:
        f.write('{"label": "s round-2", "ids": [4')  # a write cut short by a crash
    append_usage(tmp_path, "s round-3", [2])
    noted: list[tuple[str, list[int]]] = []
    taken = take_usage(tmp_path, lambda label, ids: noted.append((label, ids)))
    assert taken == noted == [("s round-1", [3, 1]), ("s round-3", [2])]
    assert take_usage(tmp_path, lambda label, ids: noted.append((label, ids))) == []
    assert (tmp_path / USAGE_FILE).stat().st_mode & 0o777 == 0o600


def test_a_failing_note_keeps_the_journal(tmp_path: Path) -> None:
    append_usage(tmp_path, "s round-1", [1])

    def broken(label: str, ids: list[int]) -> None:
        raise OSError("store is locked")

    with pytest.raises(OSError):
        take_usage(tmp_path, broken)
    assert take_usage(tmp_path, lambda label, ids: None) == [("s round-1", [1])]


def test_concurrent_appends_are_never_lost(tmp_path: Path) -> None:
    taken: list[tuple[str, list[int]]] = []

    def writer(n: int) -> None:
        for r in range(50):
            append_usage(tmp_path, f"w{n} round-{r}", [n, r])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        taken += take_usage(tmp_path, lambda label, ids: None)
    for t in threads:
        t.join()
    taken += take_usage(tmp_path, lambda label, ids: None)
    assert sorted(label for label, _ in taken) == sorted(
        f"w{n} round-{r}" for n in range(4) for r in range(50)
    )
