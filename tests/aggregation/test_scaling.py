"""The computation paths that make the rules scale (issue 25), against the direct ones they replace.

Gram-matrix distances, DnC's top singular vector through the Gram matrix, NNM without the
``[n, n - f, d]`` array, Bulyan's run of values closest to the median, the trimmed mean by
partition: each is compared with the plain numpy computation it replaced, on random inputs.
Then: no rule makes a float64 copy of a float32 stack, and the server's second question to a
filtering rule (``dropped_by`` after ``aggregate``) does not redo the work.
"""

from __future__ import annotations

import importlib
import tracemalloc

import numpy as np
import pytest

from fedrlhf.aggregation import (
    aggregate,
    blocks,
    bulyan,
    dnc_keep,
    dropped_by,
    nnm,
    rule_kwargs,
    trimmed_mean,
)
from fedrlhf.aggregation.base import median_clip_factors, stack
from fedrlhf.aggregation.krum import _mean_closest_to_median, pairwise_sq_distances

# the package exports functions named like these modules (``dnc``), so import the modules by path
dnc_mod = importlib.import_module("fedrlhf.aggregation.dnc")
cosine_mod = importlib.import_module("fedrlhf.aggregation.cosine")


def _clustered(n: int, d: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return offset + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=(n, 1))


def _exact_sq_distances(x: np.ndarray) -> np.ndarray:
    """Row by row, in float64: the computation pairwise_sq_distances used before."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([np.square(x - row).sum(axis=1) for row in x])


# ---------------------------------------------------------------- Gram-matrix distances


@pytest.mark.parametrize(
    ("n", "d", "offset"), [(7, 5, 0.0), (30, 400, 0.0), (25, 300, 1e4), (12, 3000, -50.0)]
)
def test_gram_distances_equal_the_row_by_row_ones(n: int, d: int, offset: float) -> None:
    """Centred on the coordinate median, a large common offset (1e4 x the spread) costs no precision."""
    x = _clustered(n, d, seed=n, offset=offset)
    exact = _exact_sq_distances(x)
    np.testing.assert_allclose(pairwise_sq_distances(x), exact, rtol=1e-9, atol=1e-9 * exact.max())
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(
        pairwise_sq_distances(stack(list(x32), rule="t")), _exact_sq_distances(x32), rtol=1e-9
    )


def test_gram_distances_in_blocks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clustered(9, 1000, seed=1).astype(np.float32)
    whole = pairwise_sq_distances(x)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 8 * 9 * 7)  # 7 columns a block
    np.testing.assert_allclose(pairwise_sq_distances(x), whole, rtol=1e-12)


def test_gram_distances_are_exact_for_duplicates_and_finite_at_any_scale() -> None:
    x = _clustered(8, 50, seed=2)
    x[5] = x[1]
    x[7] = x[1]
    dist = pairwise_sq_distances(x)
    assert dist[1, 5] == dist[5, 7] == dist[1, 7] == 0.0
    assert np.array_equal(dist, dist.T) and np.all(np.diag(dist) == 0)
    big, s = blocks.sq_distances(x * 2.0**1000)  # true distances overflow float64
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big * (s / 2.0**1000) ** 2, dist, rtol=1e-12, atol=1e-12 * dist.max())


# ---------------------------------------------------------------- DnC through the Gram matrix


def _svd_scores(x: np.ndarray, coords: np.ndarray, clip: bool) -> np.ndarray:
    """DnC's score as computed before: a full SVD of the centred, clipped subsample."""
    x = np.asarray(x, dtype=np.float64)
    if clip:
        x = x * median_clip_factors(x)[:, None]
    sub = x[:, coords]
    centred = sub - sub.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


@pytest.mark.parametrize(("n", "d", "share"), [(10, 2000, 0.2), (12, 30, 0.2), (40, 100, 0.5), (15, 15, 1.0)])
@pytest.mark.parametrize("clip", [True, False])
def test_dnc_gram_scores_equal_the_svd_ones(n: int, d: int, share: float, clip: bool) -> None:
    """Both sides of the Gram path: more sampled coordinates than updates (n x n), and fewer (b x b)."""
    x = _clustered(n, d, seed=d)
    x[: n // 4] += 3.0 * np.random.default_rng(0).normal(size=d)  # a coalition with a direction
    rng = np.random.default_rng(7)
    coords = np.sort(rng.choice(d, size=max(1, int(np.ceil(share * d))), replace=False))
    factors = median_clip_factors(x) if clip else np.ones(n)
    ours = dnc_mod._scores(x, coords, factors, blocks.pow2_scale(1.0))
    ref = _svd_scores(x, coords, clip)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * ref.max())


def test_dnc_keeps_what_the_svd_version_keeps() -> None:
    for seed in range(5):
        x = _clustered(20, 500, seed=seed)
        x[:4] += 2.0 * np.random.default_rng(seed).normal(size=500)
        rng = np.random.default_rng(seed)
        total = np.zeros(20)
        for _ in range(5):
            s = _svd_scores(x, np.sort(rng.choice(500, size=100, replace=False)), clip=True)
            total += s / s.max()
        want = np.sort(np.argsort(total)[:16])
        assert dnc_keep(list(x), num_malicious=4, seed=seed).tolist() == want.tolist()


# ---------------------------------------------------------------- NNM, Bulyan, trimmed mean


def _naive_nnm(x: np.ndarray, f: int) -> np.ndarray:
    dist = _exact_sq_distances(x)
    np.fill_diagonal(dist, -1.0)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, : len(x) - f]
    return np.asarray(x, dtype=np.float64)[nearest].mean(axis=1)


@pytest.mark.parametrize(("n", "f", "d"), [(6, 2, 4), (15, 3, 200), (31, 7, 1000)])
def test_nnm_blocked_equals_the_naive_one(n: int, f: int, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clustered(n, d, seed=f)
    x[:f] += 20.0  # attackers far off
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 8 * n * 33)  # 33 columns a block
    mixed, _ = nnm(list(x), num_malicious=f)
    np.testing.assert_allclose(mixed, _naive_nnm(x, f), rtol=1e-12, atol=1e-12)
    mixed32, _ = nnm(list(x.astype(np.float32)), num_malicious=f)
    assert mixed32.dtype == np.float32
    np.testing.assert_allclose(mixed32, _naive_nnm(x.astype(np.float32), f), rtol=1e-6, atol=1e-6)


def _lexsort_bulyan_step2(sel: np.ndarray, beta: int) -> np.ndarray:
    """Bulyan's coordinate step as computed before: lexsort by (distance to median, value)."""
    gap = np.abs(sel - np.median(sel, axis=0))
    order = np.lexsort((sel, gap), axis=0)[:beta]
    return np.take_along_axis(sel, order, axis=0).mean(axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_bulyan_run_closest_to_the_median_equals_the_lexsort(seed: int) -> None:
    """Integer values: ties in distance to the median on both sides, and repeated values."""
    rng = np.random.default_rng(seed)
    for theta, beta in [(5, 1), (7, 3), (8, 4), (11, 3), (12, 12), (9, 8)]:
        sel = rng.integers(-4, 5, size=(theta, 300)).astype(np.float64)
        ours = _mean_closest_to_median(sel, np.arange(theta), beta)
        np.testing.assert_allclose(ours, _lexsort_bulyan_step2(sel, beta), rtol=1e-12, atol=1e-12)


def test_bulyan_and_trimmed_mean_on_float32_equal_float64_computation() -> None:
    x = _clustered(23, 300, seed=3).astype(np.float32)
    ref = bulyan(list(x.astype(np.float64)), num_malicious=4)
    np.testing.assert_allclose(bulyan(list(x), num_malicious=4), ref, rtol=1e-6)
    k = 5
    want = np.sort(x.astype(np.float64), axis=0)[k : 23 - k].mean(axis=0)
    np.testing.assert_allclose(trimmed_mean(list(x), num_trim=k), want, rtol=1e-6)


# ---------------------------------------------------------------- memory: no float64 stack


RULE_PARAMS = {
    "mean": {},
    "coordinate_median": {"num_malicious": 2},
    "trimmed_mean": {"num_trim": 2},
    "krum": {"num_malicious": 2},
    "multi_krum": {"num_malicious": 2, "num_selected": 20},
    "bulyan": {"num_malicious": 2},
    "geometric_median": {"num_malicious": 2},
    "centered_clipping": {"tau_scale": 1.0, "iterations": 3, "num_malicious": 2},
    "norm_bound": {"max_norm": 1.0},
    "dnc": {"num_malicious": 2},
    "cosine_filter": {"num_malicious": 2},
    "cosine_two_sided": {"num_malicious": 2},
}


@pytest.mark.parametrize("name", sorted(RULE_PARAMS))
def test_no_rule_makes_a_float64_copy_of_a_float32_stack(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak extra memory on a float32 ``[n, d]`` array: blocks of 1 MB and small ``[n, n]`` matrices.

    A float64 copy of the stack would be 2x the input (32 MB here); before, most rules made two.
    """
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2**20)
    x = _clustered(25, 160_000, seed=4).astype(np.float32)  # 16 MB
    before = x.copy()
    tracemalloc.start()
    try:
        aggregate(name, x, **RULE_PARAMS[name])  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * x.nbytes, f"{name}: peak {peak / x.nbytes:.2f}x the input"
    np.testing.assert_array_equal(x, before)  # the stack is the caller's array: left as it was


def test_nnm_output_is_the_only_stack_sized_array(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2**20)
    x = _clustered(25, 160_000, seed=5).astype(np.float32)
    tracemalloc.start()
    try:
        mixed, _ = nnm(x, num_malicious=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mixed.dtype == np.float32 and peak < 1.5 * x.nbytes  # the output (1x) and 1 MB blocks


# ---------------------------------------------------------------- one computation per round


@pytest.mark.parametrize(
    ("name", "module"), [("dnc", dnc_mod), ("cosine_filter", cosine_mod), ("cosine_two_sided", cosine_mod)]
)
def test_dropped_by_after_aggregate_reuses_the_filtering(
    name: str, module: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server calls aggregate, then dropped_by with the same updates and parameters."""

    class Robust:
        num_malicious, trim_fraction, clip_norm, outlier_z = 2, 0.2, 1.0, 0.0

    impl = "_two_sided_keep" if name == "cosine_two_sided" else "_keep"
    real = getattr(module, impl)
    calls: list[int] = []

    def counted(*args: object) -> np.ndarray:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(module, impl, counted)
    x = list(_clustered(11, 300, seed=6))
    params = rule_kwargs(name, Robust(), len(x), np.random.default_rng(3))
    out = aggregate(name, x, **params)
    dropped = dropped_by(name, x, **params)
    assert len(calls) == 1 and dropped is not None and len(dropped) >= 2
    kept = [i for i in range(len(x)) if i not in dropped]
    assert not np.allclose(out, np.mean(x, axis=0)) and len(kept) == len(x) - len(dropped)
    aggregate(name, x, **params)  # the rule itself always computes: a repeat costs what a round does
    assert len(calls) == 2
    x[3][7] += 1.0  # changed in place: the content is the key, not the object
    assert dropped_by(name, x, **params) is not None and len(calls) == 3
    assert dropped_by(name, list(np.array(x)), **params) is not None and len(calls) == 3  # equal content


def test_the_rows_of_one_matrix_are_not_copied_again() -> None:
    """A pre-aggregation hands the rule ``list(mixed)``: the rule uses ``mixed`` itself."""
    mixed = _clustered(6, 50, seed=9).astype(np.float32)
    assert stack(list(mixed), rule="t") is mixed
    assert stack(list(mixed[::-1]), rule="t") is not mixed  # other order: a new stack
    assert stack(list(mixed[:5]), rule="t") is not mixed  # some rows only
    assert stack([*list(mixed[:5]), mixed[5].copy()], rule="t") is not mixed
    np.testing.assert_array_equal(stack(list(mixed[::-1]), rule="t"), mixed[::-1])
