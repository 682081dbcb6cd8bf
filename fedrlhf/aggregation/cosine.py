"""Cosine filter: drop the updates that point the same way as a coalition, average the rest.

Honest updates of a small LoRA over private, mostly different data are close to
orthogonal in parameter space (measured on MiniLM LoRA deltas, 332 161
coordinates: pairwise cosine 0.003 +- 0.03 on HH pairs). Attackers who pursue
one goal share a direction whatever their data: backdoor clients that trained
on the same trigger (cosine 0.14-0.23 with each other on HH), sybil clones,
ALIE / IPM / min-max forgeries (identical vectors, cosine 1). The score of an
update is the mean of its ``num_malicious - 1`` highest cosine similarities to
the other updates (its highest one when ``num_malicious = 1``): how strongly it
belongs to a group of ``num_malicious`` that agree. This is the signal of
FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020: the maximum pairwise cosine)
and of FLAME's clustering (Nguyen et al., USENIX Security 2022: cosine
distances); FoolsGold's logit weighting only acts near-identical sybils
(cosine > ~0.9) and FLAME's HDBSCAN is not in the stack, so fedrlhf drops the
``num_malicious`` highest scores instead, as DnC does with its own score.
With ``num_malicious = 1`` it drops no update that carries a direction: one attacker
has no coalition, and the two updates of the most aligned pair share their score, a
tie at the cut, which is kept (the rule cannot tell which of the two to blame).

No library has this rule; it is written by hand. It has no worst-case
guarantee: attackers who decorrelate their updates (noise, or each its own
direction) are not filtered, which is why the updates are first clipped to the
median norm (FLAME's adaptive clipping), so such an update weighs no more than
an honest one.

:func:`cosine_two_sided` adds the other side. Attackers who each push against
the honest direction on their own (label flippers, sign flippers) share no
direction with each other, but each points slightly against everybody else:
on the recorded updates of an HH label-flip round the cosine of an update to
the mean of the others was 0.003 +- 0.016 for honest clients and -0.023 +-
0.002 for the flippers (``benchmarks/filter_probe.py --attack label_flip``).
After dropping the coalition, the two-sided filter also drops the
``num_malicious`` updates that agree least with the mean of the rest.

Empty updates (norm 0, or below ``1e-6`` times the round's median norm) carry no
direction, so their cosine says nothing; scored 0 they looked "neutral" and passed,
pulling the mean towards zero. They now score :data:`EMPTY_SCORE`, above any cosine:
they are the first of the ``num_malicious`` dropped (an attacker sending zeros uses up
its own slot), and any beyond ``num_malicious`` are left out too (dropping them loses
nothing). Both filters need an honest majority, more than ``2 * num_malicious`` updates.

``outlier_z`` (``robust.outlier_z``) gates both filters: only scores more than that many
robust standard deviations (1.4826 x the median absolute deviation) beyond the round's median
are dropped, at most ``num_malicious`` per side. Ungated, a clean round loses the
``num_malicious`` honest updates that agree most with the others, the ones carrying the most
signal (on HH: 1.5 points of clean accuracy, none gated). The gate needs most scores to be
honest: over 7 secure group means, about 3 of them holding an attacker, the median and MAD
break down and the gated filter keeps most tainted means (``benchmarks/filter_probe.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fedrlhf.aggregation.base import (
    AggregationError,
    check_majority,
    check_weights,
    keep_all_but_highest,
    kept_mean,
    median_clip_factors,
    nonnegative_int,
    remembered,
    stack,
)
from fedrlhf.aggregation.blocks import gram, pow2_scale, row_absmax, row_blocks, row_norms, weighted_sum

__all__ = [
    "EMPTY_SCORE",
    "agreement_scores",
    "coalition_scores",
    "cosine_filter",
    "cosine_keep",
    "cosine_two_sided",
    "cosine_two_sided_keep",
    "empty_updates",
]

#: :func:`coalition_scores` of an empty update: above any cosine, so it is dropped first.
EMPTY_SCORE = 2.0
_EMPTY = 1e-6  # an update below this many times the median norm is empty


def _empty(norms: np.ndarray) -> np.ndarray:
    return (norms == 0) | (norms < _EMPTY * float(np.median(norms)))


def empty_updates(updates: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Boolean mask of the updates that carry no direction: norm 0 or below ``1e-6 x`` the median norm."""
    return _empty(row_norms(stack(updates, rule="cosine_filter")))


def _coalition(x: np.ndarray, f: int) -> np.ndarray:
    """:func:`coalition_scores` on the checked stack ``x``.

    The cosines come from the Gram matrix of the rows, each first divided by a power of two
    near its largest value (exact: a cosine does not change, and nothing overflows).
    """
    n = x.shape[0]
    norms = row_norms(x)
    empty = _empty(norms)
    if n < 2:
        return np.where(empty, EMPTY_SCORE, 0.0)
    scale = np.array([pow2_scale(t) for t in row_absmax(x)])
    g = gram(x, scale=scale)
    unit = np.divide(1.0, norms / scale, out=np.zeros(n), where=~empty)  # 1 / ||row / scale||
    c = g * unit[:, None] * unit[None, :]
    np.fill_diagonal(c, -np.inf)
    m = min(max(1, f - 1), n - 1)
    score = np.sort(c, axis=1)[:, -m:].mean(axis=1)
    score[empty] = EMPTY_SCORE
    return score


def coalition_scores(updates: Sequence[np.ndarray] | np.ndarray, *, num_malicious: int) -> np.ndarray:
    """Per update: the mean of its ``max(1, num_malicious - 1)`` highest cosines to the others.

    An empty update (:func:`empty_updates`) scores :data:`EMPTY_SCORE`; to the others it
    counts as cosine 0.
    """
    x = stack(updates, rule="cosine_filter")
    return _coalition(x, nonnegative_int(num_malicious, name="num_malicious", rule="cosine_filter"))


def _stand_out(score: np.ndarray, z: float) -> np.ndarray:
    """``score`` with every value that is not a high outlier lowered below all the others.

    An outlier lies more than ``z`` robust standard deviations (1.4826 x the median absolute
    deviation) above the median; ``z = 0`` keeps every score as it is (all may be dropped).
    Fed to :func:`keep_all_but_highest`, only outliers can then be among the dropped.
    """
    if z <= 0 or score.size == 0:
        return score
    finite = score[score < EMPTY_SCORE]
    med = float(np.median(finite)) if finite.size else 0.0
    spread = 1.4826 * float(np.median(np.abs(finite - med))) if finite.size else 0.0
    out = score > med + z * spread
    return np.where(out, score, float(score.min()) - 1.0)


def _keep_all_but_outliers(score: np.ndarray, f: int, z: float, *, rule: str) -> np.ndarray:
    """Indices kept when up to ``f`` of the highest scores go; with ``z > 0``, only high outliers go."""
    score = _stand_out(score, z)
    drop = min(f, int(np.count_nonzero(score > score.min()))) if z > 0 else f
    return keep_all_but_highest(score, drop, rule=rule, what="num_malicious")


def _copy_rank(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Per row: how many identical rows come before it (0 for the first of its kind), taking
    rows in order of weight ``w`` (lowest first), then index: the copy kept is the lightest.

    Rows are told apart by a digest of their bytes (no copy of the stack), and a match is
    confirmed element by element.
    """
    firsts: dict[bytes, list[int]] = {}  # digest -> the first row of each content with it
    copies: dict[int, int] = {}  # first row -> how many rows so far have its content
    rank = np.zeros(x.shape[0])
    order = range(x.shape[0]) if w is None else np.argsort(w, kind="stable")
    for i in order:
        row = np.ascontiguousarray(x[i])  # a row of a C-ordered stack: a view
        kinds = firsts.setdefault(hashlib.blake2b(row.data.cast("B"), digest_size=16).digest(), [])
        same = next((j for j in kinds if np.array_equal(x[j], row)), None)
        if same is None:
            kinds.append(i)
            copies[i] = 1
        else:
            rank[i] = copies[same]
            copies[same] += 1
    return rank


def _keep(x: np.ndarray, f: int, z: float = 0.0, w: np.ndarray | None = None) -> np.ndarray:
    """:func:`cosine_keep` on the checked stack ``x``, ``f`` checked.

    Ties at the cut are kept (the result must not depend on the order of the updates), except
    among identical updates: any one of them gives the same mean, so each copy after the first
    scores a hair higher and goes first. Without that, f attackers copying one honest update
    (Mimic, Karimireddy et al. 2022) made f + 1 tied scores at the cut, all kept: the copied
    update weighed f + 1 times (HH, seed 0: -6.0 points).
    """
    score = _coalition(x, f)
    score = score + _copy_rank(x, w) * 1e-6 * max(1.0, float(np.abs(score).max()))
    keep = _keep_all_but_outliers(score, f, z, rule="cosine_filter")
    empty = _empty(row_norms(x))
    # all empty means all exactly 0 (else the median norm is positive): their mean, 0, is the answer
    return keep if empty.all() else keep[~empty[keep]]


def _outlier_z(z: float, rule: str) -> float:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not np.isfinite(z) or z < 0:
        raise AggregationError(f"{rule}: outlier_z must be a finite number >= 0, got {z!r}.")
    return float(z)


def _checked_keep(
    x: np.ndarray, num_malicious: int, outlier_z: float, *, reuse: bool, w: np.ndarray | None = None
) -> np.ndarray:
    f = check_majority(x.shape[0], num_malicious, rule="cosine_filter")
    z = _outlier_z(outlier_z, "cosine_filter")
    return remembered("cosine_filter", x, {"f": f, "z": z}, lambda: _keep(x, f, z, w), reuse=reuse)


def cosine_keep(
    updates: Sequence[np.ndarray] | np.ndarray, *, num_malicious: int, outlier_z: float = 0.0
) -> np.ndarray:
    """Indices (sorted) of the updates kept: all but the ``num_malicious`` highest scores, and no empty one.

    With ``outlier_z > 0`` only scores more than ``outlier_z`` robust standard deviations
    above the round's median are among the dropped (at most ``num_malicious`` of them).
    Needs more than ``2 * num_malicious`` updates. Some update is always kept: when every one
    is empty they are all zero, and all but ``num_malicious`` of them are kept. A second call
    on equal updates (the server's ``dropped_by`` after ``aggregate``) reuses the first's answer.
    """
    return _checked_keep(stack(updates, rule="cosine_filter"), num_malicious, outlier_z, reuse=True)


def cosine_filter(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    num_malicious: int,
    outlier_z: float = 0.0,
    clip_median: bool = True,
) -> np.ndarray:
    """Drop the ``num_malicious`` updates most aligned with others (:func:`coalition_scores`), then average.

    Ties at the cut are kept, so the result does not depend on the order of the
    updates. ``clip_median`` (default) scales every update to at most the median
    update norm before averaging; the output norm is then at most that median.
    With ``num_malicious = 0`` the rule is the (clipped) mean.

    ``outlier_z`` (0 = off) drops only the scores that stand out: more than ``outlier_z``
    robust standard deviations (1.4826 x the median absolute deviation of the round's
    scores) above their median, at most ``num_malicious`` of them. A clean round then
    drops (almost) nothing instead of the ``num_malicious`` honest updates that agree most
    with the others, which are the ones carrying the most signal.
    """
    x = stack(updates, rule="cosine_filter")
    w = check_weights(weights, x.shape[0], rule="cosine_filter")
    keep = _checked_keep(x, num_malicious, outlier_z, reuse=False, w=w)
    return kept_mean(x, w, keep, clip_median=clip_median, rule="cosine_filter")


def _agreement(x: np.ndarray, rows: np.ndarray, clip_median: bool) -> np.ndarray:
    """:func:`agreement_scores` of the rows ``rows`` of the stack ``x``, a block of rows at a time."""
    n = len(rows)
    if n < 2:
        return np.zeros(n)
    factors = median_clip_factors(x, rows) if clip_median else np.ones(n)
    total = weighted_sum(x, factors, rows)
    dots, denom = np.empty(n), np.empty(n)
    for span, b in row_blocks(x, rows):
        b *= factors[span, None]
        others = (total - b) / (n - 1)
        dots[span] = np.einsum("ij,ij->i", b, others)
        denom[span] = np.linalg.norm(b, axis=1) * np.linalg.norm(others, axis=1)
    return np.divide(dots, denom, out=np.zeros(n), where=denom > 0)


def agreement_scores(updates: Sequence[np.ndarray], *, clip_median: bool = True) -> np.ndarray:
    """Per update: its cosine to the mean of the other updates, all first clipped to the median norm.

    The clipping (``clip_median``, on by default) keeps one large update (a scaled sign
    flip) from turning the others' mean its way. An update or a mean of norm 0 scores 0.
    """
    x = stack(updates, rule="cosine_two_sided")
    return _agreement(x, np.arange(x.shape[0]), clip_median)


def _two_sided_keep(x: np.ndarray, f: int, z: float = 0.0, w: np.ndarray | None = None) -> np.ndarray:
    first = _keep(x, f, z, w)  # n > 2f checked by the caller
    # Fewer than f + 1 left only when most updates are empty (norm 0): the median norm is then 0
    # and the clipped output 0 whatever is kept, so keep one rather than fail.
    dissent = min(f, len(first) - 1)
    agree = _agreement(x, first, clip_median=True)
    second = _keep_all_but_outliers(-agree, dissent, z, rule="cosine_two_sided")
    return first[second]


def _checked_two_sided_keep(
    x: np.ndarray, num_malicious: int, outlier_z: float, *, reuse: bool, w: np.ndarray | None = None
) -> np.ndarray:
    f = nonnegative_int(num_malicious, name="num_malicious", rule="cosine_two_sided")
    z = _outlier_z(outlier_z, "cosine_two_sided")
    if x.shape[0] <= 2 * f:
        raise AggregationError(
            f"cosine_two_sided: dropping 2 * num_malicious = {2 * f} of {x.shape[0]} updates "
            "leaves none; sample more clients or lower num_malicious."
        )
    return remembered(
        "cosine_two_sided", x, {"f": f, "z": z}, lambda: _two_sided_keep(x, f, z, w), reuse=reuse
    )


def cosine_two_sided_keep(
    updates: Sequence[np.ndarray], *, num_malicious: int, outlier_z: float = 0.0
) -> np.ndarray:
    """Indices (sorted) kept by :func:`cosine_two_sided`: at least ``n - 2 * num_malicious``."""
    return _checked_two_sided_keep(
        stack(updates, rule="cosine_two_sided"), num_malicious, outlier_z, reuse=True
    )


def cosine_two_sided(
    updates: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    num_malicious: int,
    outlier_z: float = 0.0,
    clip_median: bool = True,
) -> np.ndarray:
    """Drop a coalition and the dissenters, then average: the cosine filter from both sides.

    First the ``num_malicious`` updates most aligned with others go, as in
    :func:`cosine_filter`; then, among the rest, the ``num_malicious`` with the lowest
    :func:`agreement_scores` (cosine to the mean of the other kept updates). The kept
    updates (ties at either cut are kept, so order does not matter) are clipped to the
    median norm of all updates (``clip_median``) and averaged with ``weights``. Needs
    more than ``2 * num_malicious`` updates; with ``num_malicious = 0`` it is the
    (clipped) mean. Like the one-sided filter it has no worst-case guarantee, and in a
    clean round it leaves out ``2 * num_malicious`` honest updates, unless ``outlier_z > 0``:
    then each side drops only its outliers (as in :func:`cosine_filter`; on the dissent
    side, agreements more than ``outlier_z`` robust standard deviations below the median).
    """
    x = stack(updates, rule="cosine_two_sided")
    w = check_weights(weights, x.shape[0], rule="cosine_two_sided")
    keep = _checked_two_sided_keep(x, num_malicious, outlier_z, reuse=False, w=w)
    return kept_mean(x, w, keep, clip_median=clip_median, rule="cosine_two_sided")
