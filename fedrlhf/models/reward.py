"""The reward model: a frozen Hugging Face backbone + peft LoRA + a scalar head.

``RewardModel`` is pure (modules and config, no training); the training loop and
the CLI own side effects.  Shapes: token tensors are ``[B, L]``; preference
batches are ``[B, 2, L]`` (chosen, rejected) so that one pair is one sample.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from peft import (
    LoraConfig,
    LoraModel,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedrlhf.config import ModelConfig, from_dict
from fedrlhf.errors import ConfigError, FedRLHFError, ModelError
from fedrlhf.io import atomic_directory, recover_directory
from fedrlhf.models.backbone import is_decoder, load_backbone
from fedrlhf.models.prefix import num_layers, top_layer_targets

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

GLOBAL_ADAPTER = "default"
"""peft adapter name of the shared (federated) LoRA."""
PERSONAL_ADAPTER = "personal"
"""peft adapter name of the device-local LoRA ("backpack"); never leaves the device."""
CONFIG_FILE = "fedrlhf_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"
_HEADS = ("head.", "personal_head.")  # what a head-only model trains
FORMAT = "fedrlhf-reward-model"


def _lora_config(config: ModelConfig, base: PreTrainedModel) -> LoraConfig:
    targets: str | list[str]
    if config.lora_layers:  # full module names inside the top blocks (peft's layers_to_transform
        # cannot be combined with "all-linear")
        targets = top_layer_targets(base, base.config, config.lora_layers, tuple(config.lora_target_modules))
    elif list(config.lora_target_modules) == ["all-linear"]:
        targets = "all-linear"
    else:
        targets = list(config.lora_target_modules)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
    )


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Summarise ``hidden`` [B, L, H] under ``mask`` [B, L] into [B, H]."""
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "last":  # right padding: last real token sits at length - 1
        last = (mask.sum(1) - 1).clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return hidden[:, 0]  # "cls"


def pool_states(states: Sequence[torch.Tensor], mask: torch.Tensor, how: str) -> torch.Tensor:
    """Each of ``states`` ([B, L, H]) pooled under ``mask``, concatenated: [B, H * len(states)]."""
    return torch.cat([pool(h, mask, how) for h in states], dim=-1)


class RewardModel(nn.Module):
    """Scalar reward r(prompt + response) = head(pool(backbone_lora(tokens))).

    Build a fresh one with :meth:`build`, load a saved one with :meth:`from_pretrained`.
    Only LoRA adapters and the head are trainable; the backbone stays frozen.
    """

    def __init__(
        self, backbone: PeftModel, tokenizer: PreTrainedTokenizerBase, config: ModelConfig, pooling: str
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.pooling = pooling
        # peft types get_base_model() as a bare nn.Module; it is the transformers model given to build()
        base = cast(PreTrainedModel, backbone.get_base_model())
        self.head = nn.Linear(base.config.hidden_size * config.pool_layers, 1)
        if config.trainable == "head":
            # the head is the whole trainable model: start it as the constant model (50 %, ties
            # count half), so everything it scores is what the data taught it. A seeded random
            # head is a random linear rule on the frozen features, which scored 54.4 % on the HH
            # split by chance and which DP at epsilon 1 then had to unlearn; the DP recipe was
            # chosen by cross-validation from a zero head (benchmarks/dp_head_cv.py).
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        # head-only models personalise with a device-local head of the same shape, added to the
        # global one and starting at zero (the "backpack" of a model without adapters)
        self.personal_head: nn.Linear | None = None
        self._personal_on = False
        if config.personal_adapter and config.trainable == "head":
            self.personal_head = nn.Linear(self.head.in_features, 1)
            nn.init.zeros_(self.personal_head.weight)
            nn.init.zeros_(self.personal_head.bias)

    @classmethod
    def build(cls, config: ModelConfig | None = None, *, seed: int = 0) -> RewardModel:
        """A new reward model: pretrained backbone, fresh LoRA (B = 0) and a seeded head (a zero
        head when only the head trains)."""
        config = config or ModelConfig()
        base, tokenizer = load_backbone(config.backbone)
        limit = position_limit(base.config, tokenizer)
        if limit is not None and config.max_length > limit:
            raise ConfigError(
                f"model.max_length (--max-length) is {config.max_length}, but backbone "
                f"{config.backbone!r} takes at most {limit} tokens; use {limit} or less"
            )
        available = num_layers(base.config) + 1  # the embeddings' output counts as a layer here
        if config.pool_layers > available:  # "the last K layers" of a shallower backbone: all of them
            config = dataclasses.replace(config, pool_layers=available)
        pooling = config.pooling
        if pooling == "auto":
            pooling = "last" if is_decoder(base.config) else "mean"
        torch.manual_seed(seed)
        try:
            lora = _lora_config(config, base)
            peft_model = get_peft_model(base, lora, adapter_name=GLOBAL_ADAPTER)
        except ValueError as exc:
            raise ModelError(f"model.lora_target_modules: {exc}") from None
        if config.personal_adapter and config.trainable == "lora":
            peft_model.add_adapter(PERSONAL_ADAPTER, lora)
        model = cls(peft_model, tokenizer, config, pooling)
        model.set_trainable("global")
        model.use_personal(False)
        return model

    def set_trainable(self, part: str) -> None:
        """Make ``"global"`` (LoRA + head), ``"personal"`` (personal LoRA) or ``"all"`` trainable."""
        if part not in ("global", "personal", "all"):
            raise ValueError(f"part must be global, personal or all, got {part!r}")
        if part == "personal" and not self.config.personal_adapter:
            raise ModelError("this model has no personal adapter (model.personal_adapter = false)")
        for name, param in self.named_parameters():
            kind = self.part_of(name)
            param.requires_grad_(kind is not None and (part == "all" or kind == part))

    def use_personal(self, on: bool) -> None:
        """Activate the personal adapter on top of the global one (``on``) or the global one alone."""
        if not self.config.personal_adapter:
            if on:
                raise ModelError("this model has no personal adapter (model.personal_adapter = false)")
            return
        self._personal_on = on
        if self.personal_head is not None:
            return  # head-only: the personal head is added in score_features, no adapter to switch
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        tuner = cast(LoraModel, self.backbone.base_model)  # peft types base_model as a bare nn.Module
        tuner.set_adapter([GLOBAL_ADAPTER, PERSONAL_ADAPTER] if on else [GLOBAL_ADAPTER])
        for n, p in self.named_parameters():  # peft's set_adapter also flips requires_grad: restore it
            p.requires_grad_(n in trainable)

    def part_of(self, name: str) -> str | None:
        """Which trainable part parameter ``name`` is: global, personal or None (frozen)."""
        part = parameter_part(name)
        if part is not None and self.config.trainable == "head" and not name.startswith(_HEADS):
            return None  # head-only: the adapters stay at zero and never travel
        return part

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the head reads [B, H * pool_layers]: the last ``pool_layers`` states, pooled."""
        k = self.config.pool_layers
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=k > 1)
        if k == 1:
            return pool(out.last_hidden_state, attention_mask, self.pooling)
        return pool_states(out.hidden_states[-k:], attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards [B] for token ids / mask [B, L]."""
        return self.score_features(self.features(input_ids, attention_mask))

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Rewards [B] from what the head reads [B, F]: the global head, plus the personal head
        of a head-only model while the personal part is on."""
        reward = self.head(features)
        if self.personal_head is not None and self._personal_on:
            reward = reward + self.personal_head(features)
        return reward.squeeze(-1)

    def score_units(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards [B, 2] for units [B, 2, L]: two encoder calls, one per slot.

        Two calls of ``[B, L]`` (not one of ``[2B, L]``) keep the pair as ONE
        sample for Opacus' per-sample gradients.
        """
        first = self(input_ids[:, 0], attention_mask[:, 0])
        second = self(input_ids[:, 1], attention_mask[:, 1])
        return torch.stack([first, second], dim=1)

    # ---- persistence -------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, *, extra_json: Mapping[str, Any] | None = None) -> None:
        """Write the global adapter (plain peft format), head (safetensors), tokenizer and config.

        ``extra_json`` maps file names to objects written as JSON beside them (e.g. a
        training summary).  The directory is replaced atomically, and only when it is
        missing, empty or a directory fedrlhf wrote (else :class:`~fedrlhf.errors.OutputError`).
        The personal adapter is never saved here.
        """
        meta = {
            "format": FORMAT,
            "version": 1,
            "pooling": self.pooling,
            "model": dataclasses.asdict(self.config),
        }
        with atomic_directory(path, legacy=(CONFIG_FILE,)) as tmp:
            self.backbone.save_pretrained(str(tmp), selected_adapters=[GLOBAL_ADAPTER])
            save_file(
                {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, tmp / HEAD_FILE
            )
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            for name, obj in (extra_json or {}).items():
                (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, *, personal_adapter: bool | None = None) -> RewardModel:
        """Load a directory written by :meth:`save_pretrained`.

        A missing, truncated or corrupt file is a :class:`~fedrlhf.errors.ModelError` naming it.
        """
        path = Path(path)
        recover_directory(path)
        config = _read_meta(path)
        if personal_adapter is not None:
            config = dataclasses.replace(config, personal_adapter=personal_adapter)
        try:
            model = cls.build(config)
        except FedRLHFError as exc:
            raise ModelError(f"{path / CONFIG_FILE}: {exc}") from None
        adapter_file = path / ADAPTER_FILE
        adapter, head = _read_tensors(adapter_file), _read_tensors(path / HEAD_FILE)
        try:
            # peft annotates the result as ``namedtuple``; it is torch's load_state_dict result
            result = cast(
                "_IncompatibleKeys",
                set_peft_model_state_dict(model.backbone, adapter, adapter_name=GLOBAL_ADAPTER),
            )
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = f"does not fit the model in {CONFIG_FILE}: {_line(exc)}"
            raise ModelError(f"{adapter_file}: {reason}") from None
        missing = [k for k in result.missing_keys if f".{GLOBAL_ADAPTER}." in k and "lora_" in k]
        if missing:
            raise ModelError(f"{adapter_file}: missing {len(missing)} LoRA tensors, e.g. {missing[0]}")
        try:
            model.head.load_state_dict(head)
        except RuntimeError as exc:
            raise ModelError(f"{path / HEAD_FILE}: does not fit the model: {_line(exc)}") from None
        return model

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The global adapter as peft names it (what ``PeftModel.from_pretrained`` loads)."""
        return get_peft_model_state_dict(self.backbone, adapter_name=GLOBAL_ADAPTER)


def parameter_part(name: str) -> str | None:
    """Which trainable part a parameter name belongs to: global, personal, or None (frozen base)."""
    if name.startswith("head."):
        return "global"
    if name.startswith("personal_head."):
        return "personal"
    if "lora_" in name:
        if f".{PERSONAL_ADAPTER}." in name or name.endswith(f".{PERSONAL_ADAPTER}"):
            return "personal"
        if f".{GLOBAL_ADAPTER}." in name or name.endswith(f".{GLOBAL_ADAPTER}"):
            return "global"
    return None


def _line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


def _read_meta(path: Path) -> ModelConfig:
    """The model config in ``path/fedrlhf_config.json``; a missing or broken file is a ModelError."""
    meta_file = path / CONFIG_FILE
    if not meta_file.is_file():
        raise ModelError(f"{path} is not a fedrlhf reward model: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{meta_file}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelError(f"{meta_file}: not valid JSON (corrupt or truncated): {_line(exc)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{meta_file}: not a {FORMAT} config (format {found!r})")
    if not isinstance(meta.get("model"), dict):
        raise ModelError(f"{meta_file}: 'model' must be an object of model settings")
    try:
        return from_dict(ModelConfig, meta["model"], section="model")
    except FedRLHFError as exc:
        raise ModelError(f"{meta_file}: {exc}") from None


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of finite tensors; a missing, truncated or corrupt one is a ModelError."""
    if not file.is_file():
        raise ModelError(f"{file} is missing: the model directory is incomplete")
    try:
        tensors = load_file(file)
    except (OSError, SafetensorError) as exc:
        reason = f"not a readable safetensors file (corrupt or truncated): {_line(exc)}"
        raise ModelError(f"{file}: {reason}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{file}: tensor {name!r} holds nan or inf values (the file is corrupt)")
    return tensors


def position_limit(base_config: object, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Most tokens the backbone takes: its position embeddings and the tokenizer's limit, or None."""
    limits = [getattr(base_config, "max_position_embeddings", None), tokenizer.model_max_length]
    found = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]  # HF's "no limit" is 1e30
    return min(found) if found else None
