"""compose_epsilon: the RDP fast path (cached per-step RDP) gives Opacus's own epsilon, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrlhf.privacy.accounting import _rdp_per_step, compose_epsilon


def _opacus(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    for sigma, q, steps in history:  # one accountant stepped through every run, as DP-SGD does
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_rdp_composition_is_opacus_exactly() -> None:
    rng = np.random.default_rng(0)
    history = [
        (float(rng.uniform(0.6, 3.0)), float(rng.choice([1.0, 0.0625, 0.3])), int(rng.integers(1, 40)))
        for _ in range(8)
    ]
    history.insert(3, history[2])  # a repeated run merges, as Opacus merges consecutive steps
    for n in range(1, len(history) + 1):
        assert compose_epsilon(history[:n], accountant="rdp", delta=1e-5) == _opacus(history[:n], 1e-5)


def test_the_cache_is_read_only_and_reused() -> None:
    first = _rdp_per_step(0.5, 1.1)
    assert _rdp_per_step(0.5, 1.1) is first and not first.flags.writeable
    compose_epsilon([(1.1, 0.5, 10)], accountant="rdp", delta=1e-5)
    np.testing.assert_array_equal(_rdp_per_step(0.5, 1.1), first)  # "* steps" made a copy
