"""Feedback -> token tensors, tokenized once and cached on disk.

A *unit* is one DP sample: a preference pair (slot 0 = chosen, slot 1 = rejected)
or a rating (slot 0 = the response, slot 1 = a 1-token placeholder).  Tensors:
``input_ids`` [N, 2, L] (right-padded), ``lengths`` [N, 2], ``kind`` [N]
(0 = pair, 1 = rating) and ``label`` [N] (+1 / -1 for ratings, 1 for pairs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from fedrlhf.errors import ConfigError
from fedrlhf.feedback.records import Correction, Feedback, Preference, Rating
from fedrlhf.io import write_with

PAIR, RATING = 0, 1


def join(prompt: str, response: str) -> str:
    """The text a reward is computed on: prompt followed by the response."""
    return f"{prompt} {response}" if prompt else response


@dataclass
class EncodedFeedback:
    """Tokenized feedback units; see the module docstring for shapes."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    kind: torch.Tensor
    label: torch.Tensor
    cache_dir: Path | None = None  # where derived tensors (frozen-prefix states) may be cached

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @property
    def num_pairs(self) -> int:
        return int((self.kind == PAIR).sum())

    def subset(self, index: torch.Tensor | Sequence[int]) -> EncodedFeedback:
        idx = torch.as_tensor(index, dtype=torch.long)
        return EncodedFeedback(
            self.input_ids[idx], self.lengths[idx], self.kind[idx], self.label[idx], self.cache_dir
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "lengths": self.lengths, "kind": self.kind, "label": self.label}

    @classmethod
    def concat(cls, parts: Sequence[EncodedFeedback]) -> EncodedFeedback:
        width = max(p.input_ids.shape[2] for p in parts)
        ids = [torch.nn.functional.pad(p.input_ids, (0, width - p.input_ids.shape[2])) for p in parts]
        return cls(
            torch.cat(ids),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.kind for p in parts]),
            torch.cat([p.label for p in parts]),
        )


def _units(records: Sequence[Feedback]) -> list[tuple[str, str | None, int, int]]:
    units: list[tuple[str, str | None, int, int]] = []
    for r in records:
        if isinstance(r, Correction):
            r = r.to_preference()
        if isinstance(r, Preference):
            units.append((join(r.prompt, r.chosen), join(r.prompt, r.rejected), PAIR, 1))
        elif isinstance(r, Rating):
            units.append((join(r.prompt, r.response), None, RATING, r.label))
        else:
            raise TypeError(f"not a feedback record: {type(r).__name__}")
    return units


def encode(
    records: Sequence[Feedback], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> EncodedFeedback:
    """Tokenize records (left-truncated to ``max_length``) into units."""
    units = _units(records)
    if not units:
        raise ValueError("no feedback records to encode")
    first = [u[0] for u in units]
    second = [u[1] if u[1] is not None else "" for u in units]
    enc = tokenizer(first + second, truncation=True, max_length=max_length, padding=False)
    ids = enc["input_ids"]
    n = len(units)
    width = max(len(x) for x in ids)
    input_ids = torch.full((n, 2, width), int(tokenizer.pad_token_id), dtype=torch.int32)
    lengths = torch.zeros((n, 2), dtype=torch.int32)
    for i in range(n):
        for slot in (0, 1):
            seq = ids[slot * n + i]
            if slot == 1 and units[i][1] is None:
                seq = seq[:1]  # ratings: a 1-token placeholder keeps the [N, 2, L] shape
            input_ids[i, slot, : len(seq)] = torch.tensor(seq, dtype=torch.int32)
            lengths[i, slot] = len(seq)
    kind = torch.tensor([u[2] for u in units], dtype=torch.int64)
    label = torch.tensor([u[3] for u in units], dtype=torch.float32)
    return EncodedFeedback(input_ids, lengths, kind, label)


def cache_key(records: Sequence[Feedback], tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """Hash of the data, the tokenizer (vocabulary and settings) and the max length."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                tokenizer.__class__.__name__,
                tokenizer.vocab_size,
                tokenizer.truncation_side,
                max_length,
                tokenizer.name_or_path.rsplit("/", 1)[-1],
            ]
        ).encode()
    )
    h.update(
        json.dumps(sorted(tokenizer.get_vocab().items())[:: max(1, tokenizer.vocab_size // 512)]).encode()
    )
    for r in records:
        h.update(repr(r).encode())
    return h.hexdigest()[:24]


def encode_cached(
    records: Sequence[Feedback],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: str | Path | None,
) -> EncodedFeedback:
    """:func:`encode`, reusing ``cache_dir/tokens-<key>.safetensors`` when present."""
    if cache_dir is None:
        return encode(records, tokenizer, max_length)
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ConfigError(f"cache directory {cache_dir} is a file, not a directory; give a directory")
    path = Path(cache_dir) / f"tokens-{cache_key(records, tokenizer, max_length)}.safetensors"
    if path.is_file():
        try:
            return EncodedFeedback(**load_file(path), cache_dir=Path(cache_dir))
        except Exception:  # a corrupt cache is only a cache: rebuild it
            path.unlink(missing_ok=True)
    data = encode(records, tokenizer, max_length)
    write_with(path, lambda tmp: save_file(data.tensors(), str(tmp)))
    data.cache_dir = Path(cache_dir)
    return data


def batch_tensors(input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim a batch to its longest sequence and build the attention mask ([B, 2, L'] each).

    ``input_ids`` may also be cached hidden states ``[B, 2, L, H]``, trimmed along L, or
    pooled features ``[B, 2, F]``, passed as they are (see :mod:`fedrlhf.models.prefix`).
    """
    width = max(int(lengths.max()), 1) if lengths.numel() else 1
    if input_ids.is_floating_point():  # cached states [B, 2, L, H] or pooled features [B, 2, F]
        ids = input_ids[:, :, :width] if input_ids.dim() == 4 else input_ids
    else:
        ids = input_ids[..., :width].long()
    mask = (torch.arange(width).view(1, 1, -1) < lengths.unsqueeze(-1)).long()
    return ids, mask
