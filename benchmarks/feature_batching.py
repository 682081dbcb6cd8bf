"""Does computing many clients' frozen features in one pass pay on a CPU?

    python benchmarks/feature_batching.py [--clients 50] [--pairs 16] [--batch 8] [--threads 1]

A head-only device's round costs almost only its frozen features, computed once (MiniLM at 64
tokens on the scale cohort's synthetic users). This times the same texts two ways, on one
process with ``--threads`` torch threads: per client, as each device computes its own
(``prefix_states`` on that client's pairs), and all clients' texts in one pass (what a worker
that vectorised the clients sharing its backbone would do: one length-sorted pass, so batches
of similar length from a larger pool), and checks both give the same features. Prints one JSON
line: seconds each way, texts per second, the ratio, the machine; writes it to
``benchmarks/results/scale/feature-batching.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "scale" / "feature-batching.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="texts per forward pass, both ways")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from fedrlhf.config import ModelConfig
    from fedrlhf.models import RewardModel
    from fedrlhf.models.prefix import prefix_states
    from fedrlhf.simulation.cohorts import SyntheticCohortConfig, make_user
    from fedrlhf.training.data import encode

    settings = ModelConfig(
        backbone=args.backbone, max_length=args.max_length, trainable="head", pool_layers=4
    )
    model = RewardModel.build(settings)
    cfg = SyntheticCohortConfig(num_users=args.clients, pairs_per_user=args.pairs, test_pairs_per_user=1)
    data = [encode(make_user(cfg, i).train, model.tokenizer, args.max_length) for i in range(args.clients)]
    start = time.perf_counter()
    each = [prefix_states(model, d.input_ids, d.lengths, batch_size=args.batch) for d in data]
    per_client = time.perf_counter() - start
    ids = torch.cat([d.input_ids for d in data])
    lengths = torch.cat([d.lengths for d in data])
    start = time.perf_counter()
    together = prefix_states(model, ids, lengths, batch_size=args.batch)
    one_pass = time.perf_counter() - start
    gap = float((torch.cat(each) - together).abs().max())
    texts = int(ids.shape[0] * 2)
    result = {
        "clients": args.clients,
        "texts": texts,
        "batch": args.batch,
        "threads": args.threads,
        "per_client_seconds": round(per_client, 2),
        "one_pass_seconds": round(one_pass, 2),
        "per_client_texts_per_second": round(texts / per_client, 1),
        "one_pass_texts_per_second": round(texts / one_pass, 1),
        "speedup": round(per_client / one_pass, 3),
        "max_feature_difference": gap,
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
