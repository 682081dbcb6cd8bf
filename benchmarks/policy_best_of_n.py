"""Best-of-n on HH-RLHF harmless: does reranking with a reward model give better answers?

    python benchmarks/policy_best_of_n.py [--prompts 40] [-n 4] [--max-new-tokens 48] [--threads 2]

The shared HH harmless set (1,644 pairs) is split three ways, with no overlap:
pairs [0, 700) train the *selector* reward model, pairs [700, 1400) train an
independent *judge*, and the prompts of pairs [1400, ...) are answered.  The policy
(SmolLM2-135M-Instruct, the [policy] extra) writes n answers per prompt; best-of-1
is the first sample, best-of-n the selector's pick.  The judge decides which is
better (the same answer is a tie, counted 1/2).  Prints one JSON line: the win rate
of best-of-n over best-of-1 with its standard error, by the judge and by the
selector, and both reward models' held-out pairwise accuracy on pairs [1400, ...).
Both reward models use the head-on-frozen-MiniLM recipe (non-private).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


def _reward_model(pairs: list, seed: int) -> object:
    from fedrlhf.config import DP_RECIPE, ModelConfig, TrainConfig
    from fedrlhf.training.session import fit

    model_cfg = ModelConfig(max_length=128, trainable="head", pool_layers=DP_RECIPE["model.pool_layers"])
    train_cfg = TrainConfig(epochs=100, batch_size=0, lr=0.02, seed=seed)
    return fit(pairs, model_cfg, train_cfg, progress=False).model


def _win_rate(first: np.ndarray, best: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    wins = np.where(same, 0.5, (best > first) + 0.5 * (best == first))
    p = float(wins.mean())
    return p, math.sqrt(max(p * (1 - p), 1e-12) / len(wins))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policy", default="smollm2")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from fedrlhf.feedback import read_preferences
    from fedrlhf.models.policy import PolicyConfig, PolicyModel, resolve_policy
    from fedrlhf.rerank import rank
    from fedrlhf.training import encode, evaluate

    start = time.perf_counter()
    pairs = read_preferences(HH)
    held_out = pairs[1400:]
    selector, judge = _reward_model(pairs[:700], 0), _reward_model(pairs[700:1400], 1)
    acc = {
        name: evaluate(m, encode(held_out, m.tokenizer, m.config.max_length)).accuracy  # type: ignore[attr-defined]
        for name, m in (("selector", selector), ("judge", judge))
    }
    prompts = list(dict.fromkeys(x.prompt for x in held_out))[: args.prompts]
    policy = PolicyModel.build(PolicyConfig(base=resolve_policy(args.policy), max_length=384))
    gen_start = time.perf_counter()
    answers = policy.generate(prompts, n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
    gen_seconds = time.perf_counter() - gen_start
    picks = np.array([r.best for r in rank(selector, prompts, answers)])  # type: ignore[arg-type]
    same = picks == 0
    out: dict[str, object] = {"prompts": len(prompts), "n": args.n, "max_new_tokens": args.max_new_tokens}
    for name, model in (("judge", judge), ("selector", selector)):
        scores = [r.scores for r in rank(model, prompts, answers)]  # type: ignore[arg-type]
        first = np.array([s[0] for s in scores])
        best = np.array([s[k] for s, k in zip(scores, picks, strict=True)])
        rate, se = _win_rate(first, best, same)
        out[f"win_rate_by_{name}"] = round(rate, 4)
        out[f"win_rate_by_{name}_se"] = round(se, 4)
    out.update(
        selector_heldout_accuracy=round(acc["selector"], 4),
        judge_heldout_accuracy=round(acc["judge"], 4),
        best_is_first_sample=int(same.sum()),
        generate_seconds=round(gen_seconds, 1),
        seconds=round(time.perf_counter() - start, 1),
        threads=torch.get_num_threads(),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
