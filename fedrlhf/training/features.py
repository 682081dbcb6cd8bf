"""What the training loop runs on: the reward model on tokens, or its top layers on cached states.

With ``model.lora_layers = N`` on an encoder (:func:`fedrlhf.models.prefix.supports_prefix_cache`)
the frozen layers' output is computed once per dataset, kept in memory for the process and
on disk beside the token cache (``DATA.cache_dir/prefix-<key>.safetensors``), and the loop
trains :class:`~fedrlhf.models.prefix.TopStack` on it. Anything else trains the whole model
on tokens, as before. Either way one unit (pair or rating) stays one sample: the tensors are
``[U, 2, ...]`` with the pair in dimension 1.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedrlhf.io import write_with
from fedrlhf.models.prefix import TopStack, prefix_states, supports_prefix_cache
from fedrlhf.models.reward import RewardModel
from fedrlhf.training.data import EncodedFeedback

_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()
_MEMORY_ITEMS = 4  # a worker keeps the last few datasets' states (a device round reuses its own)


def prefix_key(model: RewardModel, data: EncodedFeedback) -> str:
    """Hash of the backbone, what is cached (states below the adapters, or pooled features) and the
    tokens: everything the frozen part's output depends on."""
    h = hashlib.sha256()
    c = model.config
    h.update(f"{c.backbone}|{c.trainable}|{c.lora_layers}|{c.pool_layers}|{model.pooling}|prefix-v1".encode())
    h.update(data.input_ids.numpy().tobytes())
    h.update(data.lengths.numpy().tobytes())
    return h.hexdigest()[:24]


def cached_prefix_states(model: RewardModel, data: EncodedFeedback) -> torch.Tensor:
    """:func:`~fedrlhf.models.prefix.prefix_states` of ``data``, from memory or disk when known."""
    key = prefix_key(model, data)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = data.cache_dir / f"prefix-{key}.safetensors" if data.cache_dir is not None else None
    states = None
    if path is not None and path.is_file():
        try:
            states = load_file(path)["states"]
        except Exception:  # a corrupt cache is only a cache: rebuild it
            path.unlink(missing_ok=True)
    if states is None:
        states = prefix_states(model, data.input_ids, data.lengths)
        if path is not None:
            tensors = {"states": states}
            write_with(path, lambda tmp: save_file(tensors, str(tmp)))
    _MEMORY[key] = states
    while len(_MEMORY) > _MEMORY_ITEMS:
        _MEMORY.popitem(last=False)
    return states


def training_view(model: RewardModel, data: EncodedFeedback) -> tuple[nn.Module, list[torch.Tensor]]:
    """(module the loop trains, dataset tensors ``[inputs, lengths, kind, label]``)."""
    if supports_prefix_cache(model):
        return TopStack(model), [cached_prefix_states(model, data), data.lengths, data.kind, data.label]
    return model, [data.input_ids, data.lengths, data.kind, data.label]
