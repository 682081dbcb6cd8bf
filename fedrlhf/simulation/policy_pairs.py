"""Synthetic pairs over the policy's own answers (``cohort.responses = "policy"``).

A rendered synthetic pair (:mod:`fedrlhf.simulation.cohorts`) holds two responses written from
attribute bits by the cohort's templates: text the policy never writes. A device that shows its
user two answers of the app's policy and records the pick holds *on-policy* pairs instead, the
data DPO was made for (Rafailov et al. 2023 sample their pairs from the reference policy).

This module builds them. The base policy (``[policy] model``, adapters off) writes
``cohort.policy_samples`` answers to every prompt of the cohort's prompt bank once (a pool,
cached in the run directory as ``policy_answers.json``). Each rendered pair of a user keeps its
prompt and its place; its two responses become two answers of the pool to that prompt whose true
utility for this user differs (:func:`fedrlhf.simulation.utility.true_utility`), drawn at random,
labelled by the cohort's Bradley-Terry click model (``cohort.beta``) exactly as rendered pairs
are. A prompt whose pool answers all tie for the user has no such pair; the pair is dropped
(a tie is a coin flip, no preference). Prompts, users and their weights stay those of the
rendered cohort, so held-out items and evaluations line up across both kinds. Written by hand:
no library simulates users clicking between a policy's answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedrlhf.errors import DataError
from fedrlhf.feedback import Preference
from fedrlhf.io import atomic_write_json
from fedrlhf.simulation._cohort_text import _BENIGN, _HARMFUL
from fedrlhf.simulation.cohorts import UserData
from fedrlhf.simulation.utility import answer_features, utilities

__all__ = [
    "ANSWER_TOKENS",
    "POOL_FILE",
    "POOL_SEED",
    "answer_pool",
    "bank_prompts",
    "on_policy_user",
    "pool_key",
]

ANSWER_TOKENS = 48
"""New tokens per pooled answer: what ``benchmarks/policy_win_rate.py`` samples too."""

POOL_SEED = 1_000_003
"""Added to the run's seed for the pool's sampling, so that it never replays the sampling seed an
evaluation of the base policy uses (``policy_win_rate.py --seed``, 0 by default)."""

POOL_FILE = "policy_answers.json"
"""The pool's file in a run directory."""


def bank_prompts() -> list[str]:
    """Every prompt of the synthetic cohort's bank, sorted (the pool's keys)."""
    return sorted({p for topic in (*_HARMFUL, *_BENIGN) for p in topic.prompts})


def pool_key(policy: dict[str, object], samples: int, seed: int) -> str:
    """What a pool depends on: the base policy (``policy``: its model and max length), the sample
    count, the seed, the token budget."""
    blob = json.dumps([policy, samples, seed, ANSWER_TOKENS], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def answer_pool(generate, samples: int, seed: int, cache: Path | None, key: str) -> dict[str, list[str]]:
    """``samples`` answers of the base policy to every bank prompt, reused from ``cache`` when it
    holds the same ``key``.

    Args:
        generate: ``PolicyModel.generate`` of the base policy (called only when the cache misses).
        cache: a JSON file (written atomically), or ``None`` to always generate.
    """
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return {str(k): [str(a) for a in v] for k, v in stored["answers"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{cache}: unreadable answer pool ({exc!r}); delete it to write a new one"
            ) from exc
    prompts = bank_prompts()
    answers = generate(prompts, n=samples, max_new_tokens=ANSWER_TOKENS, seed=POOL_SEED + seed)
    pool = dict(zip(prompts, answers, strict=True))
    if cache is not None:
        atomic_write_json(cache, {"key": key, "samples": samples, "seed": seed, "answers": pool})
    return pool


def _pairs(
    user: UserData,
    pairs: Sequence[Preference],
    pool: dict[str, list[str]],
    beta: float,
    rng: np.random.Generator,
) -> tuple[list[Preference], list[float], list[np.ndarray]]:
    out: list[Preference] = []
    probs: list[float] = []
    feats: list[np.ndarray] = []
    for pair in pairs:
        answers = pool.get(pair.prompt)
        if not answers:
            raise DataError(f"the answer pool has no answers to the cohort's prompt {pair.prompt!r}")
        u = utilities([user.weights] * len(answers), [pair.prompt] * len(answers), answers)
        differ = [(i, j) for i in range(len(u)) for j in range(i + 1, len(u)) if abs(u[i] - u[j]) > 1e-9]
        if not differ:
            continue
        a, b = differ[int(rng.integers(len(differ)))]
        p_a = 0.5 * (1.0 + math.tanh(beta * (u[a] - u[b]) / 2.0))  # the logistic, overflow-free
        a_chosen = bool(rng.random() < p_a)
        chosen, rejected = (a, b) if a_chosen else (b, a)
        out.append(Preference(pair.prompt, answers[chosen], answers[rejected]))
        probs.append(p_a if a_chosen else 1.0 - p_a)
        feats.append(np.stack([answer_features(pair.prompt, answers[k]) for k in (chosen, rejected)]))
    return out, probs, feats


def on_policy_user(user: UserData, pool: dict[str, list[str]], *, beta: float, seed: int) -> UserData:
    """``user`` with every pair's responses replaced by two pooled answers (module docstring).

    Deterministic in ``(seed, user.index)``; the train / test split and the user's weights stay.
    """
    rng = np.random.default_rng([seed, user.index, 1])
    train, train_p, train_f = _pairs(user, user.train, pool, beta, rng)
    test, test_p, test_f = _pairs(user, user.test, pool, beta, rng)
    width = len(user.weights)
    return dataclasses.replace(
        user,
        train=train,
        test=test,
        train_bayes_prob=np.asarray(train_p, dtype=np.float64),
        test_bayes_prob=np.asarray(test_p, dtype=np.float64),
        train_features=np.asarray(train_f, dtype=np.float64).reshape(len(train), 2, width),
        test_features=np.asarray(test_f, dtype=np.float64).reshape(len(test), 2, width),
    )
