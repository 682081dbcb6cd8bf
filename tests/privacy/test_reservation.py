"""Reserving a run's spend under the ledger's lock: concurrent runs cannot overspend."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fedrlhf.errors import PrivacyBudgetExceeded
from fedrlhf.privacy.ledger import PrivacyLedger, compose_epsilon

DELTA = 1e-5
RUN = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 1000}  # epsilon 2.10 alone, 3.06 twice


def _open(path: Path, budget: float | None = None) -> PrivacyLedger:
    return PrivacyLedger(path, delta=DELTA, lifetime_epsilon=budget)


def test_a_reservation_counts_as_spent_for_another_ledger_object(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    first, second = _open(path, 2.5), _open(path, 2.5)
    held = first.reserve(label="a", **RUN)
    assert second.spent() == pytest.approx(
        compose_epsilon([(1.0, 0.01, 1000)], accountant="rdp", delta=DELTA)
    )
    with pytest.raises(PrivacyBudgetExceeded):  # both fit alone, not together
        second.reserve(label="b", **RUN)
    assert [r.label for r in second.reserved] == ["a"]
    first.settle(held, steps=300)  # it stopped early: only 300 steps are charged
    assert second.reserved == () and [e.steps for e in second.entries] == [300]
    second.reserve(label="b", noise_multiplier=1.0, sample_rate=0.01, steps=500)


def test_settle_with_no_steps_drops_the_reservation(tmp_path: Path) -> None:
    ledger = _open(tmp_path / "l.json", 3.0)
    held = ledger.reserve(label="a", **RUN)
    assert ledger.settle(held, steps=0) is None
    assert ledger.spent() == 0.0 and ledger.entries == () and ledger.reserved == ()


def test_a_crashed_runs_reservation_stays_spent(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    _open(path, 3.0).reserve(label="crashed", **RUN)  # never settled
    reopened = _open(path, 3.0)
    assert reopened.spent() > 2.1 and reopened.report()["reserved"][0]["label"] == "crashed"
    assert json.loads(path.read_text())["reserved"][0]["steps"] == 1000


def test_target_epsilon_counts_the_other_runs_reservation(tmp_path: Path) -> None:
    """Two runs targeting 3.0 at once: the second picks its noise over the first's reservation."""
    path = tmp_path / "l.json"
    a = _open(path).reserve(label="a", target_epsilon=3.0, sample_rate=0.01, steps=1000)
    b = _open(path).reserve(label="b", target_epsilon=3.0, sample_rate=0.01, steps=1000)
    assert b.noise_multiplier > a.noise_multiplier
    ledger = _open(path)
    ledger.settle(a, steps=a.steps)
    ledger.settle(b, steps=b.steps)
    assert ledger.spent() <= 3.0


def test_threads_reserving_at_once_never_overspend(tmp_path: Path) -> None:
    """Eight runs race for a budget that holds three; each checks and reserves under the lock."""
    path, budget = tmp_path / "l.json", 3.7  # 3 runs: 3.69; 4 runs: 4.23
    start, results = threading.Barrier(8), []

    def run(i: int) -> None:
        ledger = _open(path, budget)
        start.wait()
        try:
            held = ledger.reserve(label=f"t{i}", noise_multiplier=1.0, sample_rate=0.01, steps=1000)
        except PrivacyBudgetExceeded:
            results.append("refused")
            return
        ledger.settle(held, steps=held.steps)
        results.append("ran")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = _open(path, budget)
    assert sorted(results) == ["ran"] * 3 + ["refused"] * 5
    assert final.spent() <= budget and final.reserved == () and len(final.entries) == 3


def test_a_target_spread_over_the_remaining_rounds_keeps_one_noise_and_meets_it(tmp_path: Path) -> None:
    """A federation's device: round r of 3 reserves with runs = 3 - r + 1 (see client_round)."""
    ledger = _open(tmp_path / "l.json", 3.0)
    sigmas = []
    for runs in (3, 2, 1):
        held = ledger.reserve(label=f"r{runs}", sample_rate=0.1, steps=20, target_epsilon=3.0, runs=runs)
        sigmas.append(held.noise_multiplier)
        ledger.settle(held, steps=20)
    assert max(sigmas) - min(sigmas) < 0.05  # the same noise every round (Opacus' 0.01 search tolerance)
    assert 2.9 < ledger.spent() <= 3.0
    single = _open(tmp_path / "one.json").reserve(label="x", sample_rate=0.1, steps=20, target_epsilon=3.0)
    assert single.noise_multiplier < sigmas[0]  # spending it all in one round needs less noise
