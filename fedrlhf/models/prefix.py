"""LoRA on the top layers only, and the frozen layers below computed once.

With ``model.lora_layers = N`` only the top N transformer blocks carry LoRA; the
embeddings and the blocks below are frozen, so their output for a given text never
changes, whatever the global model. :func:`prefix_states` computes it once per
dataset (``[U, 2, L, H]`` float16, cached on disk by the training code) and
:class:`TopStack` runs the top N blocks, the pooling and the head on it. Training
then costs N / num_layers of a full pass per epoch, which is what makes the many
epochs of DP training affordable on a CPU.

The cached path is used for encoders whose blocks take ``(hidden, attention_mask)``
with a bidirectional mask (BERT, MiniLM, RoBERTa, ...); other backbones train on the
full model as before (:func:`supports_prefix_cache`). The top blocks' parameters are
the reward model's own, so what :class:`TopStack` trains is what the model saves.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from fedrlhf.errors import ModelError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from fedrlhf.models.reward import RewardModel

_BIDIRECTIONAL = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet"}


def num_layers(config: object) -> int:
    """Transformer blocks of a backbone config (``num_hidden_layers`` or its aliases)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelError(f"cannot tell how many layers backbone {type(config).__name__} has")


def transformer_blocks(base: nn.Module, config: object) -> tuple[str, nn.ModuleList]:
    """(dotted name, module list) of the backbone's stack of transformer blocks."""
    n = num_layers(config)
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise ModelError(f"backbone {type(base).__name__} has no list of {n} transformer blocks")


def top_layer_targets(
    base: nn.Module, config: object, layers: int, targets: tuple[str, ...], *, section: str = "model"
) -> list[str]:
    """Full names of the linear modules LoRA wraps in the top ``layers`` blocks.

    ``targets`` are module-name suffixes, or ``("all-linear",)`` for every linear layer; errors
    name the settings as ``section.lora_layers`` / ``section.lora_target_modules``.
    """
    name, blocks = transformer_blocks(base, config)
    if layers > len(blocks):
        raise ModelError(f"{section}.lora_layers is {layers}, but the backbone has only {len(blocks)} layers")
    chosen = []
    for index in range(len(blocks) - layers, len(blocks)):
        for sub, module in blocks[index].named_modules():
            if not isinstance(module, (nn.Linear, Conv1D)):  # Conv1D: GPT-2's linear layers
                continue
            if targets == ("all-linear",) or any(sub == t or sub.endswith(f".{t}") for t in targets):
                chosen.append(f"{name}.{index}.{sub}")
    if not chosen:
        raise ModelError(
            f"{section}.lora_target_modules {list(targets)} match nothing in the top {layers} layers"
        )
    return chosen


def _base(model: RewardModel) -> PreTrainedModel:
    return cast(PreTrainedModel, model.backbone.get_base_model())  # the transformers model build() got


def supports_prefix_cache(model: RewardModel) -> bool:
    """True when the frozen part's output can be cached: a head-only model (any backbone: the
    pooled features), or LoRA on the top layers of an encoder (the states below them)."""
    if model.config.trainable == "head":
        return True
    config = _base(model).config
    return bool(model.config.lora_layers) and getattr(config, "model_type", "") in _BIDIRECTIONAL


@contextmanager
def _bottom_only(model: RewardModel) -> Iterator[None]:
    """Temporarily cut the block list to the frozen blocks (the model then returns their output)."""
    base = _base(model)
    name, blocks = transformer_blocks(base, base.config)
    parent = base.get_submodule(name.rsplit(".", 1)[0]) if "." in name else base
    attr = name.rsplit(".", 1)[-1]
    setattr(parent, attr, nn.ModuleList(list(blocks)[: len(blocks) - model.config.lora_layers]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


@torch.no_grad()
def prefix_states(
    model: RewardModel, input_ids: torch.Tensor, lengths: torch.Tensor, *, batch_size: int = 8
) -> torch.Tensor:
    """The frozen part's output for units ``input_ids`` [U, 2, L].

    Head-only models: the pooled features the head reads, ``[U, 2, F]`` float32. LoRA on
    the top layers: the output of the blocks below them, ``[U, 2, L, H]`` float16, zero
    past each text's length (masked out above anyway).
    """
    if not supports_prefix_cache(model):
        raise ModelError("the frozen-prefix cache needs model.lora_layers > 0 on an encoder backbone")
    if model.config.trainable == "head":
        out = torch.zeros(*input_ids.shape[:2], model.head.in_features)
        return _per_slot(model, input_ids, lengths, batch_size, out, model.features)
    base = _base(model)

    def below(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[:, :, None]).half()

    out = torch.zeros(*input_ids.shape, base.config.hidden_size, dtype=torch.float16)
    with _bottom_only(model):
        return _per_slot(base, input_ids, lengths, batch_size, out, below)


def _per_slot(
    module: nn.Module,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    out: torch.Tensor,
    compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Fill ``out[u, slot]`` with ``compute(ids, mask)`` over batches of texts, ``module`` in eval mode.

    Texts go in order of length, each batch cut to its longest text: padding past every text of a
    batch is masked out anyway, so it is not computed (on the synthetic cohort at 64 tokens, a
    quarter of the positions were padding).
    """
    was_training = module.training
    module.eval()
    try:
        for slot in (0, 1):
            order = torch.argsort(lengths[:, slot], stable=True)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                span = lengths[rows, slot]
                width = max(1, int(span.max()))
                ids = input_ids[rows, slot, :width].long()
                mask = (torch.arange(width).view(1, -1) < span[:, None]).long()
                result = compute(ids, mask)
                if out.dim() == 4:  # states [U, 2, L, H]: the positions past the batch's width stay 0
                    out[rows, slot, :width] = result
                else:
                    out[rows, slot] = result
    finally:
        module.train(was_training)
    return out


class TopStack(nn.Module):
    """The top ``lora_layers`` blocks + pooling + head of a reward model, on cached hidden states.

    ``forward(hidden [B, L, H], mask [B, L]) -> rewards [B]``, like ``RewardModel.forward`` on
    tokens. Holds the reward model's own modules (no copies).
    """

    def __init__(self, model: RewardModel) -> None:
        super().__init__()
        base = _base(model)
        _, blocks = transformer_blocks(base, base.config)
        top = model.config.lora_layers  # 0 for a head-only model: no block runs
        self.blocks = nn.ModuleList(list(blocks)[len(blocks) - top :] if top else [])
        self.head = model.head
        self.personal_head = model.personal_head  # head-only personalisation (None otherwise)
        self._score = model.score_features
        self._config: PreTrainedConfig = base.config
        self._pooling = model.pooling
        self._pool_layers = model.config.pool_layers

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Rewards [B] from cached states [B, L, H] (or, head-only, pooled features [B, F])."""
        from transformers.masking_utils import create_bidirectional_mask

        from fedrlhf.models.reward import pool_states

        if not self.blocks:
            return self._score(hidden.float())
        states = [hidden.float()]
        attention = create_bidirectional_mask(
            config=self._config, inputs_embeds=states[0], attention_mask=mask
        )
        for block in self.blocks:
            out = block(states[-1], attention_mask=attention)
            states.append(out[0] if isinstance(out, tuple) else out)
        return self._score(pool_states(states[-self._pool_layers :], mask, self._pooling))
