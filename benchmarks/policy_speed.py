"""Policy speed and memory on this machine: SmolLM2 preparation, generation, DPO steps (DP vs not).

    python benchmarks/policy_speed.py generate [--threads 2] [-n 4] [--max-new-tokens 64]
    python benchmarks/policy_speed.py dpo-step [--dp] [--threads 2] [--batch 4] [--max-length 256]

Needs the [policy] extra (SmolLM2-135M-Instruct), or ``--policy DIR`` for another causal LM.
Each mode prints one JSON line; run ``dpo-step`` once with and once without ``--dp`` (separate
processes, so each peak RSS is its own).  DPO pairs come from the shared HH-RLHF harmless set.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"
PROMPT = "\n\nHuman: How do I keep my houseplants alive while I am away for two weeks?\n\nAssistant:"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(args: argparse.Namespace) -> dict[str, object]:
    from fedrlhf.models.policy import PolicyConfig, PolicyModel, resolve_policy

    start = time.perf_counter()
    base = resolve_policy(args.policy)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    policy = PolicyModel.build(PolicyConfig(base=base))
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    [answers] = policy.generate([PROMPT], n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
    seconds = time.perf_counter() - start
    return {
        "mode": "generate",
        "threads": torch.get_num_threads(),
        "prepare_s": round(prepared, 1),
        "load_s": round(loaded, 1),
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "generate_s": round(seconds, 2),
        "answer": answers[0],
        "peak_rss_mib": round(_peak_mib()),
    }


def dpo_step(args: argparse.Namespace) -> dict[str, object]:
    from fedrlhf.config import PrivacyConfig, TrainConfig
    from fedrlhf.feedback import read_preferences
    from fedrlhf.models.policy import PolicyConfig, PolicyModel, resolve_policy
    from fedrlhf.training.dpo import encode_policy, reference_logps, train_policy

    pairs = read_preferences(HH)[: args.batch * args.steps]
    policy = PolicyModel.build(PolicyConfig(base=resolve_policy(args.policy), max_length=args.max_length))
    data = reference_logps(policy, encode_policy(pairs, policy), batch_size=args.batch)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=1e-4)
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0) if args.dp else None
    with tempfile.TemporaryDirectory() as tmp:
        result, _ = train_policy(policy, data, cfg, privacy=privacy, ledger_path=Path(tmp) / "ledger.json")
    return {
        "mode": "dpo-step",
        "dp": args.dp,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "max_length": args.max_length,
        "tokens_per_pair": float(data.lengths.float().mean() * 2),
        "steps": result.steps,
        "seconds_per_step": round(result.seconds / max(result.steps, 1), 2),
        "peak_rss_mib": round(_peak_mib()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["generate", "dpo-step"])
    p.add_argument("--policy", default="smollm2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dp", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(generate(args) if args.mode == "generate" else dpo_step(args)))


if __name__ == "__main__":
    main()
