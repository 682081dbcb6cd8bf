"""Synthetic cohorts: deterministic, Bradley-Terry labels, perceivable text, clients at rest."""

from __future__ import annotations

import inspect
import itertools
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from fedrlhf.errors import ConfigError
from fedrlhf.feedback import read_feedback
from fedrlhf.simulation._cohort_text import _BENIGN, _HARMFUL, render
from fedrlhf.simulation.cohorts import (
    ARCHETYPES,
    FEATURES,
    SyntheticCohortConfig,
    iter_users,
    make_synthetic_cohort,
    make_user,
    materialize,
    utility_accuracy,
)

SMALL = SyntheticCohortConfig(num_users=40, pairs_per_user=40, test_pairs_per_user=20, seed=3)


@pytest.fixture(scope="module")
def cohort():
    return make_synthetic_cohort(SMALL)


def _same_user(a, b) -> bool:
    return (
        a.train == b.train
        and a.test == b.test
        and np.array_equal(a.weights, b.weights)
        and np.array_equal(a.test_bayes_prob, b.test_bayes_prob)
    )


def test_user_depends_only_on_seed_and_index() -> None:
    big = SyntheticCohortConfig(num_users=10_000, pairs_per_user=40, test_pairs_per_user=20, seed=3)
    assert _same_user(make_user(SMALL, 7), make_user(big, 7))
    assert _same_user(make_user(SMALL, 7), make_user(SMALL, 7))
    other_seed = SyntheticCohortConfig(num_users=40, pairs_per_user=40, test_pairs_per_user=20, seed=4)
    assert make_user(other_seed, 7).train != make_user(SMALL, 7).train
    assert make_user(SMALL, 6).train != make_user(SMALL, 7).train


def test_iter_users_is_lazy_and_matches_make_user() -> None:
    users = iter_users(SyntheticCohortConfig(num_users=10_000, pairs_per_user=2, test_pairs_per_user=1))
    assert inspect.isgenerator(users)
    first = list(itertools.islice(users, 3))
    assert [u.user_id for u in first] == ["user-00000", "user-00001", "user-00002"]
    picked = list(iter_users(SMALL, [5, 2]))
    assert [u.index for u in picked] == [5, 2] and _same_user(picked[1], make_user(SMALL, 2))
    with pytest.raises(ConfigError, match="user index"):
        make_user(SMALL, 40)


def test_labels_follow_bradley_terry(cohort) -> None:
    prob = np.concatenate([np.r_[u.train_bayes_prob, u.test_bayes_prob] for u in cohort.users])
    # the label agrees with the utility ordering as often as E[max(p, 1-p)] predicts
    agree = np.where(prob > 0.5, 1.0, np.where(prob < 0.5, 0.0, 0.5)).mean()
    expected = np.maximum(prob, 1 - prob).mean()
    assert len(prob) == 2400
    assert abs(agree - expected) < 3 * np.sqrt(expected * (1 - expected) / len(prob)) + 0.005
    # calibration: within a band of p, the chosen side is truly preferred about p of the time
    p_a = np.where(prob > 0.5, prob, 1 - prob)
    band = (p_a > 0.7) & (p_a < 0.9)
    assert band.sum() > 200 and abs((prob[band] > 0.5).mean() - p_a[band].mean()) < 0.06


def test_features_and_probabilities_agree(cohort) -> None:
    user = cohort.users[0]
    margin = (user.test_features[:, 0] - user.test_features[:, 1]) @ user.weights
    np.testing.assert_allclose(user.test_bayes_prob, 1 / (1 + np.exp(-SMALL.beta * margin)))
    assert not np.any(np.all(user.test_features[:, 0] == user.test_features[:, 1], axis=1))


def test_bayes_accuracy_is_between_chance_and_one(cohort) -> None:
    overall = cohort.bayes_accuracy()
    assert 0.6 < overall < 0.95
    assert 0.5 < cohort.bayes_accuracy("train") < 1
    by_arch = cohort.bayes_accuracy_by_archetype()
    assert set(by_arch) <= set(ARCHETYPES) and all(0.5 < v < 1 for v in by_arch.values())
    assert cohort.population_accuracy() < overall  # one utility for all loses to per-user truth
    assert utility_accuracy(cohort.users, np.zeros(len(FEATURES))) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="split"):
        cohort.bayes_accuracy("dev")


def test_global_test_concatenates_users(cohort) -> None:
    assert cohort.global_test() == [p for u in cohort.users for p in u.test]
    assert len(cohort.global_test()) == 40 * 20


def test_minority_share_follows_prior() -> None:
    prior = (0.3, 0.3, 0.15, 0.15, 0.1)
    cfg = SyntheticCohortConfig(
        num_users=2000, pairs_per_user=1, test_pairs_per_user=0, archetype_prior=prior
    )
    share = np.mean([u.dominant_archetype == "safety-first" for u in iter_users(cfg)])
    assert abs(share - 0.1) < 0.025


def test_alpha_controls_how_pure_users_are() -> None:
    def top_weight(alpha: float) -> float:
        cfg = SyntheticCohortConfig(num_users=200, pairs_per_user=1, test_pairs_per_user=0, alpha=alpha)
        users = list(iter_users(cfg))
        assert all(u.mixture.argmax() == list(ARCHETYPES).index(u.dominant_archetype) for u in users)
        return float(np.mean([u.mixture.max() for u in users]))

    assert top_weight(0.05) > 0.8
    assert top_weight(100.0) < 0.3


def test_user_sizes_vary_with_size_sigma() -> None:
    cfg = SyntheticCohortConfig(num_users=200, pairs_per_user=20, test_pairs_per_user=10, size_sigma=1.0)
    sizes = np.array([len(u.train) for u in iter_users(cfg)])
    assert sizes.min() >= 1 and sizes.std() > 5 and 14 < sizes.mean() < 27


def _leaks(text: str) -> list[str]:
    names = {w for f in FEATURES for w in f.split("_")} | {a.split("-")[0] for a in ARCHETYPES}
    names |= {"length", "bullet", "politeness", "hedging", "enthusiasm", "refusal", "emoji"}
    names |= {"benign", "harmful"} | set(ARCHETYPES)
    found = [w for w in names if re.search(rf"\b{w}\b", text, flags=re.IGNORECASE)]
    return found + re.findall(r"\w=\w", text)


def test_generated_text_shows_each_attribute(cohort) -> None:
    hedges = ("I think", "Perhaps", "might", "may want", "not sure", "don't think")
    for user in cohort.users[:10]:
        for pair, feats in zip(user.test, user.test_features, strict=True):
            for response, f in zip((pair.chosen, pair.rejected), feats, strict=True):
                assert not _leaks(response), response
                lines = response.split("\n")
                assert any(line.startswith("- ") for line in lines) == bool(f[1])
                assert response.startswith(("Thank", "Certainly")) == bool(f[2])
                assert any(h in response for h in hedges) == bool(f[3])
                assert ("!" in response) == bool(f[4])
                assert any(s in response for s in ("help with", "assist with")) == bool(f[5] or f[6])


@pytest.mark.parametrize("harmful", [False, True])
def test_long_responses_have_more_sentences(harmful: bool) -> None:
    topics = _HARMFUL if harmful else _BENIGN
    for topic, rest in itertools.product(topics, itertools.product((0, 1), repeat=5)):
        bullets, polite, hedged, cheerful, refuses = rest
        feats = np.array([0, bullets, polite, hedged, cheerful, refuses and harmful, refuses and not harmful])
        short = render(topic, harmful, feats, random.Random(0))
        feats[0] = 1
        long = render(topic, harmful, feats, random.Random(0))
        assert len(re.findall(r"[.!]", long)) >= len(re.findall(r"[.!]", short)) + 2, (short, long)


def test_materialize_round_trips(tmp_path: Path) -> None:
    cfg = SyntheticCohortConfig(num_users=3, pairs_per_user=5, test_pairs_per_user=3, seed=1)
    dirs = materialize(cfg, tmp_path)
    assert [d.name for d in dirs] == ["user-00000", "user-00001", "user-00002"]
    user = make_user(cfg, 1)
    assert read_feedback(dirs[1] / "train.jsonl").records == user.train
    assert read_feedback(dirs[1] / "test.jsonl").records == user.test
    meta = json.loads((dirs[1] / "meta.json").read_text())
    assert meta["dominant_archetype"] == user.dominant_archetype
    np.testing.assert_allclose(meta["weights"], user.weights)
    np.testing.assert_allclose(meta["test_bayes_prob"], user.test_bayes_prob)
    # idempotent: same config (any cohort size) rewrites nothing
    stamp = (dirs[1] / "train.jsonl").stat().st_mtime_ns
    bigger = SyntheticCohortConfig(num_users=5, pairs_per_user=5, test_pairs_per_user=3, seed=1)
    assert len(materialize(make_synthetic_cohort(bigger), tmp_path)) == 5
    assert (dirs[1] / "train.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different cohort"):
        materialize(SyntheticCohortConfig(num_users=3, seed=2), tmp_path, users=[0])


def test_materialize_selected_users(tmp_path: Path) -> None:
    materialize(SMALL, tmp_path, users=[4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user-00004"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"num_users": 0}, "num_users"),
        ({"harmful_fraction": 1.5}, "harmful_fraction"),
        ({"archetype_prior": (1.0, 2.0)}, "archetype_prior"),
        ({"archetype_prior": (0, 0, 0, 0, 0)}, "archetype_prior"),
        ({"seed": True}, "seed"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SyntheticCohortConfig(**kwargs)


def test_prior_is_normalised_and_fingerprint_ignores_cohort_size() -> None:
    cfg = SyntheticCohortConfig(archetype_prior=(2, 2, 2, 2, 2))
    assert cfg.archetype_prior == (0.2,) * 5
    assert cfg.fingerprint() == SyntheticCohortConfig(num_users=7, archetype_prior=(1,) * 5).fingerprint()
    assert cfg.fingerprint() != SyntheticCohortConfig(seed=9, archetype_prior=(1,) * 5).fingerprint()
