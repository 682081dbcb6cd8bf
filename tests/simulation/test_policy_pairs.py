"""Synthetic pairs over the policy's own answers (``cohort.responses = "policy"``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fedrlhf.config import load_run_config
from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback import read_feedback
from fedrlhf.simulation.cohorts import SyntheticCohortConfig, make_user
from fedrlhf.simulation.policy_pairs import POOL_FILE, POOL_SEED, answer_pool, bank_prompts, on_policy_user
from fedrlhf.simulation.run import policy_pool_key, policy_users, prepare_cohort
from fedrlhf.simulation.utility import answer_features, true_utility

# answers that differ in the attributes the cohort's users weigh (and one that is incoherent)
ANSWERS = [
    "Sure. Here is a short answer.",
    "Thank you for asking, I'm glad to help. Here is the answer. Hope this helps!",
    "Here are the steps:\n- First step to take.\n- Second step to take.\n- Third step to take.",
    "Maybe you might try this. I think it could work for you.",
    "!!! ??? ...",
]


def _pool(answers: list[str] = ANSWERS) -> dict[str, list[str]]:
    return {p: list(answers) for p in bank_prompts()}


def test_pairs_keep_prompts_split_and_weights_and_come_from_the_pool() -> None:
    cfg = SyntheticCohortConfig(num_users=3, pairs_per_user=12, test_pairs_per_user=5, seed=4)
    for index in range(3):
        user = make_user(cfg, index)
        new = on_policy_user(user, _pool(), beta=2.0, seed=4)
        assert np.array_equal(new.weights, user.weights) and new.user_id == user.user_id
        assert [p.prompt for p in new.train] == [p.prompt for p in user.train]  # no ties in this pool
        assert [p.prompt for p in new.test] == [p.prompt for p in user.test]
        for split in ("train", "test"):
            pairs, feats = getattr(new, split), getattr(new, f"{split}_features")
            assert feats.shape == (len(pairs), 2, len(user.weights))
            for pair, f in zip(pairs, feats, strict=True):
                assert pair.chosen in ANSWERS and pair.rejected in ANSWERS and pair.chosen != pair.rejected
                assert np.array_equal(f[0], answer_features(pair.prompt, pair.chosen))
                u = [true_utility(user.weights, pair.prompt, a) for a in (pair.chosen, pair.rejected)]
                assert u[0] != u[1]
        again = on_policy_user(user, _pool(), beta=2.0, seed=4)
        assert again.train == new.train and again.test == new.test


def test_labels_follow_the_click_model() -> None:
    cfg = SyntheticCohortConfig(num_users=40, pairs_per_user=20, test_pairs_per_user=1, seed=1)
    sharp, probs, agree = [], [], []
    for index in range(40):
        user = make_user(cfg, index)
        hard = on_policy_user(user, _pool(), beta=1e6, seed=1)  # no label noise
        sharp += [
            true_utility(user.weights, p.prompt, p.chosen) > true_utility(user.weights, p.prompt, p.rejected)
            for p in hard.train
        ]
        soft = on_policy_user(user, _pool(), beta=1.0, seed=1)
        probs += list(soft.train_bayes_prob)
        agree += [
            true_utility(user.weights, p.prompt, p.chosen) > true_utility(user.weights, p.prompt, p.rejected)
            for p in soft.train
        ]
    assert all(sharp)
    # P(chosen truly preferred) is recorded per pair; the clicks agree with the utility that often
    assert abs(np.mean(agree) - np.mean(probs)) < 0.05 and 0.5 < np.mean(probs) < 1.0


def test_a_prompt_whose_answers_all_tie_drops_the_pair() -> None:
    cfg = SyntheticCohortConfig(num_users=1, pairs_per_user=10, test_pairs_per_user=2, seed=0)
    user = make_user(cfg, 0)
    tied = on_policy_user(user, _pool([ANSWERS[0], ANSWERS[0] + " "]), beta=2.0, seed=0)
    assert tied.train == [] and tied.test == [] and tied.train_features.shape == (0, 2, len(user.weights))


def test_the_pool_is_cached_by_key_and_a_broken_cache_names_its_file(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    def generate(prompts: list[str], *, n: int, max_new_tokens: int, seed: int) -> list[list[str]]:
        calls.append((n, seed))
        return [[f"{p} answer {k}" for k in range(n)] for p in prompts]

    cache = tmp_path / POOL_FILE
    pool = answer_pool(generate, 3, 7, cache, "k1")
    assert sorted(pool) == bank_prompts() and all(len(v) == 3 for v in pool.values())
    assert answer_pool(generate, 3, 7, cache, "k1") == pool and calls == [(3, POOL_SEED + 7)]
    answer_pool(generate, 4, 7, cache, "k2")
    assert calls == [(3, POOL_SEED + 7), (4, POOL_SEED + 7)] and json.loads(cache.read_text())["key"] == "k2"
    for broken in ("{not json", '{"key": "k1"}', '["a list"]'):
        cache.write_text(broken)
        with pytest.raises(DataError, match=POOL_FILE):
            answer_pool(generate, 3, 7, cache, "k1")


CONFIG = """
[policy]
model = "{model}"
lora_r = 1
max_length = 48
[federation]
task = "dpo"
seed = 5
[cohort]
kind = "synthetic"
num_clients = 2
pairs_per_user = 6
test_pairs_per_user = 3
responses = "policy"
policy_samples = 5
"""


def test_simulate_writes_on_policy_pairs_to_the_clients(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(model="unused-the-pool-is-cached"))
    cfg = load_run_config(config)
    run = tmp_path / "run"
    run.mkdir()
    # the run's pool, as a first run wrote it (the base policy is not loaded when it is there)
    cached = {"key": policy_pool_key(cfg), "samples": 5, "seed": 5, "answers": _pool()}
    (run / POOL_FILE).write_text(json.dumps(cached))
    wired, _ = prepare_cohort(cfg, run)
    users = policy_users(cfg, run / POOL_FILE)
    for user in users:
        written = read_feedback(Path(wired.federation.clients_dir) / user.user_id / "train.jsonl").records
        assert written == user.train and all(p.chosen in ANSWERS for p in written)
    server = read_feedback(wired.federation.test_data).records
    assert server == [p for u in users for p in u.test]
    # another pool (another policy) is another cohort: the written clients refuse to be reused
    other = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, model="another-policy"))
    # the adapters' settings do not write answers: the same pool
    assert policy_pool_key(dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, lora_r=2))) == (
        policy_pool_key(cfg)
    )
    with pytest.raises(ConfigError, match="different cohort"):
        (run / POOL_FILE).write_text(json.dumps({**cached, "key": policy_pool_key(other)}))
        prepare_cohort(other, run)


def test_the_base_policy_writes_the_pool_once(tmp_path: Path) -> None:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(model=save_tiny_causal_lm(tmp_path / "tiny-llama")))
    cfg = load_run_config(config)
    cache = tmp_path / POOL_FILE
    try:
        policy_users(cfg, cache)
    except DataError as exc:  # a tiny random LM's answers may all be incoherent: all tie
        assert "cohort.policy_samples" in str(exc)
    stored = json.loads(cache.read_text())
    assert stored["key"] == policy_pool_key(cfg) and sorted(stored["answers"]) == bank_prompts()
    assert all(len(a) == 5 and all(isinstance(x, str) for x in a) for a in stored["answers"].values())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.task='reward'", "set federation.task to 'dpo' or 'kto'"),
        ("cohort.responses='mixed'", "cohort.responses must be"),
        ("cohort.policy_samples=1", "cohort.policy_samples"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path: Path, override: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(model="m"))
    with pytest.raises(ConfigError, match=message):
        load_run_config(config, [override])
    jsonl = CONFIG.format(model="m").replace('kind = "synthetic"', 'kind = "jsonl"\ndata = "x.jsonl"')
    config.write_text(jsonl)
    with pytest.raises(ConfigError, match="needs cohort.kind = 'synthetic'"):
        load_run_config(config)


def test_the_report_says_what_the_pairs_are_and_that_rpo_ran() -> None:
    from fedrlhf.simulation.report_text import _cohort_words

    cfg = {
        "cohort": {"kind": "synthetic", "num_clients": 4, "alpha": 0.5},
        "federation": {"task": "dpo", "rounds": 2, "clients_per_round": 4},
        "policy": {"lora_r": 1, "model": "smollm2", "beta": 0.1},
    }
    plain = _cohort_words(cfg)
    assert "own answers" not in plain and "RPO" not in plain and "beta 0.1," in plain
    cfg["cohort"].update(responses="policy", policy_samples=8)
    cfg["policy"]["rpo_alpha"] = 1.0
    words = _cohort_words(cfg)
    assert "each pair two of the base policy's own answers, 8 per prompt" in words
    assert "beta 0.1 (RPO: plus 1 x the chosen answer's NLL)," in words
