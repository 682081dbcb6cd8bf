"""benchmarks/robust_worst_case.py: plain and secure (group means) worst case, at smoke size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.benchmarks.helpers import load, read_json, run


def test_secure_view_refuses_a_group_mean_above_the_clip_bound_as_proof() -> None:
    """A boosted update spoils its group's mean beyond the clip bound: that mean is refused and
    counts against f, so the median of the other 6 means runs with f = 2 instead of 3."""
    bench = load("robust_worst_case")
    cfg = bench.defence("coordinate_median", "none", 2, 3, clip=1.0, groups=7)
    rng = np.random.default_rng(0)
    honest = [u / np.linalg.norm(u) * 0.9 for u in rng.normal(size=(14, bench.D))]
    boosted = 50 * honest[0]
    view = bench.secure_server(cfg, 7, np.random.default_rng(1))
    agg = view([*honest, boosted])
    split = bench.make_groups(
        list(range(bench.N)), min_group_size=2, num_groups=7, rng=np.random.default_rng(1)
    )
    x = np.stack([*honest, boosted])
    means = [x[g].mean(axis=0) for g in split if bench.N - 1 not in g]
    np.testing.assert_allclose(agg, np.median(np.stack(means), axis=0), rtol=1e-5, atol=1e-6)


def test_quick_secure_run_refuses_a_third_of_attackers_and_ranks_the_rest(tmp_path: Path) -> None:
    out = run(
        "robust_worst_case.py", "--quick", "--client-clip", "1.0", "--groups", "7", "--out", str(tmp_path)
    )
    data = read_json(tmp_path / "worst_case-clip1-groups7.json")
    assert data["meta"]["groups"] == 7 and data["meta"]["client_clip"] == 1.0
    rows = data["rows"]
    # f = 5 needs 2f + 1 = 11 group means: every robust rule is refused, the mean still runs
    for r in rows:
        if r["f"] == 5 and r["rule"] != "mean":
            assert "error" in r, r
    assert all("worst" in r for r in rows if r["rule"] == "mean" and r["pre"] != "bucketing")
    # bucketing group means is refused in secure mode; at f = 3 the rules over 7 means run
    assert all("error" in r for r in rows if r["pre"] == "bucketing")
    ran = [r for r in rows if r["f"] == 3 and r["pre"] == "none" and "worst" in r]
    assert {r["rule"] for r in ran} >= {"mean", "coordinate_median", "centered_clipping", "cosine_filter"}
    for r in ran:
        assert 0 <= r["clean"] < r["worst"] and r["worst_attack"] in r["attacks"]
    assert "secure mode, the rule over 7 group means" in out


def test_quick_plain_run_with_client_clipping_rejects_boosted_updates(tmp_path: Path) -> None:
    """Clients clip at their median norm: a 4x sign flip is proof and rejected, so even FedAvg's worst
    case stays bounded (without clipping it is 6.1, the README's table)."""
    run("robust_worst_case.py", "--quick", "--client-clip", "1.0", "--out", str(tmp_path))
    rows = read_json(tmp_path / "worst_case-clip1.json")["rows"]
    mean = next(r for r in rows if (r["cosine"], r["f"], r["pre"], r["rule"]) == (0.03, 3, "none", "mean"))
    assert mean["worst"] < 1.5 and mean["attacks"]["sign_flip x4"] < 0.5
    assert mean["clean"] < 0.05  # clipping at the median norm shrinks half the honest updates a little
