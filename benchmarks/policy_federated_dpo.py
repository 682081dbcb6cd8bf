"""Federated DPO of a policy LoRA on HH-RLHF harmless, with DP, outside Flower.

    python benchmarks/policy_federated_dpo.py [--clients 4] [--pairs 8] [--rounds 2] [--epsilon 8]
        [--rule mean] [--heldout 32] [--max-length 128] [--policy smollm2] [--threads 1]

Each device holds ``--pairs`` HH pairs of its own (pairs [0, clients * pairs)); every round
every device starts from the global LoRA, runs DP-SGD DPO on its pairs (one pair = one
sample, its own privacy ledger; the target epsilon spans all rounds) and sends only its
flat LoRA delta; the server combines the deltas with fedrlhf's own aggregation step
(``fedrlhf.federation.aggregate.aggregate_updates``, rule ``--rule``) and FedAvg's update.
Centralized non-private DPO on the same pooled pairs is the comparison.  Prints one JSON
line: implicit-reward accuracy (beta * log-ratio ranks chosen first) on held-out pairs
[1400, 1400 + heldout) before training, after each round, and centrally; epsilon spent;
seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--rule", default="mean")
    p.add_argument("--heldout", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--policy", default="smollm2")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from fedrlhf.config import PrivacyConfig, RobustConfig, RunConfig, TrainConfig
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState
    from fedrlhf.feedback import read_preferences
    from fedrlhf.models.policy import PolicyConfig, PolicyModel, resolve_policy
    from fedrlhf.models.state import flatten_state, unflatten_state
    from fedrlhf.training.dpo import (
        encode_policy,
        implicit_reward_accuracy,
        local_update,
        policy_state,
        reference_logps,
        set_policy_state,
        train_policy,
    )

    start = time.perf_counter()
    pairs = read_preferences(HH)
    policy = PolicyModel.build(PolicyConfig(base=resolve_policy(args.policy), max_length=args.max_length))
    heldout = reference_logps(policy, encode_policy(pairs[1400 : 1400 + args.heldout], policy))
    devices = [
        reference_logps(policy, encode_policy(pairs[i * args.pairs : (i + 1) * args.pairs], policy))
        for i in range(args.clients)
    ]
    global_state = policy_state(policy)
    layout = {n: a.shape for n, a in global_state.items()}
    cfg = RunConfig(robust=RobustConfig(rule=args.rule))
    server = ServerState(round=0, global_state=global_state, rng={})
    rng = np.random.default_rng(0)
    privacy = PrivacyConfig(enabled=True, target_epsilon=args.epsilon)
    accuracy = [implicit_reward_accuracy(policy, heldout, beta=args.beta)]
    epsilons: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            updates = []
            for i, data in enumerate(devices):
                train_cfg = TrainConfig(epochs=1, batch_size=args.batch, lr=args.lr, seed=r * 1000 + i)
                delta, _, report = local_update(
                    policy,
                    global_state,
                    data,
                    train_cfg,
                    beta=args.beta,
                    privacy=privacy,
                    ledger_path=Path(tmp) / f"device{i}.json",
                    runs=args.rounds - r,
                    label=f"round {r + 1}",
                )
                updates.append(delta)
                epsilons.append(float(report["epsilon"]) if report else float("nan"))
            names = [f"device{i}" for i in range(len(devices))]
            aggregate = aggregate_updates(updates, cfg, server, names, rng)
            global_state = unflatten_state(flatten_state(global_state) + aggregate, layout)
            set_policy_state(policy, global_state)
            accuracy.append(implicit_reward_accuracy(policy, heldout, beta=args.beta))
    federated_seconds = time.perf_counter() - start
    central = PolicyModel.build(PolicyConfig(base=resolve_policy(args.policy), max_length=args.max_length))
    pooled = reference_logps(
        central, encode_policy(pairs[: args.clients * args.pairs], central), batch_size=args.batch
    )
    train_policy(
        central, pooled, TrainConfig(epochs=args.rounds, batch_size=args.batch, lr=args.lr), beta=args.beta
    )
    print(
        json.dumps(
            {
                "policy": args.policy,
                "clients": args.clients,
                "pairs_per_client": args.pairs,
                "rounds": args.rounds,
                "rule": args.rule,
                "target_epsilon": args.epsilon,
                "epsilon_spent_max": max(epsilons),
                "heldout_pairs": len(heldout),
                "implicit_accuracy_by_round": [round(a, 4) for a in accuracy],
                "central_nonprivate_implicit_accuracy": round(
                    implicit_reward_accuracy(central, heldout, beta=args.beta), 4
                ),
                "federated_seconds": round(federated_seconds, 1),
                "seconds": round(time.perf_counter() - start, 1),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
