"""Partitioners: disjoint, covering, deterministic, skewed as asked, minimum sizes kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrlhf.errors import ConfigError
from fedrlhf.feedback import Preference, read_preferences
from fedrlhf.simulation.partition import (
    by_user,
    cluster_texts,
    dirichlet_by_cluster,
    hashed_tfidf,
    iid,
    partition_stats,
    train_test_per_client,
)

HH_DEV = Path(__file__).resolve().parents[2].parent / "shared/data/hh-rlhf-harmless/dev.jsonl.gz"

TOPICS = {
    "cooking": "how long should I boil pasta and rice in salted water for dinner",
    "taxes": "when is the deadline to file my income tax return and claim deductions",
    "cars": "my car engine makes a noise when the brakes and tyres are cold",
    "pets": "how often should I feed my puppy and take the dog for a walk",
}


def _records(n_per_topic: int = 30) -> tuple[list[Preference], list[str]]:
    rng = np.random.default_rng(0)
    records, topics = [], []
    for topic, words in TOPICS.items():
        vocab = words.split()
        for i in range(n_per_topic):
            prompt = " ".join(rng.choice(vocab, size=8)) + f" question {i}"
            records.append(Preference(prompt, "a good answer", "a bad answer"))
            topics.append(topic)
    return records, topics


def _assert_partition(parts: list[list[int]], n: int, minimum: int = 1) -> None:
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n)), "parts must be disjoint and cover every record"
    assert min(len(p) for p in parts) >= minimum


def test_iid_is_balanced_and_deterministic() -> None:
    parts = iid(range(103), 10, seed=1)
    _assert_partition(parts, 103, minimum=10)
    assert max(len(p) for p in parts) == 11
    assert parts == iid(range(103), 10, seed=1) and parts != iid(range(103), 10, seed=2)


def test_cluster_texts_separates_topics() -> None:
    records, topics = _records()
    labels = cluster_texts([r.prompt for r in records], 4, seed=0)
    assert np.array_equal(labels, cluster_texts([r.prompt for r in records], 4, seed=0))
    for topic in TOPICS:  # each topic lands in a single cluster, and topics do not share one
        found = {labels[i] for i, t in enumerate(topics) if t == topic}
        assert len(found) == 1
    assert len(set(labels)) == 4


def test_hashed_tfidf_rows_are_unit_norm() -> None:
    indptr, indices, data = hashed_tfidf(["a cat sat", "", "dogs dogs run"], dims=64)
    assert list(np.diff(indptr)) == [3, 0, 2] and indices.max() < 64
    norms = [np.linalg.norm(data[indptr[i] : indptr[i + 1]]) for i in (0, 2)]
    np.testing.assert_allclose(norms, 1.0)


def test_dirichlet_alpha_controls_skew() -> None:
    records, topics = _records(100)
    skew = {}
    for alpha in (0.05, 1000.0):
        parts = dirichlet_by_cluster(records, 8, alpha=alpha, num_clusters=4, seed=0)
        _assert_partition(parts, len(records))
        assert parts == dirichlet_by_cluster(records, 8, alpha=alpha, num_clusters=4, seed=0)
        skew[alpha] = partition_stats(parts, topics)["label_skew"]
    assert skew[0.05] > 0.5 and skew[1000.0] < 0.1


def test_dirichlet_keeps_minimum_size_and_refuses_the_impossible() -> None:
    clusters = np.repeat(np.arange(5), 40)
    parts = dirichlet_by_cluster(
        range(200), 20, alpha=0.01, num_clusters=5, seed=3, clusters=clusters, min_per_client=10
    )
    _assert_partition(parts, 200, minimum=10)
    with pytest.raises(ConfigError, match="cannot give 21 clients 10 each"):
        dirichlet_by_cluster(
            range(200), 21, alpha=1.0, num_clusters=5, seed=0, clusters=clusters, min_per_client=10
        )
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_by_cluster(range(200), 2, alpha=0, num_clusters=5, seed=0)
    with pytest.raises(ConfigError, match="one id per record"):
        dirichlet_by_cluster(range(200), 2, alpha=1.0, num_clusters=5, seed=0, clusters=[0, 1])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 120),
    clients=st.integers(1, 12),
    minimum=st.integers(0, 6),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**31),
)
def test_dirichlet_property(n: int, clients: int, minimum: int, alpha: float, seed: int) -> None:
    clusters = np.random.default_rng(seed).integers(0, 4, size=n)
    if n < clients * minimum:
        with pytest.raises(ConfigError):
            dirichlet_by_cluster(
                range(n),
                clients,
                alpha=alpha,
                num_clusters=4,
                seed=seed,
                clusters=clusters,
                min_per_client=minimum,
            )
        return
    parts = dirichlet_by_cluster(
        range(n), clients, alpha=alpha, num_clusters=4, seed=seed, clusters=clusters, min_per_client=minimum
    )
    assert len(parts) == clients
    _assert_partition(parts, n, minimum=minimum)


def test_by_user_keeps_users_whole() -> None:
    ids = ["a"] * 5 + ["b"] * 3 + ["c"] * 1 + ["d"] * 4 + ["a"]
    records = list(range(len(ids)))
    assert by_user(records, ids) == [[0, 1, 2, 3, 4, 13], [5, 6, 7], [8], [9, 10, 11, 12]]
    grouped = by_user(records, ids, num_clients=2, seed=0)
    _assert_partition(grouped, len(ids))
    assert sorted(len(p) for p in grouped) == [7, 7]  # largest first: {a, c} and {d, b}
    owners = {uid: {k for k, p in enumerate(grouped) if any(ids[i] == uid for i in p)} for uid in set(ids)}
    assert all(len(o) == 1 for o in owners.values())


def test_by_user_small_users() -> None:
    ids = ["a"] * 5 + ["b"] * 1
    with pytest.raises(ConfigError, match="drop_small"):
        by_user(range(6), ids, min_per_client=2)
    assert by_user(range(6), ids, min_per_client=2, drop_small=True) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ConfigError, match="2 users cannot fill 3 clients"):
        by_user(range(6), ids, num_clients=3)
    with pytest.raises(ConfigError, match="whole users"):
        by_user(range(6), ids, num_clients=2, min_per_client=2)
    with pytest.raises(ConfigError, match="one id per record"):
        by_user(range(6), ids[:3])


def test_train_test_per_client() -> None:
    parts = iid(range(100), 5, seed=0)
    splits = train_test_per_client(parts, 0.25, seed=7)
    assert splits == train_test_per_client(parts, 0.25, seed=7)
    for part, (train, test) in zip(parts, splits, strict=True):
        assert sorted(train + test) == part and not set(train) & set(test) and len(test) == 5
    assert train_test_per_client(parts[:2], 0.25, seed=7) == splits[:2]  # clients independent
    with pytest.raises(ConfigError, match="test_fraction"):
        train_test_per_client(parts, 1.5, seed=0)


def test_partition_stats() -> None:
    stats = partition_stats([[0, 1], [2, 3]], ["x", "x", "y", "y"])
    assert stats["num_clients"] == 2 and stats["num_records"] == 4 and stats["size_cv"] == 0.0
    assert stats["label_skew"] == pytest.approx(0.5) and stats["label_entropy"] == pytest.approx(0.0)
    mixed = partition_stats([[0, 2], [1, 3]], ["x", "x", "y", "y"])
    assert mixed["label_skew"] == pytest.approx(0.0) and mixed["label_entropy"] == pytest.approx(1.0)


def test_works_on_hh_rlhf() -> None:
    if not HH_DEV.is_file():
        pytest.skip("../shared/data not present (a user's clone); CI has it")
    records = read_preferences(HH_DEV)
    parts = dirichlet_by_cluster(records, 10, alpha=0.3, num_clusters=8, seed=0, min_per_client=20)
    _assert_partition(parts, len(records), minimum=20)
    labels = cluster_texts([r.prompt for r in records], 8, seed=0)
    assert len(set(labels)) == 8
    assert (
        partition_stats(parts, labels)["label_skew"]
        > partition_stats(iid(records, 10, seed=0), labels)["label_skew"]
    )


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_a_jsonl_cohort_is_prepared_with_either_partition(kind: str, tmp_path) -> None:
    """The simulation's jsonl cohort deals every training pair to exactly one client, whatever
    the partition (``dirichlet`` once crashed: the k-means cluster count was never passed)."""
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.feedback import read_feedback, write_jsonl
    from fedrlhf.feedback.records import Preference
    from fedrlhf.simulation.run import _prepare_jsonl

    prefs = [
        Preference(prompt=f"topic {i % 5}: question {i}", chosen=f"good answer {i}", rejected=f"bad {i}")
        for i in range(60)
    ]
    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, prefs)
    cfg = run_config_from_dict(
        {
            "cohort": {
                "kind": "jsonl",
                "data": str(data),
                "num_clients": 4,
                "partition": kind,
                "alpha": 0.3,
                "num_clusters": 3,
                "client_test_fraction": 0.0,
            }
        }
    )
    info = _prepare_jsonl(cfg, tmp_path / "clients", tmp_path / "server_test.jsonl")
    dealt = [
        r.prompt
        for d in sorted((tmp_path / "clients").iterdir())
        for r in read_feedback(d / "train.jsonl").records
    ]
    assert len(dealt) == len(set(dealt)) == info["train_pairs"] == 60 - info["server_test_pairs"]
