"""Framework overhead: a 20-client, 3-round simulation vs the same local training in one process.

    python benchmarks/framework_overhead.py [--backbone minilm] [--clients 20] [--rounds 3]

Both sides run the identical client work (`fedrlhf.training.device.client_round` on the same
materialised users, same seeds); the simulation adds Flower's engine, Ray workers, message
passing, validation, aggregation, evaluation and checkpoints. Prints both wall times, the ratio
and where the simulation's time went (its report's ``final.timing``); writes them to
``--out`` (default ``benchmarks/results/framework-overhead/overhead.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "framework-overhead"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    from fedrlhf.config import run_config_from_dict
    from fedrlhf.federation.initial import initial_state
    from fedrlhf.federation.seeds import client_seed
    from fedrlhf.simulation.cohorts import user_id
    from fedrlhf.simulation.run import prepare_cohort, run_simulation
    from fedrlhf.training.device import DeviceDir, RoundSpec, client_round

    cfg = run_config_from_dict(
        {
            "model": {"backbone": args.backbone, "max_length": 64},
            "train": {"batch_size": 8, "lr": 1e-3},
            "federation": {
                "rounds": args.rounds,
                "clients_per_round": args.clients,
                "eval_every": 0,
                "save_every_round": False,
            },
            "cohort": {"num_clients": args.clients, "pairs_per_user": 24, "test_pairs_per_user": 8},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = run_simulation(cfg, Path(tmp) / "sim", progress=False)
        sim = time.perf_counter() - start

        wired, _ = prepare_cohort(cfg, Path(tmp) / "plain")
        start = time.perf_counter()
        state = initial_state(wired).global_state
        for r in range(1, args.rounds + 1):
            for i in range(args.clients):
                device = user_id(i)
                seed = client_seed(wired, r, device)
                spec = RoundSpec(round=r, seed=seed, local_epochs=1.0, evaluate=False)
                client_round(
                    DeviceDir(Path(wired.federation.clients_dir) / device),
                    state,
                    spec,
                    model_cfg=wired.model,
                    train_cfg=dataclasses.replace(wired.train, threads=2),
                    privacy=wired.privacy,
                )
        plain = time.perf_counter() - start

    result = {
        "clients": args.clients,
        "rounds": args.rounds,
        "simulation_seconds": round(sim, 3),
        "one_process_seconds": round(plain, 3),
        "ratio": round(sim / plain, 3),
        "simulation_timing": report["final"].get("timing"),  # where the simulation's time went
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
