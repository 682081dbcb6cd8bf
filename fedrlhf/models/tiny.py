"""Tiny backbones built from a config (no download), for tests, demos and CI.

They reuse the packaged MiniLM tokenizer's vocabulary, so a tiny model and the
real one tokenize identically.  Saved with ``save_pretrained``, the directory
loads through the ordinary ``from_pretrained(path)`` path like any HF model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from fedrlhf.config import DEFAULT_BACKBONE
from fedrlhf.models.backbone import resolve_backbone


def save_tiny_backbone(
    path: str | Path, *, kind: str = "bert", hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Write a randomly initialised tiny ``bert`` (encoder) or ``gpt2`` (decoder) to ``path``."""
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(DEFAULT_BACKBONE))
    torch.manual_seed(seed)
    model: PreTrainedModel
    if kind == "bert":
        bert_config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
        )
        model = BertModel(bert_config, add_pooling_layer=False)
    elif kind == "gpt2":
        gpt2_config = GPT2Config(
            vocab_size=tokenizer.vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=2,
            n_positions=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
        gpt2_config.architectures = ["GPT2LMHeadModel"]
        model = GPT2Model(gpt2_config)
    else:
        raise ValueError(f"kind must be 'bert' or 'gpt2', got {kind!r}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""A minimal chat template (role: content turns), enough to exercise chat-template generation."""


def save_tiny_causal_lm(path: str | Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Llama causal LM (the policy's architecture) to ``path``.

    Its tokenizer (the packaged MiniLM one) carries :data:`TINY_CHAT_TEMPLATE`; ``[SEP]`` ends
    an answer.  It loads with ``AutoModelForCausalLM.from_pretrained(path)`` like any HF model.
    """
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(DEFAULT_BACKBONE))
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.eos_token = tokenizer.sep_token  # an answer ends at [SEP]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
