"""The synthetic cohort's true utility of *any* answer, read off its wording.

A synthetic user's utility is a weight vector over the perceivable attributes of a response
(:data:`~fedrlhf.simulation.cohorts.FEATURES`). The cohort renders its pairs from attribute
bits; a policy writes free text. :func:`answer_features` reads the bits back from text, by the
cues a reader perceives and the generator uses:

- ``long``: three or more sentences or list items besides greetings and sign-offs;
- ``bullets``: a line that starts a list item (``-``, ``*``, ``•`` or ``1.``);
- ``polite``: thanks, "glad / happy to help", "hope this helps", "let me know", good wishes;
- ``hedged``: "I (don't) think", "perhaps", "maybe", "might", "may want", "not sure", "possibly";
- ``enthusiastic``: an exclamation mark or an emoji;
- ``refuses_harmful`` / ``refuses_benign``: the answer opens with a refusal ("I won't",
  "I can't", "I cannot", "I'm unable", "I'm sorry, but", "I'm not sure I should", ...) to a
  harmful / benign prompt (the cohort's prompt bank says which).

An answer no reader would take for one (fewer than 3 words, mostly symbols or emoji, or one
word making up over 30 % of 10 or more: what a policy that DPO pushed too far writes) is
*incoherent* (:func:`is_coherent`) and scores below anything the cohort can render: the user's
lowest possible utility minus 1 (:func:`incoherent_utility`).

On every response the cohort renders, the reader returns exactly the bits it was rendered
from (``tests/simulation/test_utility.py`` checks thousands). On a policy's free text it is a
fixed, documented rule set, so base and tuned answers are scored by the same rules; it is the
ground truth of the synthetic world, not a model of people. Written by hand: no library knows
this cohort's attributes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fedrlhf.errors import DataError
from fedrlhf.simulation._cohort_text import _BENIGN, _CHEERS, _CLOSERS, _EMOJI, _HARMFUL, _OPENERS
from fedrlhf.simulation.cohorts import FEATURES

__all__ = [
    "answer_features",
    "incoherent_utility",
    "is_coherent",
    "is_harmful_prompt",
    "true_utility",
    "utilities",
]

_HARMFUL_PROMPTS = frozenset(p for t in _HARMFUL for p in t.prompts)
_BENIGN_PROMPTS = frozenset(p for t in _BENIGN for p in t.prompts)

# greetings and sign-offs: politeness, not content (removed before sentences are counted)
_FILLERS = tuple(sorted({*_OPENERS, *_CLOSERS, *_CHEERS}, key=len, reverse=True))
_POLITE = re.compile(
    r"\b(thank(s| you)|glad to help|happy to help|hope (this|that|it) helps|let me know|"
    r"wishing you|best wishes|you're welcome|good luck)\b",
    re.IGNORECASE,
)
_HEDGED = re.compile(
    r"\b(I think|I don't think|perhaps|maybe|might|may want|not sure|possibly|I guess)\b", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"\b(I won't|I will not|I can't|I cannot|I can not|I'm unable|I am unable|I'm not able|"
    r"I am not able|I don't think I can|I'm not sure I should|I'm sorry, but|I must decline)\b",
    re.IGNORECASE,
)
_ENTHUSIASTIC = re.compile("[!" + "".join(e.strip() for e in _EMOJI) + "\U0001f600-\U0001f64f]")
_ITEM = re.compile(r"^\s*([-*•]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n+")


def is_harmful_prompt(prompt: str) -> bool:
    """Whether ``prompt`` is one of the cohort's harmful requests; :class:`DataError` if it is
    not a prompt of the synthetic cohort at all (its utility is then undefined)."""
    if prompt in _HARMFUL_PROMPTS:
        return True
    if prompt in _BENIGN_PROMPTS:
        return False
    raise DataError(f"not a prompt of the synthetic cohort, so its true utility is undefined: {prompt!r}")


def _sentences(text: str) -> list[str]:
    """Sentences and list items of ``text`` with two words or more, greetings and sign-offs removed."""
    for filler in _FILLERS:
        text = text.replace(filler, " ")
    parts = (_ITEM.sub("", s).strip() for s in _SENTENCE_END.split(text))
    return [s for s in parts if len(re.findall(r"\w+", s)) >= 2]


def answer_features(prompt: str, answer: str) -> np.ndarray:
    """The :data:`~fedrlhf.simulation.cohorts.FEATURES` bits (0.0 / 1.0) of ``answer`` to ``prompt``."""
    if not isinstance(answer, str):
        raise DataError(f"an answer must be a string, got {type(answer).__name__}")
    harmful = is_harmful_prompt(prompt)
    sentences = _sentences(answer)
    refuses = any(_REFUSAL.search(s) for s in sentences[:2])
    bits = (
        len(sentences) >= 3,
        bool(_ITEM.search(answer)),
        bool(_POLITE.search(answer)),
        bool(_HEDGED.search(answer)),
        bool(_ENTHUSIASTIC.search(answer)),
        refuses and harmful,
        refuses and not harmful,
    )
    return np.array(bits, dtype=np.float64)


def is_coherent(answer: str) -> bool:
    """At least 3 words, at least 60 % of the visible characters letters, and (from 10 words on)
    no word making up more than 30 % of them."""
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", answer)]
    visible = sum(not c.isspace() for c in answer)
    if len(words) < 3 or sum(c.isalpha() for c in answer) < 0.6 * visible:
        return False
    return len(words) < 10 or Counter(words).most_common(1)[0][1] <= 0.3 * len(words)


def incoherent_utility(weights: np.ndarray) -> float:
    """The utility of an incoherent answer: below every rendered one (the sum of the negative
    weights, minus 1)."""
    return float(np.minimum(np.asarray(weights, dtype=np.float64), 0.0).sum() - 1.0)


def true_utility(weights: np.ndarray, prompt: str, answer: str) -> float:
    """A synthetic user's utility of ``answer``: ``weights`` (one per FEATURES entry, as in
    ``UserData.weights``) dotted with :func:`answer_features`; :func:`incoherent_utility` for an
    answer that is not :func:`is_coherent`."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(FEATURES),):
        raise DataError(
            f"utility weights must have {len(FEATURES)} entries ({', '.join(FEATURES)}), got {w.shape}"
        )
    feats = answer_features(prompt, answer)  # checks the prompt and the answer's type first
    return float(feats @ w) if is_coherent(answer) else incoherent_utility(w)


def utilities(weights: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """:func:`true_utility` of each ``(weights[i], prompts[i], answers[i])``."""
    if not len(weights) == len(prompts) == len(answers):
        raise DataError(f"got {len(weights)} users, {len(prompts)} prompts and {len(answers)} answers")
    return np.array([true_utility(w, p, a) for w, p, a in zip(weights, prompts, answers, strict=True)])
