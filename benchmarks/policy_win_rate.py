"""Do the policy's answers get better? Win rate by the synthetic cohort's true utility.

    python benchmarks/policy_win_rate.py --config simulations/dpo-synthetic-ddp.toml --tuned runs/dpo/model
    python benchmarks/policy_win_rate.py --config simulations/dpo-synthetic.toml --central-epochs 3
    python benchmarks/policy_win_rate.py --config simulations/quickstart.toml \
        --reward-model runs/quickstart/model -n 4

Held-out items are the test pairs' prompts of the config's synthetic cohort, each with the
utility of the user who holds it (users past the cohort's own are drawn from the same
population when ``--prompts`` asks for more). The base policy (``[policy] model``, LoRA off)
and a challenger each answer every item once (sampled, temperature 0.7, the same seed). The
challenger is one of:

- ``--tuned DIR``: a saved policy, e.g. ``fedrlhf simulate``'s ``model/`` of a ``dpo`` run;
- ``--central-epochs E``: centralized, non-private DPO on all the cohort's training pairs
  pooled (the reference federated DPO is measured against; ``--save DIR`` keeps it);
- ``--reward-model DIR -n N``: best-of-N of the base policy, ranked by that reward model
  (best-of-1 is the base's first sample, so the comparison is best-of-N vs best-of-1).

Every answer is scored by the holder's true utility (:mod:`fedrlhf.simulation.utility`,
which reads the cohort's attributes off the wording and scores an incoherent answer below any
the cohort renders). Prints one JSON line: mean utility of
base and challenger, their paired difference and the win rate (ties count 1/2), each with its
standard error, the share of answers with each attribute (base vs challenger) and, for a
trained challenger, its implicit-reward accuracy on the cohort's held-out pairs (the server's).
``--set section.key=value`` overrides the config as ``fedrlhf simulate --set`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch


def _items(cfg, count: int) -> tuple[list[str], list[np.ndarray]]:
    """``count`` held-out (prompt, user weights), taking each user's test pairs in turn."""
    from fedrlhf.simulation.cohorts import make_user
    from fedrlhf.simulation.run import synthetic_config

    cohort = synthetic_config(cfg)
    if cohort.test_pairs_per_user < 1:
        raise SystemExit("the cohort has no test pairs (cohort.test_pairs_per_user = 0)")
    big = dataclasses.replace(cohort, num_users=cohort.num_users + count)
    prompts: list[str] = []
    weights: list[np.ndarray] = []
    user = 0
    while len(prompts) < count:
        data = make_user(big, user)
        for pair in data.test[: count - len(prompts)]:
            prompts.append(pair.prompt)
            weights.append(data.weights)
        user += 1
    return prompts, weights


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def _central(cfg, users: list, epochs: int, seed: int):
    """Centralized non-private DPO of a fresh policy on the cohort's pooled training pairs."""
    from fedrlhf.config import TrainConfig
    from fedrlhf.models.policy import PolicyModel
    from fedrlhf.training.dpo import encode_policy, reference_logps, train_policy
    from fedrlhf.training.policy_task import policy_config

    pairs = [p for user in users for p in user.train]
    policy = PolicyModel.build(policy_config(cfg.policy), seed=seed)
    data = reference_logps(policy, encode_policy(pairs, policy))
    train = TrainConfig(epochs=epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr, seed=seed)
    train_policy(policy, data, train, beta=cfg.policy.beta, rpo_alpha=cfg.policy.rpo_alpha)
    return policy, len(pairs)


def _users(cfg, pool: Path | None) -> list:
    """The cohort's users: rendered pairs, or pairs over the base policy's answers
    (``cohort.responses = "policy"``; the pool read from a run's ``pool`` file when there is one)."""
    from fedrlhf.simulation.cohorts import iter_users
    from fedrlhf.simulation.run import policy_users, synthetic_config

    if cfg.cohort.responses == "policy":
        return policy_users(cfg, pool if pool is not None and pool.is_file() else None)
    return list(iter_users(synthetic_config(cfg)))


def _implicit_accuracy(cfg, policy, users: list) -> float:
    """The policy's implicit-reward accuracy on the cohort's held-out pairs (the server's test set)."""
    from fedrlhf.training.dpo import encode_policy, implicit_reward_accuracy, reference_logps

    pairs = [p for user in users for p in user.test]
    return implicit_reward_accuracy(
        policy, reference_logps(policy, encode_policy(pairs, policy)), beta=cfg.policy.beta
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a simulation config with a synthetic [cohort]")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--tuned", help="a saved policy directory")
    who.add_argument("--central-epochs", type=int, help="train centralized non-private DPO first")
    who.add_argument("--reward-model", help="best-of-n of the base policy, ranked by this reward model")
    p.add_argument("-n", type=int, default=4, help="candidates per prompt with --reward-model")
    p.add_argument("--save", help="with --central-epochs: save the trained policy here")
    p.add_argument("--prompts", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the config"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from fedrlhf.config import load_run_config
    from fedrlhf.models.policy import PolicyModel
    from fedrlhf.simulation.cohorts import FEATURES
    from fedrlhf.simulation.utility import answer_features, is_coherent, utilities
    from fedrlhf.training.policy_task import policy_config

    start = time.perf_counter()
    cfg = load_run_config(args.config, args.set)
    if cfg.cohort.kind != "synthetic":
        kind = cfg.cohort.kind
        raise SystemExit(f"{args.config}: true utility needs a synthetic cohort, got cohort.kind = {kind!r}")
    prompts, weights = _items(cfg, args.prompts)
    base = PolicyModel.build(policy_config(cfg.policy), seed=args.seed)
    gen = {"max_new_tokens": args.max_new_tokens, "seed": args.seed}
    out: dict[str, object] = {"config": args.config, "items": len(prompts)}
    out["max_new_tokens"] = args.max_new_tokens
    if args.reward_model:
        from fedrlhf.models import RewardModel
        from fedrlhf.rerank import rank

        candidates = base.generate(prompts, n=args.n, **gen)
        picks = [r.best for r in rank(RewardModel.from_pretrained(args.reward_model), prompts, candidates)]
        base_answers = [c[0] for c in candidates]
        answers = [c[k] for c, k in zip(candidates, picks, strict=True)]
        out.update(challenger=f"best-of-{args.n}", reward_model=args.reward_model, base="best-of-1")
    else:
        from fedrlhf.simulation.policy_pairs import POOL_FILE

        # the cohort's pairs, once: a policy-answers cohort reads a --tuned run's pool
        users = _users(cfg, Path(args.tuned).parent / POOL_FILE if args.tuned else None)
        base_answers = [a[0] for a in base.generate(prompts, **gen)]
        if args.tuned:
            tuned = PolicyModel.from_pretrained(args.tuned)
            out.update(challenger=args.tuned)
        else:
            tuned, pooled = _central(cfg, users, args.central_epochs, args.seed)
            out.update(challenger=f"central non-private DPO, {args.central_epochs} epochs")
            out["pooled_pairs"] = pooled
            if args.save:
                tuned.save_pretrained(args.save)
        answers = [a[0] for a in tuned.generate(prompts, **gen)]
        out["implicit_accuracy"] = round(_implicit_accuracy(cfg, tuned, users), 4)
    u_base, u_new = utilities(weights, prompts, base_answers), utilities(weights, prompts, answers)
    wins = np.where(u_new > u_base, 1.0, np.where(u_new < u_base, 0.0, 0.5))
    series = (("utility_base", u_base), ("utility_challenger", u_new), ("utility_gain", u_new - u_base))
    for name, x in series:
        mean, se = _mean_se(x)
        out[name], out[f"{name}_se"] = round(mean, 4), round(se, 4)
    rate, se = _mean_se(wins)
    out.update(win_rate=round(rate, 4), win_rate_se=round(se, 4), ties=int((wins == 0.5).sum()))
    fb = np.array([answer_features(q, a) for q, a in zip(prompts, base_answers, strict=True)]).mean(axis=0)
    fc = np.array([answer_features(q, a) for q, a in zip(prompts, answers, strict=True)]).mean(axis=0)
    shares = zip(FEATURES, fb, fc, strict=True)
    out["attribute_share"] = {f: [round(float(b), 3), round(float(c), 3)] for f, b, c in shares}
    out["attribute_share"]["incoherent"] = [
        round(float(np.mean([not is_coherent(a) for a in side])), 3) for side in (base_answers, answers)
    ]
    shown = zip(prompts[:3], base_answers[:3], answers[:3], strict=True)
    out["examples"] = [{"prompt": q, "base": b, "challenger": a} for q, b, a in shown]
    out.update(seconds=round(time.perf_counter() - start, 1), threads=torch.get_num_threads())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
