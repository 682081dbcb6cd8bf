"""Hypothesis properties of the robust rules: order invariance and bounded output under attack."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrlhf.aggregation import (
    RULES,
    bulyan,
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum_select,
    norm_bound,
    trimmed_mean,
)
from fedrlhf.aggregation.validate import aggregate_problem

PROFILE = settings(max_examples=60, deadline=None)

moderate = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)
honest_el = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)
arbitrary = st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False)
far = st.floats(1e4, 1e6, allow_nan=False).flatmap(lambda v: st.sampled_from([v, -v]))


def _params(name: str, n: int) -> dict[str, object] | None:
    """Valid parameters of rule ``name`` for ``n`` updates, or None if it cannot run."""
    f = max(0, (n - 3) // 4)
    table: dict[str, dict[str, object]] = {
        "trimmed_mean": {"beta": 0.2},
        "krum": {"num_malicious": (n - 3) // 2},
        "multi_krum": {"num_malicious": (n - 3) // 2, "num_selected": 2},
        "bulyan": {"num_malicious": f},
        "centered_clipping": {"tau": 5.0, "iterations": 3},
        "norm_bound": {"max_norm": 20.0},
        "dnc": {"num_malicious": (n - 1) // 4, "iterations": 2, "subsample_fraction": 1.0},
        "cosine_filter": {"num_malicious": (n - 1) // 4},
        "cosine_two_sided": {"num_malicious": (n - 1) // 4},
    }
    if name in ("krum", "multi_krum") and n < 3:
        return None
    if name == "multi_krum" and n - (n - 3) // 2 < 2:
        return None
    if name == "bulyan" and n < 3:
        return None
    return table.get(name, {})


@st.composite
def permuted_updates(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[int]]:
    n = draw(st.integers(1, 11))
    d = draw(st.integers(1, 5))
    x = draw(hnp.arrays(np.float64, (n, d), elements=moderate))
    w = draw(hnp.arrays(np.float64, (n,), elements=st.floats(0.5, 100.0)))
    perm = draw(st.permutations(range(n)))
    return x, w, list(perm)


@PROFILE
@given(data=permuted_updates(), name=st.sampled_from(sorted(RULES)))
def test_every_rule_is_order_invariant(data: tuple[np.ndarray, np.ndarray, list[int]], name: str) -> None:
    x, w, perm = data
    params = _params(name, len(x))
    if params is None:
        return
    a = RULES[name](list(x), list(w), **params)
    b = RULES[name](list(x[perm]), list(w[perm]), **params)
    scale = 1.0 + float(np.abs(x).max())
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * scale)


@st.composite
def attacked(
    draw: st.DrawFn, attacker: st.SearchStrategy[float], min_n: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(honest [h, d], attackers [f, d])`` with ``f < h``; attacker rows drawn from ``attacker``."""
    d = draw(st.integers(1, 4))
    f = draw(st.integers(0, 3))
    h = draw(st.integers(max(f + 1, min_n - f), f + 8))
    honest = draw(hnp.arrays(np.float64, (h, d), elements=honest_el))
    bad = draw(hnp.arrays(np.float64, (f, d), elements=attacker))
    return honest, bad


def _mixed(honest: np.ndarray, bad: np.ndarray, seed: int) -> list[np.ndarray]:
    x = np.concatenate([honest, bad])
    return list(x[np.random.default_rng(seed).permutation(len(x))])


def _within(out: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    slack = 1e-9 * (1.0 + np.abs(lo) + np.abs(hi))
    assert np.all(out >= lo - slack) and np.all(out <= hi + slack), (out, lo, hi)


@PROFILE
@given(case=attacked(arbitrary), seed=st.integers(0, 2**16))
def test_median_stays_in_honest_range(case: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    honest, bad = case  # f < h, so fewer than half are malicious
    out = coordinate_median(_mixed(honest, bad, seed))
    _within(out, honest.min(axis=0), honest.max(axis=0))


@PROFILE
@given(case=attacked(arbitrary), seed=st.integers(0, 2**16), extra=st.integers(0, 2))
def test_trimmed_mean_stays_in_honest_range(
    case: tuple[np.ndarray, np.ndarray], seed: int, extra: int
) -> None:
    honest, bad = case
    n, f = len(honest) + len(bad), len(bad)
    k = min(f + extra, (n - 1) // 2)  # any num_trim >= f works
    out = trimmed_mean(_mixed(honest, bad, seed), num_trim=k)
    _within(out, honest.min(axis=0), honest.max(axis=0))


@st.composite
def bulyan_case(draw: st.DrawFn, attacker: st.SearchStrategy[float]) -> tuple[np.ndarray, np.ndarray]:
    d = draw(st.integers(1, 4))
    f = draw(st.integers(0, 2))
    n = draw(st.integers(4 * f + 3, 4 * f + 6))
    honest = draw(hnp.arrays(np.float64, (n - f, d), elements=honest_el))
    bad = draw(hnp.arrays(np.float64, (f, d), elements=attacker))
    return honest, bad


@PROFILE
@given(case=bulyan_case(far), seed=st.integers(0, 2**16), sel=st.sampled_from(["iterative", "one_shot"]))
def test_bulyan_stays_in_honest_range_when_attackers_are_far(
    case: tuple[np.ndarray, np.ndarray], seed: int, sel: str
) -> None:
    honest, bad = case
    out = bulyan(_mixed(honest, bad, seed), num_malicious=len(bad), selection=sel)
    _within(out, honest.min(axis=0), honest.max(axis=0))


@PROFILE
@given(
    case=bulyan_case(arbitrary), seed=st.integers(0, 2**16), sel=st.sampled_from(["iterative", "one_shot"])
)
def test_bulyan_is_bounded_by_widened_honest_range(
    case: tuple[np.ndarray, np.ndarray], seed: int, sel: str
) -> None:
    """Arbitrary attackers can pull Bulyan past the honest range, but by at most its width.

    (An attacker just outside the range can be among the ``beta`` values
    closest to the median; every such value is closer to the median than
    some honest value, hence within one honest width of the range.)
    """
    honest, bad = case
    out = bulyan(_mixed(honest, bad, seed), num_malicious=len(bad), selection=sel)
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    _within(out, lo - (hi - lo), hi + (hi - lo))


def test_bulyan_can_leave_honest_range_with_a_near_attacker() -> None:
    """Why the bound above is widened: f=1, n=9, one coordinate, honest max 1.0."""
    honest = [0.0, 0.5, 0.9, 0.99, 1.0, 1.0, 1.0, 1.0]
    x = [np.array([v]) for v in [*honest, 1.0005]]
    out = bulyan(x, num_malicious=1, selection="iterative")
    assert out[0] > max(honest)  # (1 + 1 + 1 + 1 + 1.0005) / 5


@PROFILE
@given(
    d=st.integers(1, 4),
    f=st.integers(0, 3),
    spare=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_krum_picks_an_honest_update_when_attackers_are_far(
    d: int, f: int, spare: int, seed: int, data: st.DataObject
) -> None:
    n = 2 * f + 3 + spare
    honest = data.draw(hnp.arrays(np.float64, (n - f, d), elements=st.floats(-1.0, 1.0)))
    bad = data.draw(hnp.arrays(np.float64, (f, d), elements=far))
    updates = _mixed(honest, bad, seed)
    chosen = krum_select(updates, num_malicious=f, num_selected=1)[0]
    assert np.all(np.abs(updates[chosen]) <= 1.0)


@PROFILE
@given(case=attacked(st.floats(-1e6, 1e6, allow_nan=False), min_n=3), seed=st.integers(0, 2**16))
def test_geometric_median_breakdown(case: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    """With a fraction a < 1/2 arbitrary, ||GM - c|| <= r (1 - a) / sqrt(1 - 2a) (Minsker 2015)."""
    honest, bad = case
    n, f = len(honest) + len(bad), len(bad)
    c = honest.mean(axis=0)
    r = float(np.linalg.norm(honest - c, axis=1).max())
    a = f / n
    bound = r * (1 - a) / np.sqrt(1 - 2 * a)
    out = geometric_median(_mixed(honest, bad, seed))
    assert np.linalg.norm(out - c) <= 1.001 * bound + 1e-5


@PROFILE
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=arbitrary),
    bound=st.floats(1e-3, 1e3),
)
def test_norm_bound_output_is_within_bound(x: np.ndarray, bound: float) -> None:
    out = norm_bound(list(x), max_norm=bound)
    assert np.linalg.norm(out) <= bound * (1 + 1e-9)


@PROFILE
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=arbitrary),
    tau=st.floats(1e-3, 1e3),
    iterations=st.integers(1, 4),
)
def test_centered_clipping_moves_at_most_tau_per_iteration(
    x: np.ndarray, tau: float, iterations: int
) -> None:
    out = centered_clipping(list(x), tau=tau, iterations=iterations, center=np.zeros(x.shape[1]))
    assert np.linalg.norm(out) <= tau * iterations * (1 + 1e-9)


@PROFILE
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=arbitrary),
    center=st.floats(-1e12, 1e12, allow_nan=False),
    iterations=st.integers(1, 4),
)
def test_centered_clipping_around_any_centre_passes_the_servers_bound_check(
    x: np.ndarray, center: float, iterations: int
) -> None:
    """The centre is scaled to at most the median update norm, so the output (a convex combination
    of it and the updates) is never refused as larger than the updates allow."""
    c = np.full(x.shape[1], center)
    out = centered_clipping(list(x), tau_scale=1.0, iterations=iterations, center=c)
    assert aggregate_problem(out, list(x)) is None
