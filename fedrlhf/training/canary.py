"""One-run canary audit of local training (Steinke, Nasr, Jagielski 2023, arXiv:2305.08846).

``m`` canary preference pairs (a random prompt, two random-word responses) are
made; each gets two independent fair coins: *included* (trained on or not) and its
*orientation* (which response is labelled chosen).  The model is trained on the
base records plus the included canaries, then each canary is scored by the
model's margin ``r(chosen) - r(rejected)`` in its assigned orientation.  Trained
canaries should have larger margins; a left-out canary's margin is symmetric
around 0 because its orientation is a coin the model never saw.  The auditor
guesses the top scores "included" and the bottom "excluded";
:mod:`fedrlhf.privacy.audit` turns the correct guesses into an empirical lower
bound on epsilon, valid with probability ``1 - beta``.

A DP implementation whose lower bound exceeds its claimed epsilon is broken; a
non-private run must show clear leakage, or the audit could not tell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError
from fedrlhf.feedback.records import Feedback, Preference
from fedrlhf.models.reward import RewardModel
from fedrlhf.privacy.audit import best_epsilon_over_k
from fedrlhf.training.data import encode
from fedrlhf.training.evaluate import score_pairs
from fedrlhf.training.local import train
from fedrlhf.training.private import train_private

GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.3)
"""Guesses per side (top "in", bottom "out") as fractions of ``m``; the best one is
reported, paying a union bound over all of them."""


def canary_words(model: RewardModel) -> list[str]:
    """Whole-word vocabulary entries (one token each), sorted so a seed fixes the draws."""
    vocab = model.tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and w.islower() and len(w) >= 3)
    if len(words) < 100:
        raise ConfigError(f"the tokenizer has only {len(words)} plain words; canaries need a word vocabulary")
    return words


def make_canaries(
    words: Sequence[str], num: int, *, seed: int, prompt_words: int = 4, response_words: int = 6
) -> tuple[list[Preference], np.ndarray]:
    """``num`` canary pairs in their assigned orientation, and the inclusion coins (bool [num]).

    Prompts are unique; the two responses of a canary differ.  Coins come from
    ``numpy.random.default_rng(seed)``, independently of everything trained on.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ConfigError(f"num_canaries must be an integer >= 2, got {num!r}")
    rng = np.random.default_rng(seed)
    pool = np.asarray(words)
    prompts: set[str] = set()
    canaries: list[tuple[str, str, str]] = []
    while len(canaries) < num:
        prompt = " ".join(rng.choice(pool, prompt_words))
        first, second = (" ".join(rng.choice(pool, response_words)) for _ in range(2))
        if prompt in prompts or first == second:
            continue
        prompts.add(prompt)
        canaries.append((prompt, first, second))
    flip = rng.random(num) < 0.5  # orientation coin
    included = rng.random(num) < 0.5  # membership coin
    records = [
        Preference(p, b, a) if f else Preference(p, a, b) for (p, a, b), f in zip(canaries, flip, strict=True)
    ]
    return records, included


def audit_scores(margins: np.ndarray, included: np.ndarray, *, beta: float, delta: float) -> dict[str, Any]:
    """Empirical epsilon lower bound from canary margins (best over :data:`GUESS_FRACTIONS`)."""
    m = int(included.size)
    ks = sorted({max(1, int(f * m)) for f in GUESS_FRACTIONS if 2 * max(1, int(f * m)) <= m})
    result = best_epsilon_over_k(margins, included, ks, beta=beta, delta=delta)
    return {
        "empirical_epsilon_lower_bound": result.epsilon_lower_bound,
        "m": m,
        "correct": result.correct,
        "guesses": result.guesses,
        "k_pos": result.k_pos,
        "k_neg": result.k_neg,
    }


def _train(
    model: RewardModel,
    records: list[Feedback],
    train_cfg: TrainConfig,
    privacy_cfg: PrivacyConfig | None,
    ledger_path: Path | None,
) -> float:
    """Train in place; returns the claimed epsilon (``inf`` without DP)."""
    data = encode(records, model.tokenizer, model.config.max_length)
    if privacy_cfg is None or not privacy_cfg.enabled:
        train(model, data, train_cfg, progress=False)
        return math.inf
    if ledger_path is None:
        raise ConfigError("a DP audit needs a ledger_path (use a fresh one: it is charged like any run)")
    _, report = train_private(
        model, data, train_cfg, privacy_cfg, ledger_path=ledger_path, progress=False, label="canary-audit"
    )
    return float(report["epsilon"])


def run_canary_audit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    privacy_cfg: PrivacyConfig | None,
    base_records: Sequence[Feedback],
    *,
    num_canaries: int,
    seed: int,
    ledger_path: Path | None = None,
    beta: float = 0.05,
) -> dict[str, Any]:
    """Train once with ``num_canaries`` canaries (each included with probability 1/2) and audit it.

    Args:
        model_cfg, train_cfg: the model and the local training being audited.
        privacy_cfg: DP-SGD settings, or ``None`` / disabled for plain training.
        base_records: the ordinary training data the canaries hide among.
        num_canaries: m; the bound is limited by m (all-correct guesses on a few
            hundred canaries can show epsilon of about 3, not more).
        seed: draws the canaries and their coins (training uses ``train_cfg.seed``).
        ledger_path: the privacy ledger DP training records into (use a fresh file).
        beta: the bound holds with probability ``1 - beta``.

    Returns:
        ``claimed_epsilon`` (the ledger's, ``inf`` without DP), ``empirical_epsilon_lower_bound``,
        ``m``, ``correct``, ``guesses``, ``k_pos``, ``k_neg``, ``included``, ``delta`` and ``seconds``.
    """
    model = RewardModel.build(model_cfg, seed=train_cfg.seed)
    canaries, included = make_canaries(canary_words(model), num_canaries, seed=seed)
    members = [c for c, inside in zip(canaries, included, strict=True) if inside]
    start = time.perf_counter()
    claimed = _train(model, [*base_records, *members], train_cfg, privacy_cfg, ledger_path)
    margins = score_pairs(model, encode(canaries, model.tokenizer, model_cfg.max_length))
    delta = privacy_cfg.delta if privacy_cfg is not None else PrivacyConfig().delta
    audit = audit_scores(margins, included, beta=beta, delta=delta)
    return {
        "claimed_epsilon": claimed,
        **audit,
        "included": int(included.sum()),
        "delta": delta,
        "seconds": round(time.perf_counter() - start, 2),
    }
