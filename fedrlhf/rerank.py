"""Best-of-n reranking: score candidate answers with a reward model and pick the best.

A prompt is a plain string or an HH-style transcript prefix ending in
``"\\n\\nAssistant:"``.  Each (prompt, candidate) is turned into exactly the text
``fedrlhf eval`` scores for a pair whose chosen (or rejected) response is that
candidate: the HH importer's prompt and stripped response (an empty one becomes
``"(no response)"``), or the plain ``prompt`` / response of a preference line, then
:func:`fedrlhf.training.data.encode` and the model's forward.  So
``scores[a] - scores[b]`` equals eval's margin for the pair (a over b).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback.importers import HH_ASSISTANT, HH_EMPTY_RESPONSE, _iter_lines
from fedrlhf.feedback.records import Rating
from fedrlhf.models.reward import RewardModel
from fedrlhf.training.data import batch_tensors, encode

__all__ = ["Ranked", "best_of_n", "rank", "read_candidates", "read_prompts", "reward_input", "score"]


@dataclass(frozen=True)
class Ranked:
    """The reward model's verdict on one prompt's candidates.

    Attributes:
        scores: one reward per candidate, in the candidates' order.
        best: index of the highest-scoring candidate (the first one on a tie).
    """

    scores: list[float]
    best: int

    @property
    def order(self) -> list[int]:
        """Candidate indices from best to worst (stable on ties)."""
        return sorted(range(len(self.scores)), key=lambda k: -self.scores[k])

    def to_dict(self, index: int) -> dict[str, object]:
        return {"index": index, "scores": self.scores, "best": self.best}


def is_hh_prefix(prompt: str) -> bool:
    """True for an HH transcript prefix: it ends (but for blanks) with ``"\\n\\nAssistant:"``."""
    return prompt.rstrip().endswith(HH_ASSISTANT)


def reward_input(prompt: str, candidate: str) -> tuple[str, str]:
    """``(prompt, response)`` as eval's importer makes them for this prompt and candidate."""
    if is_hh_prefix(prompt):  # the importer cuts after the marker and strips the response
        end = prompt.rfind(HH_ASSISTANT) + len(HH_ASSISTANT)
        return prompt[:end], candidate.strip() or HH_EMPTY_RESPONSE
    return prompt, candidate


def _record(prompt: str, candidate: str) -> Rating:
    """The unit eval would encode for this candidate (slot 0 = join(prompt, response))."""
    return Rating(*reward_input(prompt, candidate), label=1)


@torch.inference_mode()
def score(model: RewardModel, items: Sequence[tuple[str, str]], *, batch_size: int = 64) -> np.ndarray:
    """Rewards of ``(prompt, candidate)`` items [N], in input order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not items:
        return np.zeros(0)
    records = [_record(p, c) for p, c in items]
    data = encode(records, model.tokenizer, model.config.max_length)
    model.eval()
    out = np.zeros(len(records), dtype=np.float64)
    order = torch.argsort(data.lengths[:, 0])  # similar lengths together: less padding
    for start in range(0, len(records), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = batch_tensors(data.input_ids[idx], data.lengths[idx])
        out[idx.numpy()] = model(ids[:, 0], mask[:, 0]).double().numpy()
    return out


def rank(
    model: RewardModel, prompts: Sequence[str], candidates: Sequence[Sequence[str]], *, batch_size: int = 64
) -> list[Ranked]:
    """Score each prompt's candidates with ``model``; one :class:`Ranked` per prompt, in order.

    Raises:
        DataError: a prompt has no candidates, or an empty one (with a plain-text prompt).
    """
    if len(prompts) != len(candidates):
        raise ConfigError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    items: list[tuple[str, str]] = []
    for i, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
        if not cands:
            raise DataError(f"prompt {i} has no candidates", field="candidates")
        for k, c in enumerate(cands):
            try:
                _record(prompt, c)
            except DataError as err:
                field = f"candidates[{k}]" if err.field == "response" else err.field
                raise DataError(f"prompt {i}: {err.reason}", field=field) from None
            items.append((prompt, c))
    flat = score(model, items, batch_size=batch_size)
    out, at = [], 0
    for cands in candidates:
        s = [float(x) for x in flat[at : at + len(cands)]]
        at += len(cands)
        out.append(Ranked(scores=s, best=int(np.argmax(s))))
    return out


def best_of_n(
    policy: object,
    model: RewardModel,
    prompts: Sequence[str],
    *,
    n: int = 4,
    batch_size: int = 64,
    **generate: object,
) -> tuple[list[list[str]], list[Ranked]]:
    """``n`` answers per prompt from ``policy`` (a :class:`~fedrlhf.models.policy.PolicyModel`),
    ranked by ``model``; ``generate`` goes to ``PolicyModel.generate`` (temperature, seed, ...)."""
    from fedrlhf.models.policy import PolicyModel

    if not isinstance(policy, PolicyModel):
        raise TypeError(f"policy must be a PolicyModel, got {type(policy).__name__}")
    answers = policy.generate(list(prompts), n=n, **generate)  # type: ignore[arg-type]
    return answers, rank(model, prompts, answers, batch_size=batch_size)


# --------------------------------------------------------------------------- files


def _objects(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, object]]]:
    """``(line number, object)`` of each non-blank JSONL line; a bad line is a DataError."""
    where = os.fsdecode(path)
    out = []
    for lineno, raw in _iter_lines(where):
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not valid UTF-8 (byte {exc.start + 1} of the line)", path=where, line=lineno
            ) from None
        if not text:
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"invalid JSON: {exc}", path=where, line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=where, line=lineno)
        out.append((lineno, obj))
    if not out:
        raise DataError("holds no lines (empty file)", path=where)
    return out


def _prompt(obj: dict[str, object], where: str, lineno: int) -> str:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        reason = "missing" if "prompt" not in obj else f"must be a string, got {type(prompt).__name__}"
        raise DataError(reason, path=where, line=lineno, field="prompt")
    return prompt


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts of a JSONL file of ``{"prompt": str}`` lines (other keys ignored)."""
    where = os.fsdecode(path)
    return [_prompt(obj, where, lineno) for lineno, obj in _objects(path)]


def read_candidates(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """Prompts and candidate lists of ``{"prompt": str, "candidates": [str, ...]}`` lines."""
    where = os.fsdecode(path)
    prompts, candidates = [], []
    for lineno, obj in _objects(path):
        prompt = _prompt(obj, where, lineno)
        cands = obj.get("candidates")
        if not isinstance(cands, list) or not cands:
            reason = "missing" if "candidates" not in obj else "must be a non-empty list of strings"
            raise DataError(reason, path=where, line=lineno, field="candidates")
        for k, c in enumerate(cands):
            field = f"candidates[{k}]"
            if not isinstance(c, str):
                raise DataError(
                    f"must be a string, got {type(c).__name__}", path=where, line=lineno, field=field
                )
            try:
                _record(prompt, c)
            except DataError as err:  # empty, or not valid Unicode
                name = field if err.field == "response" else err.field
                raise DataError(err.reason, path=where, line=lineno, field=name) from None
        prompts.append(prompt)
        candidates.append(list(cands))
    return prompts, candidates
