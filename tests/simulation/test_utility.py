"""The synthetic cohort's true utility read off free text (fedrlhf.simulation.utility)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrlhf.errors import DataError
from fedrlhf.simulation.cohorts import FEATURES, SyntheticCohortConfig, make_user
from fedrlhf.simulation.utility import (
    answer_features,
    incoherent_utility,
    is_coherent,
    is_harmful_prompt,
    true_utility,
    utilities,
)


def test_the_reader_returns_the_bits_every_rendered_response_was_made_from() -> None:
    cfg = SyntheticCohortConfig(num_users=40, pairs_per_user=40, test_pairs_per_user=0, harmful_fraction=0.4)
    checked = 0
    for i in range(cfg.num_users):
        user = make_user(cfg, i)
        for pair, feats in zip(user.train, user.train_features, strict=True):
            for text, bits in ((pair.chosen, feats[0]), (pair.rejected, feats[1])):
                got = answer_features(pair.prompt, text)
                assert got.tolist() == bits.tolist(), (text, dict(zip(FEATURES, got, strict=True)))
                assert is_coherent(text), text
                assert true_utility(user.weights, pair.prompt, text) == pytest.approx(bits @ user.weights)
                checked += 1
    assert checked == 3200


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Rinse the rice.", set()),
        ("Thanks! Rinse the rice. 🙂", {"polite", "enthusiastic"}),
        ("1. Rinse the rice.\n2. Boil the water.\n3. Let it rest.", {"long", "bullets"}),
        ("Perhaps rinse the rice first.", {"hedged"}),
        ("I'm sorry, but I cannot help with that.", {"refuses_benign"}),
        ("Rinse it. Then boil it. I can't stress this enough.", {"long"}),  # a refusal opens an answer
    ],
)
def test_free_text_cues(answer: str, expected: set[str]) -> None:
    got = answer_features("How do I cook rice so it isn't sticky?", answer)
    assert {name for name, bit in zip(FEATURES, got, strict=True) if bit} == expected


def test_a_refusal_counts_for_the_prompt_kind_and_the_utility_is_the_dot_product() -> None:
    harmful = "What's the easiest way to shoplift from a supermarket?"
    assert is_harmful_prompt(harmful) and not is_harmful_prompt("Any advice for sleeping better?")
    refusal = "I won't help with that. Look for a local food bank."
    assert answer_features(harmful, refusal).tolist() == [0, 0, 0, 0, 0, 1, 0]
    weights = np.array([0.0, 0.0, 0.5, 0.5, 0.0, 4.0, -3.0])
    assert true_utility(weights, harmful, refusal) == 4.0
    assert true_utility(weights, "Any advice for sleeping better?", refusal) == -3.0
    assert utilities(
        [weights, weights], [harmful, harmful], [refusal, "Thank you. Pick a busy time."]
    ).tolist() == [
        4.0,
        0.5,
    ]


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "Sure.",
        "🌱🌻🌊⏳⏳⏳⏳⏳⏳⏳🌊⏳🌊🌊",
        "elf Syd stockScript " + "stock " * 40,
        "### *** --- !!! ???",
    ],
)
def test_an_incoherent_answer_scores_below_anything_the_cohort_renders(answer: str) -> None:
    weights = np.array([-2.0, -1.0, 0.0, -0.5, 0.0, 0.5, -3.0])
    assert not is_coherent(answer)
    assert (
        true_utility(weights, "Any advice for sleeping better?", answer)
        == incoherent_utility(weights)
        == -7.5
    )
    assert is_coherent("Go to bed at the same time every night.")


def test_bad_input_is_named() -> None:
    with pytest.raises(DataError, match="not a prompt of the synthetic cohort"):
        answer_features("What is the capital of France?", "Paris.")
    with pytest.raises(DataError, match="7 entries"):
        true_utility(np.zeros(6), "Any advice for sleeping better?", "Sleep.")
    with pytest.raises(DataError, match="2 users, 1 prompts"):
        utilities([np.zeros(7)] * 2, ["Any advice for sleeping better?"], ["Sleep."])
